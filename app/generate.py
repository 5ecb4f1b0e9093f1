"""Realistic synthetic sample data: B2B leads, engagement events, accounts, reps, firmographics.

Everything is drawn from a seeded generator, so ``--seed`` reproduces a data set exactly.
Leads carry a controlled share of real-world defects (see ``DEFECTS``) and, for older
leads, a known outcome drawn from a hidden model of conversion: senior titles, bigger
companies, demo requests, referrals and engaged leads convert more; free-mail, students and
job seekers less. That makes backtests and learned rules meaningful on sample data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from app import generate_reps
from leadflow.rules.fields import EVENT_TYPES

# Shares of lead rows with each defect (chosen to stay well under the 5% quarantine limit).
DEFECTS = {
    "duplicate": 0.03,  # the same person again: email case/space changed, some fields updated
    "invalid_email": 0.008,  # quarantined
    "no_identity": 0.004,  # no email at all: quarantined
    "bad_country": 0.01,  # blanked, kept in attributes._invalid
    "bad_phone": 0.01,  # blanked, kept in attributes._invalid
}

FIRST = [
    "James",
    "Mary",
    "John",
    "Patricia",
    "Robert",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Charles",
    "Karen",
    "Priya",
    "Arjun",
    "Wei",
    "Mei",
    "Hiroshi",
    "Yuki",
    "Lukas",
    "Anna",
    "Mateo",
    "Sofia",
    "Lars",
    "Ingrid",
    "Pierre",
    "Camille",
    "Giulia",
    "Marco",
    "Olga",
    "Dmitri",
    "Fatima",
    "Omar",
    "Chloe",
    "Liam",
    "Noah",
    "Emma",
    "Aisha",
    "Kwame",
    "Ana",
    "Diego",
    "Sven",
    "Freya",
    "Ravi",
    "Ananya",
    "Jin",
    "Min-jun",
    "Zoe",
    "Ethan",
]
LAST = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Patel",
    "Sharma",
    "Chen",
    "Wang",
    "Tanaka",
    "Sato",
    "Muller",
    "Schmidt",
    "Schneider",
    "Rossi",
    "Bianchi",
    "Dubois",
    "Moreau",
    "Ivanov",
    "Kowalski",
    "Nielsen",
    "Johansson",
    "O'Brien",
    "Murphy",
    "Kelly",
    "Nguyen",
    "Kim",
    "Park",
    "Singh",
    "Okafor",
    "Mensah",
    "Silva",
    "Santos",
    "Costa",
    "Fischer",
    "Weber",
    "MacDonald",
    "Van",
    "der",
    "Berg",
]
PREFIX = [
    "Nova",
    "Blue",
    "Quant",
    "Apex",
    "Bright",
    "Cloud",
    "Data",
    "Green",
    "Iron",
    "Lumen",
    "North",
    "Orbit",
    "Pixel",
    "Prime",
    "Rapid",
    "Silver",
    "Stellar",
    "Summit",
    "Terra",
    "Vertex",
    "Zen",
    "Arc",
    "Bold",
    "Cedar",
    "Delta",
    "Echo",
    "Falcon",
    "Granite",
    "Harbor",
    "Indigo",
    "Jade",
    "Kite",
    "Lunar",
    "Maple",
    "Nimbus",
    "Onyx",
    "Pioneer",
    "Quartz",
    "Radiant",
]
ROOT = [
    "tech",
    "labs",
    "works",
    "soft",
    "systems",
    "logic",
    "ware",
    "scale",
    "wave",
    "point",
    "bridge",
    "stack",
    "path",
    "forge",
    "line",
    "mind",
    "sphere",
    "core",
    "flow",
    "hub",
    "grid",
    "link",
    "nest",
    "sight",
    "spark",
    "stream",
    "trail",
    "vault",
    "verse",
    "yard",
]
DESCRIPTOR = {
    "Analytics": "Software",
    "Software": "Software",
    "Cloud": "Software",
    "AI": "Software",
    "Health": "Healthcare",
    "Bio": "Healthcare",
    "Pharma": "Healthcare",
    "Capital": "Financial Services",
    "Payments": "Financial Services",
    "Insurance": "Financial Services",
    "Logistics": "Transportation",
    "Motors": "Manufacturing",
    "Industries": "Manufacturing",
    "Energy": "Energy",
    "Foods": "Consumer Goods",
    "Retail": "Retail",
    "Media": "Media",
    "Security": "Software",
    "Consulting": "Professional Services",
    "Education": "Education",
}
LEGAL = (
    "Inc",
    "Inc.",
    "LLC",
    "Ltd",
    "GmbH",
    "Corp",
    "Co.",
    "",
    "",
    "",
    "Group",
    "S.A.",
    "BV",
    "plc",
)

# country: (weight, written forms, tld, phone formatter key, region)
COUNTRIES = {
    "US": (0.40, ("United States", "USA", "US", "U.S.", "United States of America"), "com"),
    "GB": (0.10, ("United Kingdom", "UK", "GB", "Great Britain", "England"), "co.uk"),
    "DE": (0.08, ("Germany", "DE", "Deutschland"), "de"),
    "FR": (0.05, ("France", "FR"), "fr"),
    "CA": (0.06, ("Canada", "CA"), "ca"),
    "AU": (0.04, ("Australia", "AU"), "com.au"),
    "IN": (0.06, ("India", "IN"), "in"),
    "NL": (0.03, ("Netherlands", "NL", "Holland"), "nl"),
    "ES": (0.03, ("Spain", "ES", "España"), "es"),
    "BR": (0.04, ("Brazil", "BR", "Brasil"), "com.br"),
    "JP": (0.03, ("Japan", "JP"), "jp"),
    "SG": (0.02, ("Singapore", "SG"), "sg"),
    "SE": (0.02, ("Sweden", "SE"), "se"),
    "CH": (0.02, ("Switzerland", "CH", "Schweiz"), "ch"),
    "IE": (0.02, ("Ireland", "IE"), "ie"),
}
BAD_COUNTRIES = ("Narnia", "Europe", "Earth", "123", "Atlantis", "XX")
BAD_PHONES = ("12345", "call me", "000", "+999 12", "phone", "1-800-FLOWERS-NOW-NOW")

FREE_MAIL = (
    "gmail.com",
    "yahoo.com",
    "hotmail.com",
    "outlook.com",
    "icloud.com",
    "gmx.de",
    "proton.me",
)
DISPOSABLE = ("mailinator.com", "10minutemail.com", "guerrillamail.com", "yopmail.com")
ROLE = ("info", "sales", "contact", "admin", "hello", "marketing")

# (title as people write it, seniority, department, weight)
TITLES = (
    ("CEO", "C-level", "executive", 2),
    ("Chief Executive Officer", "C-level", "executive", 1),
    ("CTO", "C-level", "engineering", 1.5),
    ("CFO", "C-level", "finance", 1),
    ("CMO", "C-level", "marketing", 1),
    ("COO", "C-level", "operations", 0.8),
    ("Chief Revenue Officer", "C-level", "sales", 0.7),
    ("Founder & CEO", "C-level", "executive", 1),
    ("VP of Sales", "VP", "sales", 2),
    ("VP Eng", "VP", "engineering", 1.5),
    ("Vice President, Marketing", "VP", "marketing", 1.5),
    ("SVP Operations", "VP", "operations", 1),
    ("VP Finance", "VP", "finance", 1),
    ("Director of Engineering", "Director", "engineering", 2),
    ("Sr. Director, Finance", "Director", "finance", 1),
    ("Head of IT", "Director", "it", 2),
    ("Marketing Director", "Director", "marketing", 2),
    ("Director, HR", "Director", "hr", 1),
    ("Head of Sales", "Director", "sales", 2),
    ("Marketing Manager", "Manager", "marketing", 5),
    ("Sr. Manager, Sales Ops", "Manager", "sales", 3),
    ("Engineering Manager", "Manager", "engineering", 4),
    ("IT Manager", "Manager", "it", 4),
    ("HR Manager", "Manager", "hr", 3),
    ("Finance Manager", "Manager", "finance", 3),
    ("Operations Manager", "Manager", "operations", 3),
    ("Software Engineer", "Individual contributor", "engineering", 8),
    ("Sr. Software Engineer", "Individual contributor", "engineering", 5),
    ("Account Executive", "Individual contributor", "sales", 6),
    ("Data Analyst", "Individual contributor", "engineering", 4),
    ("Sr. Accountant", "Individual contributor", "finance", 3),
    ("HR Generalist", "Individual contributor", "hr", 2),
    ("Marketing Specialist", "Individual contributor", "marketing", 5),
    ("SDR", "Individual contributor", "sales", 3),
    ("Systems Administrator", "Individual contributor", "it", 3),
    ("student", "Student", "other", 2),
    ("MBA Candidate", "Student", "other", 1),
    ("Intern", "Student", "other", 1),
)
SENIORITY_EFFECT = {
    "C-level": 1.3,
    "VP": 1.1,
    "Director": 0.8,
    "Manager": 0.35,
    "Individual contributor": 0.0,
    "Student": -2.0,
    "Unknown": -0.3,
}
INDUSTRY_EFFECT = {"Software": 0.5, "Financial Services": 0.4, "Healthcare": 0.3}
SOURCES = {
    "web_form": (0.30, 0.2),
    "paid_search": (0.15, -0.2),
    "organic": (0.15, 0.1),
    "webinar": (0.10, 0.4),
    "trade_show": (0.08, 0.4),
    "referral": (0.07, 1.0),
    "partner": (0.05, 0.6),
    "linkedin": (0.10, 0.1),
}
FORMS = {
    "demo_request": (0.12, 1.3),
    "free_trial": (0.10, 0.9),
    "contact_us": (0.15, 0.5),
    "ebook_download": (0.33, -0.2),
    "newsletter": (0.20, -0.5),
    "webinar_signup": (0.10, 0.2),
}
TIMELINES = {
    "0-3 months": (0.15, 0.8),
    "3-6 months": (0.2, 0.4),
    "6-12 months": (0.25, 0.0),
    "unknown": (0.4, -0.3),
}
PAGES = (
    "/pricing",
    "/product",
    "/product/integrations",
    "/blog/lead-scoring-guide",
    "/blog/data-quality",
    "/docs/getting-started",
    "/case-studies",
    "/careers",
    "/about",
    "/security",
)


@dataclass
class Companies:
    name: np.ndarray
    domain: np.ndarray
    industry: np.ndarray
    employees: np.ndarray
    revenue: np.ndarray
    country: np.ndarray


def _choice(rng: np.random.Generator, options: dict | tuple, size: int) -> np.ndarray:
    if isinstance(options, dict):
        keys = list(options)
        weights = np.array(
            [v[0] if isinstance(v, tuple) else v for v in options.values()], dtype=float
        )
    else:
        keys, weights = list(options), np.ones(len(options))
    return rng.choice(np.array(keys, dtype=object), size=size, p=weights / weights.sum())


def _companies(rng: np.random.Generator, count: int) -> Companies:
    combos = len(PREFIX) * len(ROOT) * len(DESCRIPTOR)
    picks = rng.choice(combos, size=min(count, combos), replace=False)
    prefix = np.array(PREFIX, dtype=object)[picks // (len(ROOT) * len(DESCRIPTOR))]
    root = np.array(ROOT, dtype=object)[(picks // len(DESCRIPTOR)) % len(ROOT)]
    descriptor = np.array(list(DESCRIPTOR), dtype=object)[picks % len(DESCRIPTOR)]
    n = len(picks)
    country = _choice(rng, COUNTRIES, n)
    tld = np.array([COUNTRIES[c][2] for c in country], dtype=object)
    base = np.char.lower((prefix + root).astype(str)).astype(object)
    domain = base + np.char.lower(descriptor.astype(str)).astype(object) + "." + tld
    industry = np.array([DESCRIPTOR[d] for d in descriptor], dtype=object)
    employees = np.clip(np.round(rng.lognormal(4.2, 1.6, n)), 2, 250_000).astype(int)
    revenue = np.round(employees * rng.lognormal(12.0, 0.5, n), -3)
    name = np.array(
        [f"{p}{r.capitalize()} {d}" for p, r, d in zip(prefix, root, descriptor, strict=True)],
        dtype=object,
    )
    return Companies(name, domain, industry, employees, revenue, country)


def _phone(rng: np.random.Generator, country: str) -> str:
    d = rng.integers
    if country in ("US", "CA"):
        area = rng.choice([212, 415, 617, 312, 512, 206, 303, 404, 646, 718, 416, 604, 305, 702])
        number = f"{area}{d(200, 999)}{d(1000, 9999)}"
        style = d(0, 3)
        if style == 0:
            return f"({number[:3]}) {number[3:6]}-{number[6:]}"
        if style == 1:
            return f"+1 {number[:3]}-{number[3:6]}-{number[6:]}"
        return f"{number[:3]}.{number[3:6]}.{number[6:]}"
    if country == "GB":
        return (
            f"020 7{d(100, 999)} {d(1000, 9999)}"
            if d(0, 2)
            else f"+44 20 7{d(100, 999)} {d(1000, 9999)}"
        )
    if country == "DE":
        return f"030 {d(1000000, 9999999)}" if d(0, 2) else f"+49 30 {d(1000000, 9999999)}"
    if country == "FR":
        return f"01 {d(10, 99)} {d(10, 99)} {d(10, 99)} {d(10, 99)}"
    if country == "IN":
        return f"+91 98{d(10000000, 99999999)}"
    if country == "AU":
        return f"+61 2 {d(8000, 9999)} {d(1000, 9999)}"
    if country == "BR":
        return f"+55 11 9{d(1000, 9999)}-{d(1000, 9999)}"
    if country == "JP":
        return f"03-{d(1000, 9999)}-{d(1000, 9999)}"
    if country == "NL":
        return f"+31 20 {d(100, 999)} {d(1000, 9999)}"
    if country == "ES":
        return f"+34 91 {d(100, 999)} {d(10, 99)} {d(10, 99)}"
    return (
        f"+65 6{d(100, 999)} {d(1000, 9999)}"
        if country == "SG"
        else f"+46 8 {d(100, 999)} {d(100, 999)}"
    )


def generate(
    out: Path,
    *,
    leads: int,
    seed: int = 7,
    now: datetime | None = None,
    events_per_lead: float = 5.0,
) -> dict[str, Path]:
    """Write leads.csv, engagement_events.csv, accounts.csv, reps.csv, firmographics.csv.

    The steps draw from one generator in a fixed order, so reordering them changes the data.
    """
    now = now or datetime.now(UTC).replace(microsecond=0)
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    companies = _companies(rng, max(20, leads // 20))
    company = _pick_companies(rng, len(companies.name), leads)
    first, last, email, mail_kind = _draw_identities(rng, companies, company, leads)
    title, seniority = _draw_titles(rng, leads)
    contact = _draw_contact(rng, companies, company, mail_kind, leads)
    intent = _draw_intent(rng, leads)
    created, created_text, age_days = _draw_created(rng, now, leads)
    interest, outcome = _draw_outcome(
        rng, companies, company, seniority, intent, mail_kind, age_days
    )
    frame = _lead_frame(
        rng,
        {
            "email": email,
            "first_name": first,
            "last_name": last,
            "company": contact["company"],
            "title": title,
            "phone": contact["phone"],
            "country": contact["country"],
            "website": contact["website"],
            "source": intent["source"],
            "created_at": created_text,
            "lead_form": intent["lead_form"],
            "timeline": intent["timeline"],
            "budget": intent["budget"],
        },
        outcome,
    )
    # Engagement comes before the defects: it is keyed by the clean email.
    events = _events(
        rng, frame["email"].to_numpy(dtype=object), created, interest, now, events_per_lead
    )
    frame = _add_defects(rng, frame, now, seed)
    reps, accounts, firmographics = _reference_data(rng, companies, company, now, seed)
    return _write_files(
        out,
        {
            "leads": frame,
            "events": events,
            "accounts": accounts,
            "reps": reps,
            "firmographics": firmographics,
        },
    )


def _pick_companies(rng: np.random.Generator, n_companies: int, leads: int) -> np.ndarray:
    """Each lead's company index: a few big companies bring many leads (a Zipf-like tail)."""
    weights = 1.0 / np.arange(1, n_companies + 1) ** 0.7
    return rng.choice(n_companies, size=leads, p=weights / weights.sum())


