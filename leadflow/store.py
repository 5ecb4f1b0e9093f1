"""The lead store: engines, migrations, bulk reads and writes (claims: ``leadflow.queue``).

Hot paths move DataFrames, never rows one at a time: COPY on PostgreSQL, ``executemany`` on
SQLite, and set-based ``UPDATE … FROM`` a staged temporary table for updates.
"""

from __future__ import annotations

import io
import json
import math
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    Select,
    Table,
    Text,
    create_engine,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url

from leadflow.settings import get_settings

SQLITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- engines


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Autocommit in the driver so that SQLAlchemy's "begin" below is the only BEGIN.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # One writer at a time, decided at BEGIN rather than at the first write, so a
        # read-then-write transaction cannot deadlock against another writer.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def with_driver(url: str) -> str:
    """A bare ``postgresql://`` URL means psycopg2 (SQLAlchemy 2.1 would pick psycopg 3)."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed.render_as_string(hide_password=False)


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """One engine per database URL for the life of the process."""
    url = with_driver(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60})
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True)


def get_engine(url: str | None = None) -> Engine:
    return engine_for(url or get_settings().database_url)


def is_postgres(conn: Connection | Engine) -> bool:
    return conn.dialect.name == "postgresql"


def insert_if_absent(conn: Connection, table: Table, values: dict[str, Any]) -> None:
    """INSERT one row unless its primary key (or a unique key) is already there, safe when
    several writers insert the same row at once (``ON CONFLICT DO NOTHING``)."""
    if is_postgres(conn):
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    conn.execute(insert(table).values(**values).on_conflict_do_nothing())


def upgrade(url: str | None = None, revision: str = "head") -> str:
    """Apply the Alembic migrations under ``sql/`` and return the revision now current."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

    import sql

    engine = get_engine(url)
    config = Config()
    config.set_main_option("script_location", str(Path(sql.__file__).parent))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
    return current or ""


def current_revision(url: str | None = None) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


# --------------------------------------------------------------------------- frames in


def json_column(values: Iterable[Any]) -> list[str | None]:
    """Serialise dicts/lists for a JSON column (None stays NULL)."""
    return [None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in values]


def json_value(value: Any) -> Any:
    """A JSON column's value as read: decoded where the driver hands back text (SQLite)."""
    return json.loads(value) if isinstance(value, str) else value


def _is_json(column: Column) -> bool:
    return isinstance(column.type, JSON) or isinstance(getattr(column.type, "impl", None), JSON)


def _prepare(frame: pd.DataFrame, table: Table) -> pd.DataFrame:
    """Coerce a frame to what the bulk paths expect: JSON serialised, times in UTC."""
    out = frame.copy(deep=False)
    for name in out.columns:
        column = table.c[name]
        series = out[name]
        if _is_json(column) and series.dtype == object:
            sample = series.dropna()
            if len(sample) and not isinstance(sample.iloc[0], str):
                out[name] = pd.Series(
                    json_column(series.where(series.notna(), None)), index=out.index, dtype=object
                )
        elif isinstance(column.type, DateTime):
            if not pd.api.types.is_datetime64_any_dtype(series):
                series = pd.to_datetime(series, utc=True, format="ISO8601")
            elif series.dt.tz is None:
                series = series.dt.tz_localize("UTC")
            else:
                series = series.dt.tz_convert("UTC")
            out[name] = series
    return out


def _copy_in(conn: Connection, table_name: str, frame: pd.DataFrame) -> None:
    # combine_chunks: pyarrow 26's CSV writer emits garbage for string columns whose
    # chunked array holds an empty chunk (as pandas concat produces).
    arrow = pa.Table.from_pandas(frame, preserve_index=False).combine_chunks()
    buffer = io.BytesIO()
    pa_csv.write_csv(arrow, buffer, pa_csv.WriteOptions(include_header=False))
    buffer.seek(0)
    columns = ", ".join(f'"{c}"' for c in frame.columns)
    statement = f'COPY "{table_name}" ({columns}) FROM STDIN WITH (FORMAT csv)'
    cursor = conn.connection.driver_connection.cursor()
    try:
        if hasattr(cursor, "copy_expert"):  # psycopg2
            cursor.copy_expert(statement, buffer)
        else:  # psycopg 3
            with cursor.copy(statement) as copy:
                copy.write(buffer.getvalue())
    finally:
        cursor.close()


