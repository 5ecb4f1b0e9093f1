"""Reading captures as received: CSV and JSON Lines files (local or any fsspec URL) and
paginated REST APIs.

Readers never drop a record. A record that cannot be parsed still comes out, with its raw
text and a ``parse_error`` saying what is wrong, so the gate can quarantine it by name.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import hashlib
import io
import itertools
import json
import logging
import re
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from leadflow import http
from leadflow.capture.rules import ApiSource

log = logging.getLogger(__name__)

FILE_FORMATS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
MAX_RECORD_LINES = 1000  # a quoted field running longer than this is an unbalanced quote
_SURROGATES = re.compile(r"[\udc80-\udcff]")

# Columns every record batch carries besides the source's own.
RECORD_NO = "_record_no"
RAW = "_raw"
PARSE_ERROR = "_parse_error"

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class InputError(ValueError):
    """An input that cannot be read at all (missing, wrong header); names the input."""


class MissingColumnsError(InputError):
    pass


@dataclass
class RecordChunk:
    """Up to ``chunk_size`` records of one input, as received."""

    chunk_no: int
    columns: list[str]
    records: pd.DataFrame  # source columns + _record_no, _raw, _parse_error
    text: str = ""  # the chunk exactly as received (undecodable bytes kept via surrogates)


@dataclass
class ApiPage:
    uri: str
    body: bytes
    records: list[Any]
    content_hash: str = field(init=False)

    def __post_init__(self) -> None:
        self.content_hash = hashlib.sha256(self.body).hexdigest()


# --------------------------------------------------------------------------- files


def input_exists(path: str) -> bool:
    """Whether ``path`` (a file or folder, local or an fsspec URL) is there."""
    fs, root = fsspec.core.url_to_fs(path)
    return bool(fs.exists(root))


REJECTED_FOLDER = "rejected"  # inside a drop folder: files set aside, never read again


def set_aside(uri: str, folder: str, reason: str) -> str:
    """Move a drop folder's file that cannot be read (a header the mapping refuses) into
    ``<folder>/rejected/``, beside a ``<name>.reason.txt`` saying why, so the next tick does
    not fail on it again and nothing is lost. Returns where it went."""
    fs, root = fsspec.core.url_to_fs(folder)
    _, source = fsspec.core.url_to_fs(uri)
    target_dir = f"{root.rstrip('/')}/{REJECTED_FOLDER}"
    fs.makedirs(target_dir, exist_ok=True)
    name = source.rsplit("/", 1)[-1]
    target = f"{target_dir}/{name}"
    if fs.exists(target):  # the same name set aside before: keep both
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        target = f"{target_dir}/{stamp}-{name}"
    fs.mv(source, target)
    with fs.open(f"{target}.reason.txt", "w") as handle:
        handle.write(reason + "\n")
    return fs.unstrip_protocol(target) if "://" in folder else target


def in_rejected(uri: str, folder: str) -> bool:
    """Whether ``uri`` lies in ``folder``'s ``rejected/`` subfolder."""
    _, root = fsspec.core.url_to_fs(folder)
    _, path = fsspec.core.url_to_fs(uri)
    return path.startswith(f"{root.rstrip('/')}/{REJECTED_FOLDER}/")


def list_inputs(path: str) -> list[str]:
    """The files to ingest at ``path``: the file itself, or the data files in a folder."""
    fs, root = fsspec.core.url_to_fs(path)
    if not fs.exists(root):
        raise InputError(f"{path}: no such file or folder")
    if fs.isdir(root):
        found = sorted(p for p in fs.find(root) if _format_of(p, "auto", strict=False) is not None)
        return [fs.unstrip_protocol(p) if "://" in path else p for p in found]
    return [path]


