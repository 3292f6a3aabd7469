"""ML Metadata's store from the setting: SQLite by default, Postgres or MySQL by URL, and a
password never in the compiled pipeline file."""

from __future__ import annotations

import pytest

from components.metadata_connection import connection_config, redacted


def test_a_path_is_sqlite_and_urls_are_databases():
    assert connection_config("/tmp/m.sqlite").sqlite.filename_uri == "/tmp/m.sqlite"
    postgres = connection_config("postgresql://mlmd:p%40ss@db:5433/metadata").postgresql
    assert (postgres.host, postgres.port, postgres.user, postgres.password, postgres.dbname) == (
        "db",
        "5433",
        "mlmd",
        "p@ss",
        "metadata",
    )
    mysql = connection_config("mysql://root:pw@mysql/mlmd").mysql
    assert (mysql.host, mysql.port, mysql.database) == ("mysql", 3306, "mlmd")


@pytest.mark.parametrize("url", ["sqlite://x/y", "postgresql://db:5432/", "postgresql:///mlmd"])
def test_a_bad_url_is_refused_without_showing_its_password(url):
    with pytest.raises(ValueError, match="metadata database URL"):
        connection_config(url)
    with pytest.raises(ValueError) as refused:
        connection_config("redis://user:secret@db:1/x")
    assert "secret" not in str(refused.value)


def test_redacted_hides_only_the_password():
    assert redacted("postgresql://mlmd:secret@db:5432/m") == "postgresql://mlmd:***@db:5432/m"
    assert redacted("/tmp/m.sqlite") == "/tmp/m.sqlite"
