"""Enrichment hop, local part: what can be derived from a lead without calling anyone.

Pure functions over a batch of leads (DataFrame in, columns out); each expensive step runs
once per distinct value. Lists (free-mail, disposable and role mailboxes, legal suffixes)
are plain text files under ``rules/lists`` that ops can read and edit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.compute as pc

from leadflow.capture import phones
from leadflow.capture.normalise import arrow, from_arrow, mask, registered_domain
from leadflow.enrich.matching import build_index, clean_company, match_accounts
from leadflow.lifecycle import Status
from leadflow.queue import Strategy
from leadflow.runner import Hop, HopResult, HopRun
from leadflow.settings import get_settings
from leadflow.tables import ENRICHED_FIELDS

EMAIL_TYPES = ("business", "free", "disposable", "role")
SENIORITIES = (
    "C-level",
    "VP",
    "Director",
    "Manager",
    "Individual contributor",
    "Student",
    "Unknown",
)
DEPARTMENTS = (
    "executive",
    "sales",
    "marketing",
    "engineering",
    "it",
    "finance",
    "hr",
    "operations",
    "legal",
    "support",
    "other",
)
REGIONS = ("NA", "LATAM", "EMEA", "APAC")


@dataclass(frozen=True)
class Lists:
    free_mail: frozenset[str]
    disposable: frozenset[str]
    role: frozenset[str]
    legal_suffixes: tuple[str, ...]


def _read_list(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip().lower() for line in lines if line.strip() and not line.startswith("#")]


@lru_cache(maxsize=4)
def load_lists(directory: str | None = None) -> Lists:
    folder = Path(directory) if directory else get_settings().rules_dir / "lists"
    return Lists(
        free_mail=frozenset(_read_list(folder / "free_mail_domains.txt")),
        disposable=frozenset(_read_list(folder / "disposable_domains.txt")),
        role=frozenset(_read_list(folder / "role_accounts.txt")),
        legal_suffixes=tuple(_read_list(folder / "legal_suffixes.txt")),
    )


# --------------------------------------------------------------------------- email


def email_types(emails: pd.Series, lists: Lists) -> tuple[pd.Series, pd.Series]:
    """(email type, host) per address: disposable > free > role > business."""
    text = arrow(emails)
    has_at = mask(pc.match_substring(text, "@"), emails.index)
    local = from_arrow(pc.replace_substring_regex(text, "@.*$", ""), emails.index)
    host = from_arrow(pc.replace_substring_regex(text, "^[^@]*@", ""), emails.index)
    host = host.where(has_at & (host != ""))
    registered = _registered(host)
    kind = pd.Series("business", index=emails.index, dtype=object)
    base_local = local.str.replace(r"[0-9]+$", "", regex=True)
    kind[base_local.isin(lists.role).to_numpy()] = "role"
    kind[(registered.isin(lists.free_mail) | host.isin(lists.free_mail)).to_numpy()] = "free"
    kind[(registered.isin(lists.disposable) | host.isin(lists.disposable)).to_numpy()] = (
        "disposable"
    )
    return kind.where(emails.notna(), None), host


def _registered(hosts: pd.Series) -> pd.Series:
    present = hosts.dropna()
    lookup = {host: registered_domain(host) for host in present.unique()}
    return hosts.map(lookup).astype(object)


def company_domain(hosts: pd.Series, kinds: pd.Series, websites: pd.Series) -> pd.Series:
    """The company's registered domain: from a business (or role) address, else the website."""
    own = hosts.where(kinds.isin(["business", "role"]))
    chosen = own.where(own.notna(), websites)
    return _registered(chosen).where(chosen.notna(), None)


# --------------------------------------------------------------------------- titles

_ABBREVIATIONS = {
    "sr": "senior",
    "snr": "senior",
    "jr": "junior",
    "vp": "vice president",
    "svp": "vice president",
    "evp": "vice president",
    "avp": "vice president",
    "mgr": "manager",
    "dir": "director",
    "eng": "engineering",
    "engr": "engineer",
    "ops": "operations",
    "mktg": "marketing",
    "acct": "account",
    "exec": "executive",
    "dev": "developer",
    "sw": "software",
    "biz": "business",
    "bd": "business development",
    "hr": "human resources",
    "it": "information technology",
    "md": "managing director",
    "gm": "general manager",
    "cust": "customer",
    "svc": "service",
    "qa": "quality assurance",
}
_C_LEVEL = {
    "ceo",
    "cto",
    "cfo",
    "cmo",
    "coo",
    "cio",
    "ciso",
    "cro",
    "cpo",
    "cdo",
    "cso",
    "cco",
    "chro",
    "clo",
}