def _format_of(uri: str, declared: str, *, strict: bool = True) -> str | None:
    if declared != "auto":
        return declared
    name = uri.lower()
    for suffix in (".gz", ".bz2", ".zst", ".xz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    for extension, kind in FILE_FORMATS.items():
        if name.endswith(extension):
            return kind
    if strict:
        raise InputError(
            f"{uri}: cannot tell the format from the name; set `format:` in the mapping"
        )
    return None


def content_hash(uri: str) -> tuple[str, int]:
    """SHA-256 and size of the bytes as received."""
    digest = hashlib.sha256()
    size = 0
    with fsspec.open(uri, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def undecodable_at(uri: str, encoding: str) -> int | None:
    """Byte offset of the first byte that is not valid ``encoding`` (None if all are)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0
    with fsspec.open(uri, "rb", compression="infer") as handle:
        while block := handle.read(1 << 20):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                return offset + exc.start
            offset += len(block)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return offset
    return None


def _printable(raw: str) -> str:
    """Raw text that can be stored: undecodable bytes as \\xNN, NUL as \\x00."""
    if _SURROGATES.search(raw):
        raw = raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return raw.replace("\x00", "\\x00")


class _Lines:
    """Physical lines for ``csv.reader``, with push-back and a cap on lines per record.

    When one record has consumed ``MAX_RECORD_LINES`` lines the iterator reports its end
    once, so the reader hands back what it has instead of swallowing the rest of the file.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._pending: deque[tuple[int, str]] = deque()
        self._next_no = 1
        self.current: list[tuple[int, str]] = []

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if len(self.current) >= MAX_RECORD_LINES:
            raise StopIteration
        if self._pending:
            item = self._pending.popleft()
        else:
            line = next(self._stream, "")
            if not line:
                raise StopIteration
            item = (self._next_no, line)
            self._next_no += 1
        self.current.append(item)
        return item[1]

    def push_back(self, items: list[tuple[int, str]]) -> None:
        self._pending.extendleft(reversed(items))

    def take(self, count: int) -> list[tuple[int, str]]:
        """Up to ``count`` numbered lines, pushed-back ones first."""
        taken: list[tuple[int, str]] = []
        while self._pending and len(taken) < count:
            taken.append(self._pending.popleft())
        if len(taken) < count:
            more = list(itertools.islice(self._stream, count - len(taken)))
            taken.extend(zip(range(self._next_no, self._next_no + len(more)), more, strict=True))
            self._next_no += len(more)
        return taken


def _open_text(uri: str, encoding: str) -> TextIO:
    codec = codecs.lookup(encoding).name
    if codec == "utf-8":
        encoding = "utf-8-sig"  # a BOM is not part of the first column's name
    handle = fsspec.open(uri, "rb", compression="infer").open()
    import io

    return io.TextIOWrapper(handle, encoding=encoding, errors="surrogateescape", newline="")


def read_header(uri: str, *, encoding: str = "utf-8", delimiter: str = ",") -> list[str]:
    with _open_text(uri, encoding) as stream:
        first = next(csv.reader(stream, delimiter=delimiter), None)
    return _clean_header(uri, first or [])


def peek_columns(uri: str, *, encoding: str = "utf-8", lines: int = 1000) -> list[str]:
    """Keys seen in the first JSON Lines records: the "header" of a JSONL file."""
    seen: dict[str, None] = {}
    with _open_text(uri, encoding) as stream:
        for number, line in enumerate(stream):
            if number >= lines:
                break
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                seen.update(dict.fromkeys(map(str, value)))
    return list(seen)


def _clean_header(uri: str, header: list[str]) -> list[str]:
    names = []
    for position, name in enumerate(header, start=1):
        name = _printable(name).replace("\ufeff", "").strip()
        names.append(name or f"column_{position}")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InputError(f"{uri}: column {name!r} appears more than once in the header")
        seen.add(name)
    return names


_LOOKS_PERSONAL = re.compile(r"@|(?:\d[\s().+-]*){6,}")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e\u00a0-\ud7ff\ue000-\ufffc]")


def safe_name(name: str, limit: int = 40, *, quote: bool = True) -> str:
    """A header name fit for a message or a log line: quoted, control characters and
    undecodable bytes escaped, long names cut, and anything that looks like an email or a
    phone number (a data row read as a header) masked."""
    if _LOOKS_PERSONAL.search(name):
        return "'<data value>'" if quote else "<data value>"
    shown = _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()) & 0xFF:02x}", name)
    if len(shown) > limit:
        shown = shown[: limit - 1] + "…"
    return repr(shown) if quote else shown


