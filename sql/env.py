"""Alembic environment: leadflow passes its own connection in (see ``leadflow.store.upgrade``)."""

from alembic import context
from sqlalchemy import engine_from_config, pool

from leadflow.settings import get_settings
from leadflow.tables import metadata

config = context.config


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    # `alembic -c ...` from the command line: connect on our own.
    url = config.get_main_option("sqlalchemy.url") or get_settings().database_url
    from leadflow.store import with_driver

    engine = engine_from_config(
        {"sqlalchemy.url": with_driver(url)}, prefix="sqlalchemy.", poolclass=pool.NullPool
    )
    with engine.connect() as conn:
        context.configure(
            connection=conn, target_metadata=metadata, render_as_batch=conn.dialect.name == "sqlite"
        )
        with context.begin_transaction():
            context.run_migrations()


run_migrations()
