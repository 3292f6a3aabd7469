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
    # the production profile's form: the password in libpq's password file, not in the URL
    passfile = connection_config("postgresql://moodloop@127.0.0.1:5440/mlmd?passfile=/h/pgpass").postgresql
    assert (passfile.user, passfile.dbname, passfile.passfile, passfile.HasField("password")) == (
        "moodloop",
        "mlmd",
        "/h/pgpass",
        False,
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


def test_the_production_profile_finds_ml_metadata_in_its_postgresql_without_a_password_in_the_url(tmp_path):
    from moodloop.core.settings import Settings

    embedded = Settings.from_env(home=tmp_path)
    assert embedded.metadata_location == str(tmp_path / "tfx" / "metadata.sqlite")
    production = Settings.from_env(home=tmp_path, profile="production", postgres_port=6000)
    expected = f"postgresql://moodloop@127.0.0.1:6000/mlmd?passfile={tmp_path / 'stack' / 'postgres' / 'pgpass'}"
    assert production.metadata_location == expected
    chosen = Settings.from_env(home=tmp_path, profile="production", metadata_url="postgresql://u:p@db/m")
    assert chosen.metadata_location == "postgresql://u:p@db/m"  # a URL set by hand still wins


def test_redacted_hides_only_the_password():
    assert redacted("postgresql://mlmd:secret@db:5432/m") == "postgresql://mlmd:***@db:5432/m"
    assert redacted("/tmp/m.sqlite") == "/tmp/m.sqlite"