def check_columns(uri: str, columns: list[str], required: tuple[str, ...]) -> None:
    """Raise ``MissingColumnsError`` naming each missing column, the header names closest
    to it, and how to mark it optional; header names are shown safely (``safe_name``)."""
    missing = [c for c in required if c not in columns]
    if not missing:
        return
    looks_headerless = any(_LOOKS_PERSONAL.search(c) for c in columns)
    hints = []
    folded = {c.lower(): c for c in columns}
    for name in missing:
        close = difflib.get_close_matches(name, columns, n=3, cutoff=0.5)
        # Same name in another case, or one name abbreviating the other ("Org").
        close += [
            c
            for low, c in folded.items()
            if c not in close and len(low) >= 3 and (low in name.lower() or name.lower() in low)
        ]
        if close and not looks_headerless:
            hints.append(f"{safe_name(name)} -> {' or '.join(safe_name(c) for c in close)}")
    header = ", ".join(safe_name(c, quote=False) for c in columns[:30]) or "(nothing)"
    raise MissingColumnsError(
        f"{_safe_uri(uri)}: required column(s) {', '.join(safe_name(c) for c in missing)} "
        "missing"
        + (f"; closest header names: {'; '.join(hints)}" if hints else "")
        # A data row read as a header is personal data: say what it looks like, not what it is.
        + (
            "; its first line looks like data, not a header row (add one, or fix the delimiter)"
            if looks_headerless
            else f"; the header has: {header}"
        )
        + ". Fix the mapping, or list the column under `optional:` if files may lack it."
    )


def _safe_uri(uri: str) -> str:
    return _UNPRINTABLE.sub("?", uri)


def read_csv_chunks(
    uri: str, *, encoding: str = "utf-8", delimiter: str = ",", chunk_size: int = 50_000
) -> Iterator[RecordChunk]:
    """Records of a CSV file in chunks. Every line after the header is accounted for.

    A block of lines in which every line has balanced quotes, valid text and no NUL is one
    record per line and is parsed by Arrow's CSV reader; any other block goes through the
    careful reader, which follows quoted newlines and recovers from stray quotes.
    """
    with _open_text(uri, encoding) as stream:
        lines = _Lines(stream)
        try:
            header = _clean_header(uri, next(csv.reader(lines, delimiter=delimiter)))
        except StopIteration:
            return
        lines.current = []
        chunk_no = 0
        while True:
            block = lines.take(chunk_size)
            if not block:
                break
            first = block[0][0]
            texts = [text for _, text in block]
            chunk = None
            if _plain_block(texts):
                chunk = _fast_chunk(texts, first, header, delimiter)
            if chunk is None:
                lines.push_back(block)
                chunk = _careful_chunk(lines, header, delimiter, encoding, len(block))
            chunk_no += 1
            records, text = chunk
            yield RecordChunk(chunk_no=chunk_no, columns=header, records=records, text=text)
        if chunk_no == 0:
            yield RecordChunk(chunk_no=1, columns=header, records=_frame(header, [], [], [], []))


def _plain_block(texts: list[str]) -> bool:
    joined = "".join(texts)
    if "\x00" in joined or (not joined.isascii() and _SURROGATES.search(joined)):
        return False
    if '"' not in joined:
        return True
    return not any(text.count('"') & 1 for text in texts if '"' in text)