def _draw_identities(
    rng: np.random.Generator, companies: Companies, company: np.ndarray, leads: int
) -> tuple[np.ndarray, np.ndarray, pd.Series, np.ndarray]:
    """First and last names, the email built from them, and the kind of mailbox it is."""
    first = rng.choice(np.array(FIRST, dtype=object), size=leads)
    last = rng.choice(np.array(LAST, dtype=object), size=leads)
    person = pd.Series(rng.integers(0, 10**6, size=leads)).astype(str).to_numpy(dtype=object)
    local_first = pd.Series(first).str.lower().str.replace(r"[^a-z]", "", regex=True)
    local_last = pd.Series(last).str.lower().str.replace(r"[^a-z]", "", regex=True)
    style = rng.integers(0, 3, size=leads)
    local = np.where(
        style == 0,
        local_first + "." + local_last,
        np.where(style == 1, local_first.str[0] + local_last, local_first + local_last),
    )
    local = pd.Series(local) + np.where(rng.random(leads) < 0.5, "", person)
    mail_kind = rng.choice(
        np.array(["business", "free", "role", "disposable"]), size=leads, p=[0.81, 0.15, 0.03, 0.01]
    )
    domain = companies.domain[company].copy()
    subdomain = rng.random(leads) < 0.03
    domain = np.where(subdomain, "mail." + domain, domain)
    domain = np.where(
        mail_kind == "free", rng.choice(np.array(FREE_MAIL, dtype=object), size=leads), domain
    )
    domain = np.where(
        mail_kind == "disposable",
        rng.choice(np.array(DISPOSABLE, dtype=object), size=leads),
        domain,
    )
    local = np.where(
        mail_kind == "role", rng.choice(np.array(ROLE, dtype=object), size=leads) + person, local
    )
    email = pd.Series(local, dtype=object) + "@" + pd.Series(domain, dtype=object)
    return first, last, email, mail_kind


