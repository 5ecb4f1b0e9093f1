"""The quarantine, worked by people: list held records (personal data masked), export them
as received, and mark records released once a hop has taken them after a fix.

Only the store side lives here; feeding released records through a hop again is the hop's
(``leadflow/capture/release.py`` for capture). A released row stays in the table, with
``released_at`` and ``released_by``, so the ledger keeps the whole story; the audit counts
only rows still held.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Select, select, update

from leadflow import tables as t

# An address, or what is left of a broken one ("ann@", "ann@@x.com"): anything around an @.
_EMAIL = re.compile(r"([^\s,;:\"'<>()\[\]]*)@+([^\s,;:\"'<>()\[\]@]*)")
# An address in running text (``masked``): text on both sides of one @, a / ending it (an
# address inside a URL's path, after the URL's own user@host, is masked too).
_ADDRESS = re.compile(r"([^\s,;:\"'<>()\[\]@/]+)@([^\s,;:\"'<>()\[\]@/]+)")
_PHONE = re.compile(r"\+?\d(?:[\s().-]*\d){6,}")
# An address someone wrote out ("ann at acme.com"), which is no less personal.
_SPELLED = re.compile(r"([\w.+-]+)\s+(?:at|AT)\s+([\w-]+(?:\.[\w-]+)+)")
# Fields whose whole value is personal, valid or not ("ann.acme.com" in an email column).
_PERSONAL_FIELD = re.compile(r"e-?mail|phone|mobile|cell|fax|^tel", re.IGNORECASE)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _mask_phone(match: re.Match[str]) -> str:
    digits = match.group()
    if _DATE.match(digits):
        return digits  # 2024-01-31: a date, not a phone number
    return "…" + re.sub(r"\D", "", digits)[-2:]


def masked(text: Any) -> str:
    """Any text (an error, a URL) fit for a log line or a person's screen: each address as
    ``a…@domain``, nothing else changed (the outbox, the CRMs, the calendars). Stricter than
    ``mask``: an @ without text on both sides (``@handle``, ``price @ 5``) stays as it is."""
    return _ADDRESS.sub(lambda m: f"{m.group(1)[:1]}…@{m.group(2)}", str(text))


def mask(text: str | None) -> str | None:
    """A record fit to show a person: emails as ``a…@domain``, phone-like digit runs as
    ``…12`` (last two digits), control characters as ``?``."""
    if text is None:
        return None
    text = _EMAIL.sub(lambda m: f"{m.group(1)[:1]}…@{m.group(2)}", text)
    text = _SPELLED.sub(lambda m: f"{m.group(1)[:1]}… at {m.group(2)}", text)
    text = _PHONE.sub(_mask_phone, text)
    return _CONTROL.sub("?", text)


def _mask_field(name: str, value: Any) -> Any:
    """The value of an email or phone field, valid or not: ``a…@x.com`` or ``a…`` (an
    address without its @), ``…12`` (any digits in a phone field; "call me" has none)."""
    if not isinstance(value, str) or not value.strip():
        return value
    if "@" in value:
        return mask(value)
    if "mail" in name.lower():
        return f"{value.strip()[:1]}…"
    digits = re.sub(r"\D", "", value)
    return f"…{digits[-2:]}" if digits else value


def _mask_fields(data: Any) -> Any:
    if isinstance(data, dict):
        return {
            k: _mask_field(str(k), v) if _PERSONAL_FIELD.search(str(k)) else _mask_fields(v)
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [_mask_fields(v) for v in data]
    return data


def mask_record(text: str | None, header: list[str] | None = None) -> str | None:
    """A held record fit to show a person: a JSON object or a CSV line (read with its
    batch's ``header``) with its email and phone fields masked whole, valid or not, and
    then everything email- or phone-like (``mask``)."""
    if text is None:
        return None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            text = json.dumps(_mask_fields(data), ensure_ascii=False)
    elif header:
        rows = list(csv.reader([text]))
        if len(rows) == 1 and len(rows[0]) == len(header):
            values = [
                _mask_field(name, v) if _PERSONAL_FIELD.search(name) else v
                for name, v in zip(header, rows[0], strict=True)
            ]
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="").writerow(values)
            text = buffer.getvalue()
    return mask(text)


@dataclass(frozen=True)
class Selection:
    """Which held records a command works on (all given parts must match)."""

    ids: tuple[int, ...] = ()
    batch_id: int | None = None
    batch_ids: tuple[int, ...] = ()  # any of these batches (``--batch 23,24``)
    hop: str | None = None
    reason: str | None = None  # an expectation name, as listed by ``quarantine list``

    def statement(self) -> Select:
        q = t.quarantine
        statement = select(q).where(q.c.released_at.is_(None)).order_by(q.c.id)
        if self.ids:
            statement = statement.where(q.c.id.in_(self.ids))
        if self.batch_id is not None:
            statement = statement.where(q.c.batch_id == self.batch_id)
        if self.batch_ids:
            statement = statement.where(q.c.batch_id.in_(self.batch_ids))
        if self.hop is not None:
            statement = statement.where(q.c.hop == self.hop)
        return statement


def reason_names(reasons: Any) -> list[str]:
    """The expectation names in a row's reasons (``"chunk_rejected: x"`` -> ``chunk_rejected``)."""
    out = []
    for reason in reasons or []:
        text = reason if isinstance(reason, str) else str(reason)
        out.append(text.split(":", 1)[0].strip())
    return out


def held(conn: Connection, selection: Selection) -> list[dict[str, Any]]:
    """Held (not released) quarantine rows matching ``selection``, unmasked, oldest first."""
    rows = [dict(r) for r in conn.execute(selection.statement()).mappings()]
    if selection.reason:
        rows = [r for r in rows if selection.reason in reason_names(r["reasons"])]
    return rows


def listing(conn: Connection, selection: Selection, *, limit: int = 200) -> dict[str, Any]:
    """What ``leadflow quarantine list`` shows: counts by reason over every matching row,
    and the first ``limit`` rows with emails and phones masked."""
    rows = held(conn, selection)
    by_reason = Counter(name for r in rows for name in reason_names(r["reasons"]))
    b = t.capture_batches
    batches = {r["batch_id"] for r in rows[:limit] if r["batch_id"] is not None}
    headers = dict(
        conn.execute(select(b.c.id, b.c.header).where(b.c.id.in_(batches))).all() if batches else []
    )
    shown = [
        {
            "id": int(r["id"]),
            "hop": r["hop"],
            "batch_id": r["batch_id"],
            "lead_id": r["lead_id"],
            "record_no": r["record_no"],
            "reasons": [mask(str(x)) for x in r["reasons"] or []],
            "record": mask_record(r["record"], headers.get(r["batch_id"])),
            "held_since": r["created_at"],
        }
        for r in rows[:limit]
    ]
    return {"held": len(rows), "by_reason": dict(by_reason.most_common()), "records": shown}


def export(conn: Connection, batch_id: int, out: Path) -> int:
    """Write the held records of a capture batch to ``out`` as received (a CSV batch gets
    its header line first), to be fixed by hand and ingested again. Returns the count."""
    rows = held(conn, Selection(batch_id=batch_id, hop="capture"))
    b = t.capture_batches
    header = conn.execute(select(b.c.header).where(b.c.id == batch_id)).scalar()
    with open(out, "w", encoding="utf-8", newline="") as handle:
        if header:
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerow(header)
            handle.write(buffer.getvalue())
        for row in rows:
            handle.write((row["record"] or "") + "\n")
    return len(rows)


def mark_released(
    conn: Connection, ids: list[int], *, at: datetime, by: str = "leadflow quarantine release"
) -> int:
    """Mark quarantine rows released (they stay, for the record); returns how many were held."""
    if not ids:
        return 0
    q = t.quarantine
    result = conn.execute(
        update(q)
        .where(q.c.id.in_(ids), q.c.released_at.is_(None))
        .values(released_at=at, released_by=by)
    )
    return int(result.rowcount or 0)