def _sqlite_rows(frame: pd.DataFrame) -> list[tuple]:
    columns = []
    for name in frame.columns:
        series = frame[name]
        if pd.api.types.is_datetime64_any_dtype(series):
            if series.dt.tz is not None:
                series = series.dt.tz_convert("UTC")
            values = series.dt.strftime(SQLITE_TIME_FORMAT).tolist()
        elif pd.api.types.is_bool_dtype(series) or pd.api.types.is_integer_dtype(series):
            values = [int(v) if not pd.isna(v) else None for v in series.astype(object).tolist()]
        elif pd.api.types.is_float_dtype(series):
            values = [float(v) if not pd.isna(v) else None for v in series.astype(object).tolist()]
        else:
            values = series.astype(object).tolist()
        columns.append([None if _missing(v) else v for v in values])
    return list(zip(*columns, strict=True)) if columns else []


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def bulk_insert(conn: Connection, table: Table, frame: pd.DataFrame) -> int:
    """Insert every row of ``frame`` (columns named as in ``table``); returns the count."""
    if frame.empty:
        return 0
    prepared = _prepare(frame, table)
    if is_postgres(conn):
        _copy_in(conn, table.name, prepared)
    else:
        columns = ", ".join(f'"{c}"' for c in prepared.columns)
        marks = ", ".join("?" for _ in prepared.columns)
        conn.exec_driver_sql(
            f'INSERT INTO "{table.name}" ({columns}) VALUES ({marks})', _sqlite_rows(prepared)
        )
    return len(prepared)


def allocate_ids(conn: Connection, table: Table, count: int) -> np.ndarray:
    """Reserve ``count`` consecutive primary keys for rows this transaction will insert."""
    if count == 0:
        return np.empty(0, dtype=np.int64)
    if is_postgres(conn):
        # One round trip for any count: move the sequence on by `count` while holding a
        # lock that every caller of this function takes.
        conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": f"ids:{table.name}"}
        )
        last = conn.execute(
            text(
                "SELECT setval(pg_get_serial_sequence(:table, 'id'), "
                "nextval(pg_get_serial_sequence(:table, 'id')) + :n - 1)"
            ),
            {"table": table.name, "n": count},
        ).scalar_one()
        return np.arange(last - count + 1, last + 1, dtype=np.int64)
    # SQLite: the transaction began IMMEDIATE, so nobody else can insert meanwhile.
    start = conn.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one()
    return np.arange(start + 1, start + 1 + count, dtype=np.int64)


def serialize_writers(conn: Connection, name: str) -> None:
    """Make writers of ``name`` take turns for the rest of this transaction."""
    if is_postgres(conn):
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": name})
    # SQLite transactions begin IMMEDIATE: there is only ever one writer.


@contextmanager
def staged(
    conn: Connection, like: Table, frame: pd.DataFrame, extra_types: dict[str, Any] | None = None
) -> Iterator[Table]:
    """A temporary table holding ``frame`` for set-based SQL.

    Columns named like ``like``'s are typed like them; others take ``extra_types`` or TEXT.
    """
    name = f"_stage_{like.name}_{uuid.uuid4().hex[:8]}"
    stage_meta = MetaData()
    extra_types = extra_types or {}
    columns = [
        Column(c, like.c[c].type if c in like.c else extra_types.get(c, Text()))
        for c in frame.columns
    ]
    stage = Table(name, stage_meta, *columns, prefixes=["TEMPORARY"])
    stage.create(conn)
    try:
        bulk_insert(conn, stage, frame)
        yield stage
    except BaseException:
        # The transaction is failing (maybe its connection is gone): dropping the table
        # could only raise a second error that hides the first. Rollback drops it anyway.
        raise
    stage.drop(conn)