def _draw_titles(rng: np.random.Generator, leads: int) -> tuple[np.ndarray, np.ndarray]:
    """Job titles and their seniority; some missing (seniority Unknown), some in capitals."""
    title_index = rng.choice(
        len(TITLES), size=leads, p=np.array([t[3] for t in TITLES]) / sum(t[3] for t in TITLES)
    )
    title = np.array([t[0] for t in TITLES], dtype=object)[title_index]
    seniority = np.array([t[1] for t in TITLES], dtype=object)[title_index]
    no_title = rng.random(leads) < 0.07
    title = np.where(no_title, None, title)
    seniority = np.where(no_title, "Unknown", seniority)
    shout = rng.random(leads) < 0.05
    title = np.where(shout & ~no_title, pd.Series(title).str.upper(), title)
    return title, seniority


def _draw_contact(
    rng: np.random.Generator,
    companies: Companies,
    company: np.ndarray,
    mail_kind: np.ndarray,
    leads: int,
) -> dict[str, np.ndarray]:
    """Country as written, phone, company name as typed, website: the columns ``country``,
    ``phone``, ``company`` and ``website``."""
    country_code = companies.country[company]
    written = np.array(
        [COUNTRIES[c][1][rng.integers(0, len(COUNTRIES[c][1]))] for c in country_code], dtype=object
    )
    phone = np.array([_phone(rng, c) for c in country_code], dtype=object)
    phone = np.where(rng.random(leads) < 0.25, None, phone)
    company_name = companies.name[company]
    legal = rng.choice(np.array(LEGAL, dtype=object), size=leads)
    company_written = pd.Series(company_name) + np.where(legal == "", "", " " + legal)
    company_written = np.where(
        rng.random(leads) < 0.05, company_written.str.upper(), company_written
    )
    company_written = np.where(
        (mail_kind == "free") & (rng.random(leads) < 0.3), None, company_written
    )
    website = np.where(
        rng.random(leads) < 0.4, "https://www." + companies.domain[company] + "/", None
    )
    return {"country": written, "phone": phone, "company": company_written, "website": website}