_SENIORITY_RULES: tuple[tuple[str, str], ...] = (
    ("Student", r"\b(student|intern|internship|trainee|apprentice|candidate|graduate)\b"),
    ("Individual contributor", r"\bproduct owner\b"),
    ("VP", r"\bvice president\b"),
    (
        "C-level",
        r"\b(chief|founder|cofounder|co founder|owner|president|managing director|general counsel)\b|\b("
        + "|".join(sorted(_C_LEVEL))
        + r")\b",
    ),
    ("Director", r"\b(director|head|general manager)\b"),
    ("Manager", r"\b(manager|supervisor|lead|foreman)\b"),
    (
        "Individual contributor",
        r"\b(engineer|developer|programmer|analyst|specialist|associate|executive|representative|rep|"
        r"consultant|accountant|administrator|designer|coordinator|generalist|sdr|bdr|scientist|"
        r"architect|technician|officer|assistant|agent|recruiter|writer|strategist|planner|buyer|"
        r"auditor|advisor|clerk|controller|counsel|attorney|lawyer|paralegal)\b",
    ),
)
_DEPARTMENT_RULES: tuple[tuple[str, str], ...] = (
    (
        "executive",
        r"\b(ceo|chief executive|founder|cofounder|co founder|(?<!product )owner|(?<!vice )president|managing director|general manager)\b",
    ),
    (
        "sales",
        r"\b(sales|account executive|sdr|bdr|business development|cro|revenue|account manager|inside sales)\b",
    ),
    (
        "marketing",
        r"\b(marketing|cmo|growth|brand|demand generation|content|seo|communications|social media)\b",
    ),
    (
        "it",
        r"\b(information technology|cio|ciso|systems administrator|sysadmin|infrastructure|network|security|helpdesk)\b",
    ),
    (
        "engineering",
        r"\b(engineer|engineering|developer|software|cto|devops|data|programmer|architect|quality assurance|r d|technical|product)\b",
    ),
    (
        "finance",
        r"\b(finance|financial|cfo|accountant|accounting|controller|treasury|fp a|audit|auditor|payroll)\b",
    ),
    ("hr", r"\b(human resources|chro|people|talent|recruiter|recruiting)\b"),
    ("operations", r"\b(operations|coo|supply chain|logistics|procurement|facilities)\b"),
    ("legal", r"\b(legal|counsel|attorney|lawyer|compliance|clo)\b"),
    ("support", r"\b(customer success|support|customer service)\b"),
)
_SENIORITY_RE = tuple((name, re.compile(pattern)) for name, pattern in _SENIORITY_RULES)
_DEPARTMENT_RE = tuple((name, re.compile(pattern)) for name, pattern in _DEPARTMENT_RULES)


def normalise_title(title: str) -> str:
    """Lower case, punctuation to spaces, common abbreviations spelled out."""
    text = title.lower().replace("&", " and ").replace("/", " ")
    text = re.sub(r"[^a-z0-9 ]+", " ", text)
    words = [_ABBREVIATIONS.get(word, word) for word in text.split()]
    return " ".join(words)


@cache
def classify_title(title: str) -> tuple[str, str]:
    """(seniority, department) for a job title, e.g. "Sr. Mgr, Sales Ops" -> Manager, sales."""
    text = normalise_title(title)
    seniority = next((name for name, rule in _SENIORITY_RE if rule.search(text)), "Unknown")
    department = next((name for name, rule in _DEPARTMENT_RE if rule.search(text)), "other")
    return seniority, department


