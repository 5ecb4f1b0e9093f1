"""One ingest per input at a time: a lock per (source, target, content hash) that dies with
the process holding it.

PostgreSQL: a session advisory lock. SQLite: ``flock`` on a small file beside the database
(one file per hash bucket, never deleted, so waiters never lock a file that is going away).
Because the lock dies with its holder (SIGKILL included), a batch still ``running`` whose
lock nobody holds belongs to a dead run: the next ingest of that input finishes it, and the
audit reports it until then.
"""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text


def _key(source: str, target: str, content_hash: str) -> str:
    return f"capture:{source}:{target}:{content_hash}"


def _lock_file(engine: Engine, key: str) -> Path | None:
    database = engine.url.database
    if not database or database == ":memory:":
        return None  # one process owns an in-memory database
    folder = Path(f"{database}.capture-locks")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{hashlib.sha256(key.encode()).hexdigest()[:2]}.lock"


_PG_TRY = text("SELECT pg_try_advisory_lock(hashtextextended(:key, 0))")
_PG_LOCK = text("SELECT pg_advisory_lock(hashtextextended(:key, 0))")
_PG_UNLOCK = text("SELECT pg_advisory_unlock(hashtextextended(:key, 0))")


@contextmanager
def content_lock(
    engine: Engine,
    *,
    source: str,
    target: str,
    content_hash: str,
    on_wait: Callable[[], None] | None = None,
) -> Iterator[None]:
    """Hold the input's lock for the block; wait (calling ``on_wait`` first) while another
    process holds it."""
    key = _key(source, target, content_hash)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if not conn.execute(_PG_TRY, {"key": key}).scalar():
                if on_wait:
                    on_wait()
                conn.execute(_PG_LOCK, {"key": key})
            try:
                yield
            finally:
                conn.execute(_PG_UNLOCK, {"key": key})
        return
    path = _lock_file(engine, key)
    if path is None:
        yield
        return
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_held(engine: Engine, *, source: str, target: str, content_hash: str) -> bool:
    """Whether some live process holds the input's lock (checked without waiting)."""
    key = _key(source, target, content_hash)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if conn.execute(_PG_TRY, {"key": key}).scalar():
                conn.execute(_PG_UNLOCK, {"key": key})
                return False
            return True
    path = _lock_file(engine, key)
    if path is None:
        return False
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False