def _draw_intent(rng: np.random.Generator, leads: int) -> dict[str, np.ndarray]:
    """How the lead came in and what it asked for: ``source``, ``lead_form``, ``timeline``
    and ``budget`` (half of them blank)."""
    source = _choice(rng, SOURCES, leads)
    form = _choice(rng, FORMS, leads)
    timeline = _choice(rng, TIMELINES, leads)
    budget = np.where(
        rng.random(leads) < 0.5,
        None,
        (np.round(rng.lognormal(10, 1.2, leads), -3)).astype(int).astype(str),
    )
    return {"source": source, "lead_form": form, "timeline": timeline, "budget": budget}


def _draw_created(
    rng: np.random.Generator, now: datetime, leads: int
) -> tuple[pd.DatetimeIndex, np.ndarray, np.ndarray]:
    """When each lead was created (up to a year back), that time as written (a few without a
    zone), and the lead's age in days."""
    age_days = rng.uniform(0, 365, size=leads)
    created = pd.Timestamp(now) - pd.to_timedelta(age_days, unit="D")
    created = created.floor("s")
    created_text = created.strftime("%Y-%m-%dT%H:%M:%SZ").to_numpy(dtype=object)
    naive = rng.random(leads) < 0.05
    created_text = np.where(
        naive, created.strftime("%Y-%m-%d %H:%M:%S").to_numpy(dtype=object), created_text
    )
    return created, created_text, age_days