def _fast_chunk(
    texts: list[str], first: int, header: list[str], delimiter: str
) -> tuple[pd.DataFrame, str] | None:
    """One record per line: Arrow parses the block; bad lines come back with their error."""
    width = len(header)
    bad: list[tuple[int, int]] = []  # (row number among non-empty lines, fields found)

    def on_bad_row(row: Any) -> str:
        bad.append((row.number, row.actual_columns))
        return "skip"

    text = "".join(texts)
    try:
        table = pa_csv.read_csv(
            io.BytesIO(text.encode("utf-8")),
            read_options=pa_csv.ReadOptions(
                column_names=header, use_threads=False, block_size=1 << 26
            ),
            parse_options=pa_csv.ParseOptions(
                delimiter=delimiter, newlines_in_values=False, invalid_row_handler=on_bad_row
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types=dict.fromkeys(header, pa.string()), strings_can_be_null=False
            ),
        )
    except (pa.ArrowInvalid, ValueError):
        return None
    numbered = [
        (first + offset, line)
        for offset, line in enumerate(texts)
        if line not in ("\n", "\r\n", "\r")
    ]
    if any(number is None for number, _ in bad) or len(numbered) != table.num_rows + len(bad):
        return None
    bad_rows = {number - 1: fields for number, fields in bad}
    good = [entry for position, entry in enumerate(numbered) if position not in bad_rows]
    frame = table.to_pandas()
    frame[RECORD_NO] = [number for number, _ in good]
    frame[RAW] = pd.Series([line.rstrip("\r\n") for _, line in good], dtype="str")
    frame[PARSE_ERROR] = pd.Series([None] * len(good), dtype=object)
    if bad_rows:
        broken = [numbered[position] for position in sorted(bad_rows)]
        errors = [
            f"{bad_rows[position]} fields where the header has {width}"
            for position in sorted(bad_rows)
        ]
        extra = _frame(
            header,
            [[None] * width] * len(broken),
            [n for n, _ in broken],
            [line.rstrip("\r\n") for _, line in broken],
            errors,
        )
        frame = pd.concat([frame, extra], ignore_index=True).sort_values(RECORD_NO, kind="stable")
        frame = frame.reset_index(drop=True)
    return frame, text


def _careful_chunk(
    lines: _Lines, header: list[str], delimiter: str, encoding: str, budget: int
) -> tuple[pd.DataFrame, str]:
    """Parse record by record with the csv module until ``budget`` lines are consumed."""
    width = len(header)
    reader = csv.reader(lines, delimiter=delimiter, strict=False)
    rows: list[list[str | None]] = []
    numbers: list[int] = []
    raws: list[str] = []
    errors: list[str | None] = []
    texts: list[str] = []
    used = 0
    while used < budget:
        lines.current = []
        error = None
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # e.g. NUL bytes on older Pythons
            row, error = None, f"unreadable CSV: {exc}"
        consumed = lines.current
        if not consumed:
            break
        if len(consumed) == 1:
            number, raw = consumed[0]
            if row == []:
                used += 1
                texts.append(raw)
                continue  # a blank line is not a record
            if row is not None and len(row) != width:
                error = f"{len(row)} fields where the header has {width}"
                row = None
        else:
            # A record spanning lines with an odd number of quotes ran to the end of the
            # file (or the line cap) inside a quoted field: its field count proves nothing.
            runaway = sum(text.count('"') for _, text in consumed) % 2 == 1
            if row is not None and (len(row) != width or runaway):
                # Most likely a stray quote swallowed the lines after it: quarantine the
                # first line and read the rest again.
                lines.push_back(consumed[1:])
                consumed = consumed[:1]
                error = f"unbalanced quote: the line does not split into {width} fields"
                row = None
            number, raw = consumed[0][0], "".join(text for _, text in consumed)
        used += len(consumed)
        texts.append(raw)
        if not raw.isascii() and _SURROGATES.search(raw):
            error = error or f"bytes that are not valid {encoding}"
            row = None
        if "\x00" in raw:
            error = error or "NUL byte in the record"
            row = None
        rows.append(row if row is not None else [None] * width)
        numbers.append(number)
        raws.append(_printable(raw.rstrip("\r\n")))
        errors.append(error)
    return _frame(header, rows, numbers, raws, errors), "".join(texts)


def _frame(
    header: list[str],
    rows: list[list[Any]],
    numbers: list[int],
    raws: list[str],
    errors: list[str | None],
) -> pd.DataFrame:
    # Arrow-backed strings: the vectorised string work downstream then runs in C.
    frame = pd.DataFrame(rows, columns=header, dtype="str")
    frame[RECORD_NO] = numbers
    frame[RAW] = pd.Series(raws, dtype="str")
    frame[PARSE_ERROR] = pd.Series(errors, dtype=object)
    return frame


