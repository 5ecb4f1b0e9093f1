"""Normalising captured values, vectorised over a batch (pure functions, no I/O).

Each normaliser takes a Series of raw strings (None for missing) and returns the normalised
Series plus a boolean mask of values that were present but could not be normalised.
Expensive parsers (phone numbers, countries, domains, IDNA) run once per distinct value.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from leadflow.capture import phones
from leadflow.capture.values import country_code, host_of
from leadflow.capture.values import idna_host as _idna

MAX_FIELD_CHARS = 1000  # a longer value in a lead field is a broken record, not a name

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"\s+")
_EMAIL_LOCAL = r"[^\s@\"(),:;<>\[\]\\]+"
_DOMAIN = r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+(?:[a-z]{2,63}|xn--[a-z0-9-]{2,59})"
EMAIL_PATTERN = rf"^{_EMAIL_LOCAL}@{_DOMAIN}$"
E164_PATTERN = r"^\+[1-9][0-9]{6,14}$"
ISO2_PATTERN = r"^[A-Z]{2}$"

Result = tuple[pd.Series, pd.Series]


def _present(values: pd.Series) -> pd.Series:
    return values.notna()


def _map_distinct(values: pd.Series, function: Callable[[str], str | None]) -> pd.Series:
    """Apply ``function`` once per distinct non-null value."""
    present = values.dropna()
    if present.empty:
        return pd.Series([None] * len(values), index=values.index, dtype=object)
    lookup = {value: function(value) for value in present.unique()}
    return values.map(lookup, na_action="ignore").astype(object).where(values.notna(), None)


def arrow(values: pd.Series) -> pa.Array | pa.ChunkedArray:
    """The values as an Arrow string array (no copy when they are Arrow strings already)."""
    if values.dtype != "str":
        values = values.astype("str")
    return pa.array(values)


def from_arrow(array: pa.Array | pa.ChunkedArray, index: pd.Index) -> pd.Series:
    return pd.Series(array, index=index, dtype="str")


def mask(array: pa.Array | pa.ChunkedArray, index: pd.Index) -> pd.Series:
    """An Arrow boolean result as a plain bool Series (null counts as False)."""
    filled = pc.fill_null(array, False)
    return pd.Series(filled.to_numpy(zero_copy_only=False), index=index, dtype=bool)


# pandas runs patterns with \s, \d or \w through Python's re one value at a time (their
# meaning differs in RE2), so hot paths spell classes out and call Arrow directly.
_WHITE = r"[\t\n\v\f\r \p{Z}\x00-\x1f\x7f]"


def clean_text(values: pd.Series) -> pd.Series:
    """Strip, drop control characters, collapse runs of white space; empty becomes None.

    Runs on Arrow strings: finding the values that need work is cheap, rewriting is not,
    so only those are rewritten.
    """
    text = arrow(values)
    needs = pc.match_substring_regex(text, f"^{_WHITE}|{_WHITE}$|[\x00-\x1f\x7f]|{_WHITE}{{2}}")
    if pc.any(needs).as_py():
        fixed = pc.utf8_trim(pc.replace_substring_regex(text, f"{_WHITE}+", " "), " ")
        text = pc.if_else(needs, fixed, text)
    text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    return from_arrow(text, values.index)


def too_long(values: pd.Series) -> pd.Series:
    return values.notna() & (values.astype("str").str.len() > MAX_FIELD_CHARS)


def normalise_text(values: pd.Series) -> Result:
    text = clean_text(values)
    invalid = too_long(text)
    return text.where(~invalid, None), invalid


def normalise_name(values: pd.Series) -> Result:
    """Names keep their case unless written all upper or all lower (then Title Case)."""
    text, invalid = normalise_text(values)
    as_str = text.astype("str")
    shouty = text.notna() & ((as_str == as_str.str.upper()) | (as_str == as_str.str.lower()))
    titled = as_str.str.title()
    return text.where(~shouty, titled).astype(object).where(text.notna(), None), invalid


@lru_cache(maxsize=65536)
def _email(raw: str) -> str | None:
    value = raw.strip().strip("<>").strip()
    if value.lower().startswith("mailto:"):
        value = value[7:]
    value = value.strip().lower()
    if value.count("@") != 1:
        return value or None
    local, domain = value.split("@")
    domain = domain.rstrip(".")
    if not domain.isascii():
        domain = _idna(domain) or domain
    return f"{local}@{domain}"


def normalise_email(values: pd.Series) -> Result:
    """Trim, lower-case, IDNA-encode the domain. Invalid addresses are flagged by the gate."""
    text = clean_text(values)
    simple = text.str.lower().str.replace(r"^<|>$|^mailto:", "", regex=True).str.strip()
    # Only addresses with non-ASCII characters need the per-value IDNA path.
    special = simple.notna() & ~simple.str.isascii().fillna(True).astype(bool)
    out = simple.astype(object).where(simple.notna(), None)
    if special.any():
        out[special] = _map_distinct(text[special], _email)
    return out, pd.Series(False, index=values.index)


def normalise_phone(
    values: pd.Series, regions: pd.Series, default_region: str | None = None
) -> Result:
    """E.164 (libphonenumber's rules), read in the lead's country when it has no +prefix."""
    text = clean_text(values)
    present = text.notna()
    if not present.any():
        return text, present
    region = regions.where(regions.notna(), default_region) if default_region else regions
    out = phones.to_e164(text, region)
    return out, present & out.isna()


# Names people write that are not in ISO 3166 (or are, under another spelling).


def normalise_country(values: pd.Series) -> Result:
    text = clean_text(values)
    codes = _map_distinct(text, country_code)
    return codes, text.notna() & codes.isna()


@lru_cache(maxsize=1)
def _tld_extract():
    import tldextract

    # Offline: the suffix list bundled with the package, never fetched.
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


@lru_cache(maxsize=1 << 18)
def registered_domain(host: str) -> str | None:
    """``shop.acme.co.uk`` -> ``acme.co.uk`` (public-suffix aware, offline list)."""
    parts = _tld_extract()(host)
    if not parts.domain or not parts.suffix:
        return None
    return f"{parts.domain}.{parts.suffix}"


def normalise_website(values: pd.Series) -> Result:
    text = clean_text(values)
    hosts = _map_distinct(text, host_of)
    return hosts, text.notna() & hosts.isna()


def normalise_timestamp(
    values: pd.Series, *, now: datetime, dayfirst: bool = False, timezone: str = "UTC"
) -> Result:
    """Parse to UTC. Naive times are read in ``timezone``; epoch numbers in s or ms.

    A time more than a day in the future is treated as invalid.
    """
    text = clean_text(values.astype(object).map(str, na_action="ignore"))
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us, UTC]")
    present = text.notna()
    if not present.any():
        return out, present
    numeric = present & mask(
        pc.match_substring_regex(arrow(text), r"^[0-9]{9,13}(?:\.[0-9]+)?$"), text.index
    )
    if numeric.any():
        number = pd.to_numeric(text[numeric])
        unit_ms = number > 1e11
        seconds = number.where(~unit_ms, number / 1000.0)
        out[numeric] = pd.to_datetime(seconds, unit="s", utc=True)
    rest = present & ~numeric
    if rest.any():
        parsed = _parse_times(text[rest], dayfirst=dayfirst, timezone=timezone)
        out[rest] = parsed
    limit = pd.Timestamp(now) + pd.Timedelta(days=1)
    invalid = present & (out.isna() | (out > limit))
    return out.where(~invalid), invalid


def _parse_times(text: pd.Series, *, dayfirst: bool, timezone: str) -> pd.Series:
    out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[us, UTC]")
    zoned = mask(
        pc.match_substring_regex(arrow(text), r"(?:Z|[+-][0-9]{2}:?[0-9]{2})$"), text.index
    )
    for has_zone in (True, False):
        part = text[zoned == has_zone]
        if part.empty:
            continue
        # ISO 8601 first (fast, vectorised); anything else one by one.
        parsed = pd.to_datetime(part, format="ISO8601", errors="coerce", utc=True)
        missing = parsed.isna()
        if missing.any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                parsed[missing] = pd.to_datetime(
                    part[missing], format="mixed", errors="coerce", dayfirst=dayfirst, utc=True
                )
        if not has_zone and timezone != "UTC":
            parsed = (
                parsed.dt.tz_localize(None)
                .dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
                .dt.tz_convert("UTC")
            )
        out[part.index] = parsed
    return out