def titles(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    present = values.dropna()
    lookup = {title: classify_title(title) for title in present.unique()}
    pairs = values.map(lookup)
    seniority = pairs.map(lambda p: p[0], na_action="ignore").astype(object)
    department = pairs.map(lambda p: p[1], na_action="ignore").astype(object)
    return seniority.where(values.notna(), "Unknown"), department.where(values.notna(), None)


# --------------------------------------------------------------------------- places

# The first zone pytz lists is not the main one for these countries.
_MAIN_ZONE = {
    "US": "America/New_York",
    "CA": "America/Toronto",
    "AU": "Australia/Sydney",
    "BR": "America/Sao_Paulo",
    "RU": "Europe/Moscow",
    "MX": "America/Mexico_City",
    "ID": "Asia/Jakarta",
    "KZ": "Asia/Almaty",
    "CN": "Asia/Shanghai",
    "AR": "America/Argentina/Buenos_Aires",
    "CL": "America/Santiago",
    "ES": "Europe/Madrid",
    "PT": "Europe/Lisbon",
    "NZ": "Pacific/Auckland",
    "EC": "America/Guayaquil",
    "CD": "Africa/Kinshasa",
    "MN": "Asia/Ulaanbaatar",
    "UA": "Europe/Kyiv",
    "DE": "Europe/Berlin",
    "MY": "Asia/Kuala_Lumpur",
    "PF": "Pacific/Tahiti",
    "KI": "Pacific/Tarawa",
    "FM": "Pacific/Pohnpei",
}
_NORTH_AMERICA = {"US", "CA", "BM", "GL", "PM", "UM"}
_MIDDLE_EAST = {
    "AE",
    "SA",
    "IL",
    "IR",
    "IQ",
    "JO",
    "KW",
    "LB",
    "OM",
    "QA",
    "SY",
    "YE",
    "BH",
    "PS",
    "CY",
    "TR",
    "GE",
    "AM",
    "AZ",
}
_AFRICAN_ISLANDS = {"MV", "MU", "SC", "RE", "YT", "KM", "MG", "CV", "SH", "ST"}


@cache
def _places() -> dict[str, tuple[str, str]]:
    """ISO-2 -> (sales region, main time zone), derived from the tz database."""
    import pytz

    table: dict[str, tuple[str, str]] = {}
    for code, zones in pytz.country_timezones.items():
        zone = _MAIN_ZONE.get(code, zones[0])
        area = zone.split("/")[0]
        if code in _NORTH_AMERICA:
            region = "NA"
        elif code in _MIDDLE_EAST or code in _AFRICAN_ISLANDS:
            region = "EMEA"
        elif area == "America" or code in {"FK", "GS"}:
            region = "LATAM"
        elif area in ("Europe", "Africa", "Atlantic", "Arctic"):
            region = "EMEA"
        else:  # Asia, Australia, Pacific, Indian, Antarctica
            region = "APAC"
        table[code] = (region, zone)
    return table


def zone_of_country(country: str | None) -> str | None:
    """A country's main time zone (``DE`` -> ``Europe/Berlin``), None when unknown."""
    if not country:
        return None
    return _places().get(str(country).strip().upper(), (None, None))[1]


def places(countries: pd.Series) -> tuple[pd.Series, pd.Series]:
    table = _places()
    region = countries.map(lambda c: table.get(c, (None, None))[0], na_action="ignore").astype(
        object
    )
    zone = countries.map(lambda c: table.get(c, (None, None))[1], na_action="ignore").astype(object)
    return region.where(countries.notna(), None), zone.where(countries.notna(), None)


# --------------------------------------------------------------------------- all of it


def derive(leads: pd.DataFrame, lists: Lists | None = None) -> pd.DataFrame:
    """The local enrichment columns for a batch of leads (same index)."""
    lists = lists or load_lists()
    out = pd.DataFrame(index=leads.index)
    kind, host = email_types(leads["email"], lists)
    out["email_type"] = kind
    website = leads["website"].astype(object).where(leads["website"].notna(), None)
    out["domain"] = company_domain(host, kind, website)
    out["seniority"], out["department"] = titles(leads["title"])
    valid, phone_country = phones.validity(leads["phone"])
    out["phone_valid"] = valid.where(leads["phone"].notna(), None).astype(object)
    out["phone_country"] = phone_country
    out["region"], out["timezone"] = places(leads["country"])
    out["company_clean"] = clean_company(leads["company"], lists.legal_suffixes)
    return out


# --------------------------------------------------------------------------- the hop

SUITE = "enriched"
INPUT_COLUMNS = ("id", "status", "email", "title", "phone", "country", "company", "website")


@dataclass
class EnrichContext:
    """What one run of the hop needs besides the leads (built once per run)."""

    provider: object | None  # a firmographics provider, or None
    accounts: object  # matching.AccountIndex
    threshold: float
    min_name_length: int
    started: datetime | None = None  # pending leads are retried once per run
    ttl_days: float = 30.0
    not_found_ttl_days: float = 7.0


def make_provider(spec: str | None) -> object | None:
    """``none`` | ``file:PATH`` | ``block:NAME`` -> a firmographics provider."""
    from blocks import resolve
    from blocks.firmographics import FileFirmographics, HttpFirmographics
    from leadflow.enrich import firmographics

    if not spec or spec == "none":
        return None
    if spec.startswith("file:"):
        return firmographics.FileProvider(FileFirmographics(path=spec[5:]))
    if name := resolve.block_name(spec):
        block = resolve.load(name, (HttpFirmographics, FileFirmographics), "firmographics provider")
        if isinstance(block, HttpFirmographics):
            return firmographics.HttpProvider(block)
        return firmographics.FileProvider(block)
    raise ValueError(f"unknown provider {spec!r}: use none, file:PATH or block:NAME")


@dataclass
class Lookups:
    """Firmographics answers for a batch's distinct domains (the hop's only I/O)."""

    answers: dict
    stats: dict


def lookup_firmographics(
    conn: Any, leads: pd.DataFrame, context: EnrichContext, now: datetime
) -> Lookups:
    """Cache first, then the provider, once per distinct company domain of the batch."""
    from leadflow.enrich import firmographics

    kind, host = email_types(leads["email"], load_lists())
    website = leads["website"].astype(object).where(leads["website"].notna(), None)
    domains = sorted(company_domain(host, kind, website).dropna().unique().tolist())
    answers, stats = firmographics.resolve(
        conn.engine,
        context.provider,
        domains,
        now=now,
        ttl_days=context.ttl_days,
        not_found_ttl_days=context.not_found_ttl_days,
    )
    return Lookups(answers, stats.as_dict())


def enrich_frame(leads: pd.DataFrame, lookups: Lookups, context: EnrichContext) -> pd.DataFrame:
    """Everything the hop derives for a batch (pure): local fields, the firmographics
    answers, the account match. Same index as ``leads``."""
    from leadflow.enrich import firmographics

    out = derive(leads)
    out["country"] = leads["country"]
    answers = lookups.answers
    status = pd.Series(
        "none" if context.provider is None else "skipped", index=leads.index, dtype=object
    )
    notes: list[dict | None] = [None] * len(leads)
    for column in ("industry", "employees", "revenue"):
        out[column] = None
    if answers:
        found = out["domain"].map(answers)
        has = found.notna()
        status[has] = [c.status for c in found[has]]
        out.loc[has, "industry"] = [c.industry for c in found[has]]
        out.loc[has, "employees"] = [c.employees for c in found[has]]
        out.loc[has, "revenue"] = [c.revenue for c in found[has]]
        for position, company in enumerate(found):
            if isinstance(company, firmographics.Company) and company.notes:
                notes[position] = {"firmographics": company.notes}
    status[status == "unavailable"] = "pending"
    out["firmographics"] = status
    out["employees"] = pd.array(out["employees"], dtype="Int64")
    out["revenue"] = pd.array(out["revenue"], dtype="Float64")
    out["enrichment_notes"] = notes
    match = match_accounts(
        out["domain"],
        out["company_clean"],
        context.accounts,
        threshold=context.threshold,
        min_name_length=context.min_name_length,
    )
    return pd.concat([out, match], axis=1)


def enrichment_changes(
    leads: pd.DataFrame, enriched: pd.DataFrame, now: datetime, started: datetime | None = None
) -> pd.DataFrame:
    """The lifecycle changes: enriched, or enrichment_pending when the provider was down."""
    pending = enriched["firmographics"] == "pending"
    to_status = pd.Series(Status.ENRICHED.value, index=leads.index)
    to_status[pending] = Status.ENRICHMENT_PENDING.value
    changes = enriched[list(ENRICHED_FIELDS)].copy()
    changes.insert(0, "id", leads["id"].to_numpy())
    changes["from_status"] = leads["status"].to_numpy()
    changes["to_status"] = to_status.to_numpy()
    changes["reason"] = ["firmographics provider unavailable" if p else "enriched" for p in pending]
    changes["enriched_at"] = pd.Series(pd.Timestamp(now), index=leads.index).where(~pending, pd.NaT)
    changes["enrich_attempted_at"] = pd.Timestamp(started or now)
    # A pending lead that is retried and still pending stays put: no ledger row for that.
    return changes


def gate_frame(leads: pd.DataFrame, enriched: pd.DataFrame) -> pd.DataFrame:
    """What the `enriched` suite reads: one row per lead."""
    frame = enriched[
        [
            "email_type",
            "seniority",
            "department",
            "employees",
            "revenue",
            "country",
            "region",
            "firmographics",
        ]
    ].copy()
    frame.insert(0, "id", leads["id"].to_numpy())
    return frame


def enrich_batch(
    leads: pd.DataFrame, lookups: Lookups, context: EnrichContext, now: datetime
) -> HopResult:
    """The hop's pure function: a claimed batch and its lookups -> changes and gate frame."""
    enriched = enrich_frame(leads, lookups, context)
    stats = dict(lookups.stats)
    stats["accounts_matched"] = int(enriched["account_id"].notna().sum())
    return HopResult(
        changes=enrichment_changes(leads, enriched, now, context.started),
        checked=gate_frame(leads, enriched),
        stats=stats,
    )


def _waiting(context: EnrichContext) -> Any:
    """Captured leads, and pending ones not yet retried in this run."""
    from sqlalchemy import or_

    from leadflow import tables as t

    leads = t.leads
    if context.started is None:
        return None
    return or_(
        leads.c.status == Status.CAPTURED.value,
        leads.c.enrich_attempted_at.is_(None),
        leads.c.enrich_attempted_at < context.started,
    )


HOP = Hop(
    name="enrich",
    inputs=(Status.CAPTURED, Status.ENRICHMENT_PENDING),
    suite=SUITE,
    # Lease: firmographics lookups are network calls, never inside an open transaction.
    strategy=Strategy.LEASE,
    columns=lambda _context: INPUT_COLUMNS,
    fetch=lookup_firmographics,
    transform=enrich_batch,
    where=_waiting,
)


def summarise(run: HopRun) -> dict[str, Any]:
    """The enrich run's summary: counts, lookups and match rates."""
    stats = dict(run.stats)
    matched = stats.pop("accounts_matched", 0)
    enriched = run.statuses.get(Status.ENRICHED.value, 0)
    pending = run.statuses.get(Status.ENRICHMENT_PENDING.value, 0)
    asked = stats.get("found", 0) + stats.get("not_found", 0) + stats.get("invalid", 0)
    return {
        "enriched": enriched,
        "pending": pending,
        "quarantined": run.quarantined,
        "batches": run.batches,
        "taken_over": run.taken_over,
        "held_by_another_claim": run.held,
        "accounts_matched": matched,
        "lookups": stats,
        "match_rate": round(matched / (enriched + pending), 4) if enriched + pending else 0.0,
        "firmographics_match_rate": round(stats.get("found", 0) / asked, 4) if asked else 0.0,
    }


def build_context(
    database_url: str, provider: str | None, rules_path: str | None, started: datetime
) -> EnrichContext:
    """The provider and the account index, once per run."""
    from sqlalchemy import select

    from leadflow import store
    from leadflow import tables as t
    from leadflow.enrich.rules import load_enrichment_rules

    rules, _ = load_enrichment_rules(rules_path)
    accounts = t.accounts
    with store.get_engine(database_url).connect() as conn:
        frame = store.read_frame(
            conn,
            select(
                accounts.c.id,
                accounts.c.name,
                accounts.c.domain,
                accounts.c.aliases,
                accounts.c.owner_rep_id,
            ),
        )
    return EnrichContext(
        provider=make_provider(provider or rules.provider),
        accounts=build_index(frame, load_lists().legal_suffixes),
        threshold=rules.match.fuzzy_threshold,
        min_name_length=rules.match.min_name_length,
        started=started,
    )
