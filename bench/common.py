"""What every benchmark script shares: a throwaway PostgreSQL schema, Prefect warmed up
outside the timings, and the process's peak RSS."""

from __future__ import annotations

import argparse
import io
import os
import resource
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd
import psycopg2
from sqlalchemy.engine import make_url

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def add_database_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url", default=os.environ.get("LEADFLOW_BENCH_DATABASE_URL", DEFAULT_URL)
    )


@dataclass(frozen=True)
class Schema:
    name: str
    dsn: str  # for psycopg2 (COPY baselines)
    url: str  # for leadflow: the base URL with search_path set to the schema


def dsn(base_url: str) -> str:
    url = make_url(base_url)
    return f"host={url.host} port={url.port or 5432} user={url.username} dbname={url.database}"


@contextmanager
def bench_schema(base_url: str, *, keep: bool = False, migrate: bool = True) -> Iterator[Schema]:
    """A fresh schema (migrated unless ``migrate`` is False), dropped afterwards."""
    from leadflow import store

    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(dsn(base_url))
    admin.autocommit = True
    admin.cursor().execute(f'CREATE SCHEMA "{name}"')
    url = make_url(base_url).update_query_dict({"options": f"-csearch_path={name}"})
    schema = Schema(name, dsn(base_url), url.render_as_string(hide_password=False))
    try:
        if migrate:
            store.upgrade(schema.url)
        yield schema
    finally:
        if not keep:
            admin.cursor().execute(f'DROP SCHEMA "{name}" CASCADE')
        admin.close()


def copy_frame(cursor: object, table: str, frame: pd.DataFrame) -> float:
    """COPY ``frame`` into ``table`` (columns by name, missing values empty); the seconds
    the COPY itself took (serialising the frame excluded)."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=False, na_rep="")
    buffer.seek(0)
    started = time.perf_counter()
    cursor.copy_expert(
        f"COPY {table} ({', '.join(frame.columns)}) FROM STDIN WITH (FORMAT csv)", buffer
    )
    return time.perf_counter() - started


def warm_up_prefect() -> None:
    """Start Prefect's API (and its client) outside the timings."""
    from prefect import flow

    @flow
    def warm_up() -> None:
        return None

    warm_up()