def _draw_outcome(
    rng: np.random.Generator,
    companies: Companies,
    company: np.ndarray,
    seniority: np.ndarray,
    intent: dict[str, np.ndarray],
    mail_kind: np.ndarray,
    age_days: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The hidden conversion model: each lead's latent interest, and won/lost for leads older
    than 120 days (None for the rest)."""
    interest = rng.normal(0, 1, len(age_days))
    logit = (
        -3.2
        + np.vectorize(SENIORITY_EFFECT.get)(seniority)
        + 0.35 * np.log10(companies.employees[company])
        + np.vectorize(lambda i: INDUSTRY_EFFECT.get(i, 0.0))(companies.industry[company])
        + np.vectorize(lambda s: SOURCES[s][1])(intent["source"])
        + np.vectorize(lambda f: FORMS[f][1])(intent["lead_form"])
        + np.vectorize(lambda t: TIMELINES[t][1])(intent["timeline"])
        + np.select(
            [mail_kind == "free", mail_kind == "role", mail_kind == "disposable"],
            [-1.0, -0.7, -2.5],
            0.0,
        )
        + 0.9 * interest
    )
    converts = rng.random(len(age_days)) < 1 / (1 + np.exp(-logit))
    known = age_days > 120
    outcome = np.where(known, np.where(converts, "won", "lost"), None)
    return interest, outcome


def _lead_frame(
    rng: np.random.Generator, columns: dict[str, object], outcome: np.ndarray
) -> pd.DataFrame:
    """The clean leads table: the drawn columns, a UTM campaign, the outcome; a few first
    names in capitals."""
    leads = len(outcome)
    frame = pd.DataFrame(
        {
            **columns,
            "utm_campaign": rng.choice(
                np.array(
                    ["spring_promo", "webinar_q3", "brand", "retargeting", None], dtype=object
                ),
                size=leads,
            ),
            "outcome": outcome,
        }
    )
    frame["first_name"] = np.where(
        rng.random(leads) < 0.04, frame["first_name"].str.upper(), frame["first_name"]
    )
    return frame


def _defect_mask(rng: np.random.Generator, defect: str, size: int) -> np.ndarray:
    """Rows that get ``defect``, drawn at its share in ``DEFECTS``."""
    return rng.random(size) < DEFECTS[defect]


def _add_defects(
    rng: np.random.Generator, frame: pd.DataFrame, now: datetime, seed: int
) -> pd.DataFrame:
    """Break fields in place, append duplicate people, and shuffle the rows."""
    invalid, missing = _break_fields(rng, frame)
    dupes = _duplicates(rng, frame, ~invalid & ~missing, now)
    frame = pd.concat([frame, dupes], ignore_index=True)
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _break_fields(rng: np.random.Generator, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Bad countries, bad phones, invalid and missing emails, written into ``frame``; returns
    the invalid-email and missing-email masks."""
    leads = len(frame)
    bad_country = _defect_mask(rng, "bad_country", leads)
    frame.loc[bad_country, "country"] = rng.choice(
        np.array(BAD_COUNTRIES, dtype=object), size=int(bad_country.sum())
    )
    bad_phone = _defect_mask(rng, "bad_phone", leads)
    frame.loc[bad_phone, "phone"] = rng.choice(
        np.array(BAD_PHONES, dtype=object), size=int(bad_phone.sum())
    )
    invalid = _defect_mask(rng, "invalid_email", leads)
    originals = frame.loc[invalid, "email"]
    how = rng.integers(0, 4, size=len(originals))
    frame.loc[invalid, "email"] = [
        (e.replace("@", "@@"), e.replace("@", " at "), e.split("@")[0] + "@", e.replace("@", "."))[
            h
        ]
        for e, h in zip(originals, how, strict=True)
    ]
    missing = _defect_mask(rng, "no_identity", leads)
    frame.loc[missing, "email"] = None
    return invalid, missing


def _duplicates(
    rng: np.random.Generator, frame: pd.DataFrame, eligible: np.ndarray, now: datetime
) -> pd.DataFrame:
    """The same people again (among ``eligible`` rows): email case and spacing changed, some
    fields dropped, created up to 30 days later."""
    dupes = frame[_defect_mask(rng, "duplicate", len(frame)) & eligible].copy()
    dupes["email"] = np.where(
        rng.random(len(dupes)) < 0.5,
        "  " + dupes["email"].str.upper(),
        dupes["email"].str.title() + " ",
    )
    dupes["title"] = np.where(rng.random(len(dupes)) < 0.3, None, dupes["title"])
    dupes["phone"] = np.where(rng.random(len(dupes)) < 0.5, None, dupes["phone"])
    later = pd.to_datetime(dupes["created_at"], format="mixed", utc=True) + pd.to_timedelta(
        rng.uniform(1, 30, len(dupes)), unit="D"
    )
    dupes["created_at"] = later.clip(upper=pd.Timestamp(now)).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return dupes


def _reference_data(
    rng: np.random.Generator, companies: Companies, company: np.ndarray, now: datetime, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Reps (those of rules/routing.yaml), accounts owned by them, and firmographics for most
    companies."""
    reps = generate_reps.reps_frame(rng, now)
    accounts = _accounts(rng, companies, company, reps)
    firmographics = pd.DataFrame(
        {
            "domain": companies.domain,
            "industry": companies.industry,
            "employees": companies.employees,
            "revenue": companies.revenue,
            "country": companies.country,
        }
    ).sample(frac=0.85, random_state=seed)
    return reps, accounts, firmographics


_FILE_NAMES = {
    "leads": "leads.csv",
    "events": "engagement_events.csv",
    "accounts": "accounts.csv",
    "reps": "reps.csv",
    "firmographics": "firmographics.csv",
}


def _write_files(out: Path, tables: dict[str, pd.DataFrame]) -> dict[str, Path]:
    """Write each table to its CSV under ``out``; returns the paths by table name."""
    paths = {name: out / _FILE_NAMES[name] for name in tables}
    for name, table in tables.items():
        table.to_csv(paths[name], index=False)
    return paths


def _events(
    rng: np.random.Generator,
    email: np.ndarray,
    created: pd.DatetimeIndex,
    interest: np.ndarray,
    now: datetime,
    per_lead: float,
) -> pd.DataFrame:
    rate = per_lead * np.exp(0.6 * interest) / np.exp(0.18)  # mean stays near per_lead
    counts = rng.poisson(rate)
    lead = np.repeat(np.arange(len(email)), counts)
    total = len(lead)
    hot = interest[lead]
    base = np.array([0.45, 0.2, 0.1, 0.05, 0.04, 0.03, 0.01, 0.02, 0.01])
    # Engaged leads book meetings and reply; cold ones unsubscribe and bounce.
    tilt = np.outer(
        np.clip(hot, -2, 2), np.array([0, -0.05, 0.02, 0.02, 0.01, 0.02, 0.01, -0.02, -0.01])
    )
    probs = np.clip(base + tilt, 0.001, None)
    probs = probs / probs.sum(axis=1, keepdims=True)
    cumulative = probs.cumsum(axis=1)
    kind = (rng.random(total)[:, None] > cumulative).sum(axis=1)
    kind = np.minimum(kind, len(EVENT_TYPES) - 1)
    event_type = np.array(EVENT_TYPES, dtype=object)[kind]
    page_probs = np.where(
        hot[:, None] > 0.5,
        np.array([0.3, 0.2, 0.1, 0.08, 0.06, 0.08, 0.1, 0.02, 0.03, 0.03]),
        np.array([0.06, 0.14, 0.06, 0.2, 0.14, 0.06, 0.06, 0.18, 0.06, 0.04]),
    )
    page = (rng.random(total)[:, None] > page_probs.cumsum(axis=1)).sum(axis=1)
    page = np.minimum(page, len(PAGES) - 1)
    url = np.where(
        np.isin(event_type, ["page_view", "email_click"]), np.array(PAGES, dtype=object)[page], None
    )
    created_naive = created.tz_localize(None).to_numpy()[lead]
    span = (
        np.datetime64(pd.Timestamp(now).tz_localize(None), "s")
        - created_naive.astype("datetime64[s]")
    ).astype(np.int64)
    offset = (rng.random(total) * np.maximum(span, 1)).astype(np.int64)
    occurred = pd.to_datetime(
        created_naive.astype("datetime64[s]") + offset.astype("timedelta64[s]")
    ).tz_localize("UTC")
    return pd.DataFrame(
        {
            "email": email[lead],
            "event_type": event_type,
            "occurred_at": occurred.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "url": url,
        }
    ).dropna(subset=["email"])


def _accounts(
    rng: np.random.Generator, companies: Companies, company: np.ndarray, reps: pd.DataFrame
) -> pd.DataFrame:
    popular = pd.Series(company).value_counts()
    chosen = popular.index[: max(5, len(popular) // 4)].to_numpy()
    chosen = chosen[rng.random(len(chosen)) < 0.8]
    names = companies.name[chosen]
    variant = rng.random(len(chosen))
    names = np.where(
        variant < 0.3,
        pd.Series(names) + " Inc.",
        np.where(variant < 0.4, pd.Series(names).str.upper(), names),
    )
    domain = companies.domain[chosen]
    alias = np.where(
        rng.random(len(chosen)) < 0.1,
        pd.Series(domain).str.replace(".", "-group.", n=1, regex=False),
        None,
    )
    return pd.DataFrame(
        {
            "name": names,
            "domain": domain,
            "aliases": alias,
            "owner_email": rng.choice(reps["email"].to_numpy(), size=len(chosen)),
            "industry": companies.industry[chosen],
            "employees": companies.employees[chosen],
            "revenue": companies.revenue[chosen],
            "country": companies.country[chosen],
        }
    )
