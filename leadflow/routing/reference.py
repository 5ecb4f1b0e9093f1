"""Reference data the hops use: sales reps and known accounts, loaded from CSV.

Loading is an upsert (reps by email, accounts by domain, else by name), so a weekly export
can be loaded again. Errors name the file, the row and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Connection, select, update

from leadflow import store
from leadflow import tables as t
from leadflow.capture.values import country_code, host_of


class ReferenceError(ValueError):
    pass


REQUIRED = {"reps": ("email", "name"), "accounts": ("name",)}


def _read(path: Path, kind: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise ReferenceError(f"{path}: file not found") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ReferenceError(f"{path}: not a readable CSV ({exc})") from exc
    frame.columns = [c.strip() for c in frame.columns]
    missing = [c for c in REQUIRED[kind] if c not in frame.columns]
    if missing:
        raise ReferenceError(
            f"{path}: required column(s) {missing} missing; header has {list(frame.columns)}"
        )
    return frame.map(lambda v: v.strip() if isinstance(v, str) else v).replace({"": None})


def _number(path: Path, row: int, field: str, value: Any, kind: type) -> Any:
    if value is None:
        return None
    try:
        number = float(str(value).replace(",", ""))
    except ValueError as exc:
        raise ReferenceError(f"{path} row {row}: {field} {value!r} is not a number") from exc
    if number < 0:
        raise ReferenceError(f"{path} row {row}: {field} {value!r} is negative")
    return int(number) if kind is int else number


def _list(value: Any) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in str(value).replace(",", ";").split(";") if v.strip()]
    return items or None


def _rep_rows(path: Path, frame: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for position, record in enumerate(frame.to_dict("records"), start=2):
        countries = _list(record.get("countries"))
        if countries:
            codes = [country_code(c) for c in countries]
            bad = [c for c, code in zip(countries, codes, strict=True) if code is None]
            if bad:
                raise ReferenceError(f"{path} row {position}: countries has unknown {bad}")
            countries = codes
        active = str(record.get("active") or "true").lower() not in ("false", "0", "no", "n")
        rows.append(
            {
                "email": str(record["email"]).lower(),
                "name": record["name"],
                "team": record.get("team"),
                "region": record.get("region"),
                "countries": countries,
                "capacity": _number(path, position, "capacity", record.get("capacity"), int) or 50,
                "active": active,
                "timezone": record.get("timezone"),
            }
        )
    return rows


def _account_rows(conn: Connection, path: Path, frame: pd.DataFrame) -> list[dict[str, Any]]:
    reps = dict(conn.execute(select(t.reps.c.email, t.reps.c.id)).all())
    rows = []
    for position, record in enumerate(frame.to_dict("records"), start=2):
        domain = host_of(record["domain"]) if record.get("domain") else None
        if record.get("domain") and domain is None:
            raise ReferenceError(
                f"{path} row {position}: domain {record['domain']!r} is not a domain"
            )
        aliases = [host_of(a) for a in _list(record.get("aliases")) or []]
        if any(a is None for a in aliases):
            raise ReferenceError(f"{path} row {position}: aliases has a value that is not a domain")
        owner = record.get("owner_email")
        if owner and owner.lower() not in reps:
            raise ReferenceError(f"{path} row {position}: owner_email {owner!r} is not a known rep")
        country = record.get("country")
        rows.append(
            {
                "name": record["name"],
                "domain": domain,
                "aliases": aliases or None,
                "owner_rep_id": reps.get(owner.lower()) if owner else None,
                "industry": record.get("industry"),
                "employees": _number(path, position, "employees", record.get("employees"), int),
                "revenue": _number(path, position, "revenue", record.get("revenue"), float),
                "country": country_code(country) if country else None,
            }
        )
    return rows


def load(conn: Connection, kind: str, path: Path) -> dict[str, int]:
    """Upsert reps or accounts from ``path``; returns inserted/updated counts."""
    frame = _read(path, kind)
    table = t.reps if kind == "reps" else t.accounts
    rows = _rep_rows(path, frame) if kind == "reps" else _account_rows(conn, path, frame)
    if kind == "reps":
        existing = dict(conn.execute(select(t.reps.c.email, t.reps.c.id)).all())
        key_of = lambda row: row["email"]  # noqa: E731
    else:
        existing = {}
        for account_id, domain, name in conn.execute(
            select(t.accounts.c.id, t.accounts.c.domain, t.accounts.c.name)
        ):
            existing[domain or f"name:{name.lower()}"] = account_id
        key_of = lambda row: row["domain"] or f"name:{row['name'].lower()}"  # noqa: E731
    inserted = updated = 0
    now = store.utcnow()
    new_rows = []
    for row in rows:
        key = key_of(row)
        if key in existing:
            conn.execute(update(table).where(table.c.id == existing[key]).values(**row))
            updated += 1
        else:
            new_rows.append({**row, "created_at": now})
            existing[key] = -1
            inserted += 1
    if new_rows:
        conn.execute(table.insert(), new_rows)
    return {"inserted": inserted, "updated": updated}