def update_from_frame(
    conn: Connection,
    table: Table,
    frame: pd.DataFrame,
    *,
    key: str = "id",
    where: Any = None,
) -> int:
    """``UPDATE table SET <frame columns> FROM frame WHERE key matches``; returns rows hit."""
    if frame.empty:
        return 0
    columns = [c for c in frame.columns if c != key]
    with staged(conn, table, frame) as stage:
        statement = (
            update(table)
            .values({c: stage.c[c] for c in columns})
            .where(table.c[key] == stage.c[key])
        )
        if where is not None:
            statement = statement.where(where)
        return conn.execute(statement).rowcount


# --------------------------------------------------------------------------- frames out


def read_frame(
    conn: Connection, statement: Select | Any, params: dict | None = None
) -> pd.DataFrame:
    """Run a query and return a DataFrame with UTC-aware times."""
    result = conn.execute(statement, params or {})
    frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    for name in frame.columns:
        series = frame[name]
        if pd.api.types.is_datetime64_any_dtype(series):
            frame[name] = (
                series.dt.tz_localize("UTC")
                if series.dt.tz is None
                else series.dt.tz_convert("UTC")
            )
        elif (
            series.dtype == object
            and len(series.dropna())
            and isinstance(series.dropna().iloc[0], datetime)
        ):
            frame[name] = pd.to_datetime(series, utc=True)
    return frame


def read_frame_by_ids(
    conn: Connection,
    columns: list[Any],
    id_column: Any,
    ids: Sequence[int],
    where: Any = None,
    order_by: Any = None,
) -> pd.DataFrame:
    """Rows whose ``id_column`` is in ``ids`` (any number of them): the ids go to a staged
    table, and on PostgreSQL the rows come back through COPY, which is several times faster
    than fetching them as Python tuples."""
    if len(ids) == 0:
        return pd.DataFrame(columns=[c.key for c in columns])
    low, high = int(min(ids)), int(max(ids))
    if high - low + 1 <= 4 * len(ids):
        # Dense ids (a batch of consecutive leads): a range scan beats a join, and the few
        # rows in the range that were not asked for are dropped here.
        statement = select(*columns).where(id_column >= low, id_column <= high)
        if where is not None:
            statement = statement.where(where)
        if order_by is not None:
            statement = statement.order_by(order_by)
        frame = read_frame_fast(conn, statement)
        key = id_column.key
        return frame[frame[key].isin(set(int(i) for i in ids))].reset_index(drop=True)
    key = Table("_ids", MetaData(), Column("id", id_column.type))
    frame = pd.DataFrame({"id": np.asarray(ids, dtype=np.int64)})
    with staged(conn, key, frame) as stage:
        statement = select(*columns).join(stage, id_column == stage.c.id)
        if where is not None:
            statement = statement.where(where)
        if order_by is not None:
            statement = statement.order_by(order_by)
        if not is_postgres(conn):
            return read_frame(conn, statement)
        return _copy_out(conn, statement)


def read_frame_fast(conn: Connection, statement: Select) -> pd.DataFrame:
    """``read_frame`` through COPY on PostgreSQL (JSON columns come back as text)."""
    return _copy_out(conn, statement) if is_postgres(conn) else read_frame(conn, statement)


def _copy_out(conn: Connection, statement: Select) -> pd.DataFrame:
    sql = str(statement.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    buffer = io.BytesIO()
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER true)", buffer)
    finally:
        cursor.close()
    buffer.seek(0)
    types = {}
    for column in statement.selected_columns:
        kind = column.type
        if isinstance(kind, DateTime):
            types[column.key] = pa.timestamp("us", tz="UTC")
        elif isinstance(kind, Float):
            types[column.key] = pa.float64()
        elif isinstance(kind, Integer) or isinstance(getattr(kind, "impl", None), Integer):
            types[column.key] = pa.int64()
        elif isinstance(kind, Boolean):
            types[column.key] = pa.bool_()
        else:
            types[column.key] = pa.string()
    if buffer.getbuffer().nbytes == 0:
        return pd.DataFrame(columns=list(types))
    table = pa_csv.read_csv(
        buffer,
        convert_options=pa_csv.ConvertOptions(
            column_types=types, strings_can_be_null=True, quoted_strings_can_be_null=False
        ),
    )
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
