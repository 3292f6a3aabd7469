"""Where ML Metadata lives: SQLite on one machine, a real database when Airflow's tasks of one run
land on several Celery workers (MLMD supports PostgreSQL and MySQL; docker-compose uses its
Postgres). One function turns the setting into MLMD's ConnectionConfig for every user of the store
(the pipeline, the local runner's summary, the model card)."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

from ml_metadata.proto import metadata_store_pb2


def connection_config(location: str) -> metadata_store_pb2.ConnectionConfig:
    """`location`: a SQLite file's path, or postgresql://user:password@host:port/database (or
    postgresql://user@host:port/database?passfile=PATH), or mysql://user:password@host:port/database."""
    if "://" not in location:
        return metadata_store_pb2.ConnectionConfig(
            sqlite=metadata_store_pb2.SqliteMetadataSourceConfig(
                filename_uri=location,
                connection_mode=metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE,
            )
        )
    url = urlsplit(location)
    user, password = unquote(url.username or ""), unquote(url.password or "")
    database = url.path.lstrip("/")
    if not (url.hostname and database):
        raise ValueError(f"metadata database URL {redacted(location)}: give scheme://user:password@host:port/database")
    if url.scheme in ("postgresql", "postgres"):
        config = metadata_store_pb2.PostgreSQLDatabaseConfig(
            host=url.hostname, port=str(url.port or 5432), user=user, dbname=database
        )
        if password:
            config.password = password
        passfile = parse_qs(url.query).get("passfile")
        if passfile:  # libpq's password file: the URL (shown in logs and IRs) holds no secret
            config.passfile = passfile[0]
        return metadata_store_pb2.ConnectionConfig(postgresql=config)
    if url.scheme == "mysql":
        return metadata_store_pb2.ConnectionConfig(
            mysql=metadata_store_pb2.MySQLDatabaseConfig(
                host=url.hostname, port=url.port or 3306, user=user, password=password, database=database
            )
        )
    raise ValueError(f"metadata database URL {redacted(location)}: the scheme must be postgresql or mysql")


def redacted(location: str) -> str:
    """The location without its password, for messages and logs."""
    url = urlsplit(location)
    if not url.password:
        return location
    return location.replace(f":{url.password}@", ":***@", 1)