def _json_records(
    items: Iterator[tuple[int, str]], chunk_size: int
) -> Iterator[tuple[list[dict[str, Any]], list[int], list[str], list[str | None], str]]:
    records: list[dict[str, Any]] = []
    numbers: list[int] = []
    raws: list[str] = []
    errors: list[str | None] = []
    texts: list[str] = []
    for number, text in items:
        texts.append(text)
        stripped = text.strip()
        if not stripped:
            continue
        error = None
        value: Any = {}
        if _SURROGATES.search(text):
            error = "bytes that are not valid UTF-8"
        elif "\x00" in text:
            error = "NUL byte in the record"
        else:
            try:
                value = json.loads(stripped)
            except json.JSONDecodeError as exc:
                error = f"invalid JSON: {exc.msg} at column {exc.colno}"
            else:
                if not isinstance(value, dict):
                    error = f"a JSON {type(value).__name__}, not an object"
                    value = {}
        records.append(value if error is None else {})
        numbers.append(number)
        raws.append(_printable(stripped))
        errors.append(error)
        if len(records) >= chunk_size:
            yield records, numbers, raws, errors, "".join(texts)
            records, numbers, raws, errors, texts = [], [], [], [], []
    if records:
        yield records, numbers, raws, errors, "".join(texts)


def _records_frame(records: list[dict[str, Any]]) -> tuple[pd.DataFrame, list[str]]:
    columns: dict[str, None] = {}
    for record in records:
        for name in record:
            columns.setdefault(str(name), None)
    names = list(columns)
    frame = (
        pd.DataFrame(
            [[record.get(name) for name in names] for record in records],
            columns=names,
            dtype=object,
        )
        if records
        else pd.DataFrame(dtype=object)
    )
    return frame, names


def read_jsonl_chunks(
    uri: str, *, encoding: str = "utf-8", chunk_size: int = 50_000
) -> Iterator[RecordChunk]:
    """Records of a JSON Lines file in chunks; a line that is not a JSON object is kept as an error."""
    with _open_text(uri, encoding) as stream:
        numbered = ((number, line) for number, line in enumerate(stream, start=1))
        chunk_no = 0
        for records, numbers, raws, errors, text in _json_records(numbered, chunk_size):
            chunk_no += 1
            frame, names = _records_frame(records)
            frame[RECORD_NO] = numbers
            frame[RAW] = raws
            frame[PARSE_ERROR] = pd.Series(errors, dtype=object)
            yield RecordChunk(chunk_no=chunk_no, columns=names, records=frame, text=text)
        if chunk_no == 0:
            yield RecordChunk(chunk_no=1, columns=[], records=_frame([], [], [], [], []))


def empty_chunk(columns: list[str] | None = None) -> RecordChunk:
    """The one chunk of an input with no records (a 0-byte file, or a header alone)."""
    columns = list(columns or [])
    return RecordChunk(chunk_no=1, columns=columns, records=_frame(columns, [], [], [], []))


def has_records(uri: str, *, file_format: str, encoding: str, delimiter: str) -> bool:
    """Whether the input holds at least one record (reads only as far as the first)."""
    for chunk in read_chunks(
        uri, file_format=file_format, encoding=encoding, delimiter=delimiter, chunk_size=1
    ):
        return len(chunk.records) > 0
    return False


def read_chunks(
    uri: str, *, file_format: str, encoding: str, delimiter: str, chunk_size: int
) -> Iterator[RecordChunk]:
    kind = _format_of(uri, file_format)
    if kind == "csv":
        return read_csv_chunks(uri, encoding=encoding, delimiter=delimiter, chunk_size=chunk_size)
    return read_jsonl_chunks(uri, encoding=encoding, chunk_size=chunk_size)


def page_chunk(page: ApiPage) -> RecordChunk:
    """An API page's records as one chunk (each record's raw text is its JSON)."""
    numbers = list(range(1, len(page.records) + 1))
    good: list[dict[str, Any]] = []
    raws: list[str] = []
    errors: list[str | None] = []
    for item in page.records:
        raws.append(json.dumps(item, ensure_ascii=False, sort_keys=True, default=str))
        if isinstance(item, dict):
            good.append(item)
            errors.append(None)
        else:
            good.append({})
            errors.append(f"a JSON {type(item).__name__}, not an object")
    frame, names = _records_frame(good)
    if frame.empty and not names:
        frame = pd.DataFrame(index=range(len(good)), dtype=object)
    frame[RECORD_NO] = numbers
    frame[RAW] = raws
    frame[PARSE_ERROR] = pd.Series(errors, dtype=object)
    return RecordChunk(
        chunk_no=1, columns=names, records=frame, text=page.body.decode("utf-8", "surrogateescape")
    )


# --------------------------------------------------------------------------- REST APIs


class ApiError(RuntimeError):
    pass


def get_with_retries(
    session: Any,
    url: str,
    *,
    params: dict[str, Any] | None,
    headers: dict[str, str],
    timeout: float,
    max_retries: int,
    backoff: float,
    max_backoff: float,
    sleep: Any = time.sleep,
) -> Any:
    """GET with retries on 429/5xx, connection errors and timeouts, honouring Retry-After."""
    try:
        return http.request_with_retries(
            session,
            "GET",
            url,
            params=params,
            headers=headers,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            max_backoff=max_backoff,
            sleep=sleep,
        )
    except http.HttpError as exc:
        raise ApiError(str(exc)) from exc


def _dig(body: Any, path: str) -> Any:
    if not path:
        return body
    value = body
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def fetch_pages(
    url: str,
    api: ApiSource,
    *,
    token: str | None,
    since: str | None,
    session: Any = None,
    sleep: Any = time.sleep,
) -> Iterator[ApiPage]:
    """Pages of a paginated REST API from ``since`` on, until a page has no next page."""
    import requests

    session = session or requests.Session()
    headers = {"Accept": "application/json"}
    if token:
        headers[api.auth_header] = f"{api.auth_scheme} {token}".strip()
    params: dict[str, Any] = {}
    if api.page_size_param:
        params[api.page_size_param] = api.page_size
    if api.since_param and since:
        params[api.since_param] = since
    page_no = 1
    next_url: str | None = url
    pages = 0
    while next_url:
        if api.next is None:
            params[api.page_param] = page_no
        response = get_with_retries(
            session,
            next_url,
            params=params or None,
            headers=headers,
            timeout=api.timeout_seconds,
            max_retries=api.max_retries,
            backoff=api.backoff_seconds,
            max_backoff=api.max_backoff_seconds,
            sleep=sleep,
        )
        try:
            body = response.json()
        except ValueError as exc:
            raise ApiError(f"GET {response.url}: the body is not JSON") from exc
        records = _dig(body, api.records)
        if not isinstance(records, list):
            raise ApiError(f"GET {response.url}: no record list at {api.records!r}")
        page_uri = response.url
        yield ApiPage(uri=page_uri, body=response.content, records=records)
        pages += 1
        if not records or (api.max_pages and pages >= api.max_pages):
            return
        if api.next is None:
            page_no += 1
            continue
        following = _dig(body, api.next)
        if not following:
            return
        following = str(following)
        if api.next_param:
            params[api.next_param] = following
        elif following.startswith(("http://", "https://", "/")):
            next_url = following if "://" in following else _join(url, following)
            params = {}  # a next link carries its own query
        else:
            params["cursor"] = following


def _join(base: str, path: str) -> str:
    parts = urlsplit(base)
    return urlunsplit(
        (
            parts.scheme,
            parts.netloc,
            path.split("?")[0],
            path.split("?")[1] if "?" in path else "",
            "",
        )
    )


def cursor_from(records: pd.DataFrame, cursor_field: str | None) -> str | None:
    """The highest value of the cursor field in a batch (ISO times compare as text)."""
    if not cursor_field or cursor_field not in records.columns:
        return None
    values = records[cursor_field].dropna()
    values = values[values.map(lambda v: isinstance(v, str | int | float))]
    if values.empty:
        return None
    return str(max(values.astype(str)))
