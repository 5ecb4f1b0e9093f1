"""Phone numbers at batch speed, decided by libphonenumber's own metadata.

``phonenumbers.parse`` costs 20-60 µs a number, too slow for millions of leads. For the
shapes nearly every real number has (digits and separators, with or without ``+``), these
functions follow the same steps as libphonenumber (country code, national prefix, possible
lengths, number-type patterns) from its metadata, compiled once per region. Anything else
goes to ``phonenumbers`` itself. A test checks both paths agree on thousands of numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, PhoneMetadata

_PLAIN = re.compile(r"^\s*\+?[\d\s\-./()]+$")
_NOT_DIGIT = re.compile(r"\D")
SLOW = object()  # marker: this one needs the full parser

# ValidationResult values used by libphonenumber's length test.
POSSIBLE, LOCAL_ONLY, TOO_SHORT, INVALID_LENGTH, TOO_LONG = range(5)


@dataclass(frozen=True)
class _Desc:
    pattern: re.Pattern[str] | None
    lengths: tuple[int, ...]
    local: tuple[int, ...]

    def matches(self, number: str) -> bool:
        if self.pattern is None:
            return False
        if self.lengths and len(number) not in self.lengths:
            return False
        return self.pattern.fullmatch(number) is not None


@dataclass(frozen=True)
class _Region:
    code: str
    country_code: int
    general: _Desc
    types: tuple[_Desc, ...]
    national_prefix: re.Pattern[str] | None
    has_transform: bool
    international_prefix: re.Pattern[str] | None
    leading_digits: re.Pattern[str] | None


def _desc(desc: object, general: object | None = None) -> _Desc:
    if desc is None:
        return _Desc(None, (), ())
    pattern = getattr(desc, "national_number_pattern", None)
    lengths = tuple(getattr(desc, "possible_length", ()) or ())
    if not lengths and general is not None:
        lengths = tuple(getattr(general, "possible_length", ()) or ())
    return _Desc(
        re.compile(pattern) if pattern else None,
        lengths,
        tuple(getattr(desc, "possible_length_local_only", ()) or ()),
    )


_TYPE_FIELDS = (
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
    "fixed_line",
    "mobile",
)


@cache
def _region(code: str) -> _Region | None:
    metadata = PhoneMetadata.metadata_for_region(code, None)
    if metadata is None:
        return None
    return _from_metadata(code, metadata)


@cache
def _main_region(country_code: int) -> _Region | None:
    regions = COUNTRY_CODE_TO_REGION_CODE.get(country_code)
    if not regions:
        return None
    main = regions[0]
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(country_code, main)
    return None if metadata is None else _from_metadata(main, metadata)


def _from_metadata(code: str, metadata: object) -> _Region:
    general = metadata.general_desc
    prefix = metadata.national_prefix_for_parsing
    idd = metadata.international_prefix
    leading = getattr(metadata, "leading_digits", None)
    return _Region(
        code=code,
        country_code=metadata.country_code,
        general=_desc(general),
        types=tuple(_desc(getattr(metadata, name, None), general) for name in _TYPE_FIELDS),
        national_prefix=re.compile(prefix) if prefix else None,
        has_transform=bool(metadata.national_prefix_transform_rule),
        international_prefix=re.compile(idd) if idd else None,
        leading_digits=re.compile(leading) if leading else None,
    )


def _test_length(number: str, region: _Region) -> int:
    lengths, local = region.general.lengths, region.general.local
    size = len(number)
    if size in local:
        return LOCAL_ONLY
    if not lengths:
        return INVALID_LENGTH
    if lengths[0] == size:
        return POSSIBLE
    if lengths[0] > size:
        return TOO_SHORT
    if lengths[-1] < size:
        return TOO_LONG
    return POSSIBLE if size in lengths[1:] else INVALID_LENGTH


def _country_code_of(digits: str) -> int | None:
    if not digits or digits[0] == "0":
        return None
    for size in (1, 2, 3):
        if len(digits) >= size and int(digits[:size]) in COUNTRY_CODE_TO_REGION_CODE:
            return int(digits[:size])
    return None


def _lean_e164(digits: str, plus: bool, region_code: str | None) -> object:
    """E.164 for a digits-only number, or None if not a possible number, or SLOW."""
    if len(digits) < 5:
        return SLOW
    if plus:
        country_code = _country_code_of(digits)
        if country_code is None:
            return SLOW
        national = digits[len(str(country_code)) :]
        region = _main_region(country_code)
    else:
        region = _region(region_code) if region_code else None
        if region is None:
            return SLOW
        if region.international_prefix and region.international_prefix.match(digits):
            return SLOW
        if digits.startswith(str(region.country_code)):
            return SLOW  # libphonenumber may read these digits as the country code
        country_code = region.country_code
        national = digits
    if region is None:
        return SLOW
    if region.national_prefix is not None:
        match = region.national_prefix.match(national)
        if match:
            groups = match.groups()
            if region.has_transform and groups and groups[-1] is not None:
                return SLOW  # a carrier-code transform rewrites the number
            stripped = national[match.end() :]
            viable = region.general.pattern is not None and region.general.pattern.fullmatch(
                national
            )
            stripped_ok = region.general.pattern is not None and region.general.pattern.fullmatch(
                stripped
            )
            if not (viable and not stripped_ok) and _test_length(stripped, region) not in (
                TOO_SHORT,
                LOCAL_ONLY,
                INVALID_LENGTH,
            ):
                national = stripped
    if not 2 <= len(national) <= 17:
        return None
    main = _main_region(country_code)
    # A number only dialable locally (US 555-0199) has no E.164 form: it is invalid.
    if main is None or _test_length(national, main) != POSSIBLE:
        return None
    return f"+{country_code}{national}"


def _slow_e164(raw: str, region_code: str | None) -> str | None:
    try:
        number = phonenumbers.parse(raw, region_code)
    except phonenumbers.NumberParseException:
        return None
    reason = phonenumbers.is_possible_number_with_reason(number)
    if reason != phonenumbers.ValidationResult.IS_POSSIBLE:
        return None  # local-only numbers included: they have no E.164 form
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def e164(raw: str, region_code: str | None) -> str | None:
    """One number to E.164 (None if it is not a possible phone number)."""
    if _PLAIN.match(raw) and "(0)" not in raw:
        digits = _NOT_DIGIT.sub("", raw)
        result = _lean_e164(digits, raw.lstrip().startswith("+"), region_code)
        if result is not SLOW:
            return result  # type: ignore[return-value]
    return _slow_e164(raw, region_code)


def to_e164(raw: pd.Series, regions: pd.Series) -> pd.Series:
    """E.164 for each value, read in the row's region when it has no ``+`` (None if impossible)."""
    out = pd.Series([None] * len(raw), index=raw.index, dtype=object)
    present = raw.notna()
    if not present.any():
        return out
    text = raw[present].astype("str")
    # Shape and digits for every value at once (Arrow); the per-value work is then small.
    values = pa.array(text)
    plain = pc.and_(
        pc.match_substring_regex(values, r"^[ ]*\+?[0-9 \t\-./()]+$"),
        pc.invert(pc.match_substring(values, "(0)")),
    )
    digits = pc.replace_substring_regex(values, "[^0-9]", "")
    plus = pc.starts_with(pc.utf8_ltrim_whitespace(values), "+")
    region = regions[present].astype(object).where(regions[present].notna(), None)
    keys = pd.DataFrame(
        {
            "raw": text.to_numpy(dtype=object),
            "digits": digits.to_numpy(zero_copy_only=False),
            "plain": plain.to_numpy(zero_copy_only=False),
            "plus": plus.to_numpy(zero_copy_only=False),
            "region": region.to_numpy(dtype=object),
        }
    )
    distinct = keys.drop_duplicates(["raw", "region"])
    lookup = {}
    for value, number, is_plain, has_plus, region_code in distinct.itertuples(
        index=False, name=None
    ):
        code = region_code if isinstance(region_code, str) else None
        result: object = SLOW
        if is_plain:
            result = _lean_e164(number, has_plus, code)
        lookup[(value, region_code)] = _slow_e164(value, code) if result is SLOW else result
    result = np.full(len(raw), None, dtype=object)
    result[present.to_numpy()] = [
        lookup[key] for key in zip(keys["raw"].tolist(), keys["region"].tolist(), strict=True)
    ]
    return pd.Series(result, index=raw.index, dtype=object)


# --------------------------------------------------------------------------- validity


def validity(numbers: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Per E.164 number: valid (bool, False when missing) and its region (ISO-2 or None).

    Decided per calling code with Arrow regular expressions over all its numbers at once,
    following libphonenumber's steps: pick the region (leading digits, or the first region
    whose patterns accept the number), then check the number against that region's
    general and per-type patterns and lengths.
    """
    valid = np.zeros(len(numbers), dtype=bool)
    region = np.full(len(numbers), None, dtype=object)
    present = numbers.notna().to_numpy()
    if not present.any():
        return pd.Series(valid, index=numbers.index), pd.Series(
            region, index=numbers.index, dtype=object
        )
    values = numbers[present].astype("str")
    digits = values.str.slice(1)
    positions = np.flatnonzero(present)
    country = np.full(len(values), -1, dtype=np.int64)
    for size in (3, 2, 1):  # calling codes are prefix-free
        prefix = digits.str.slice(0, size)
        codes = pd.to_numeric(prefix, errors="coerce").to_numpy()
        known = (
            np.isin(codes, list(COUNTRY_CODE_TO_REGION_CODE))
            & (prefix.str.len() == size).to_numpy()
        )
        country = np.where(
            (country < 0) & known & ~prefix.str.startswith("0").to_numpy(), codes, country
        )
    for code in np.unique(country[country > 0]):
        rows = np.flatnonzero(country == code)
        national = pa.array(digits.iloc[rows].str.slice(len(str(int(code)))))
        chosen = _choose_regions(int(code), national)
        for region_code, members in chosen.items():
            subset = pc.take(national, pa.array(members))
            ok = _valid_vector(subset, _region(region_code) if region_code else None)
            targets = positions[rows[members]]
            valid[targets] = ok
            region[targets] = region_code
    return pd.Series(valid, index=numbers.index), pd.Series(
        region, index=numbers.index, dtype=object
    )


def _matches(values: pa.Array, desc: _Desc) -> np.ndarray:
    if desc.pattern is None:
        return np.zeros(len(values), dtype=bool)
    hit = pc.match_substring_regex(values, f"^(?:{desc.pattern.pattern})$")
    hit = pc.fill_null(hit, False).to_numpy(zero_copy_only=False)
    if desc.lengths:
        lengths = pc.utf8_length(values).to_numpy(zero_copy_only=False)
        hit = hit & np.isin(lengths, desc.lengths)
    return hit


def _valid_vector(values: pa.Array, region: _Region | None) -> np.ndarray:
    if region is None or len(values) == 0:
        return np.zeros(len(values), dtype=bool)
    general = _matches(values, region.general)
    if not general.any():
        return general
    typed = np.zeros(len(values), dtype=bool)
    for desc in region.types:
        typed |= _matches(values, desc)
    return general & typed


def _choose_regions(country_code: int, national: pa.Array) -> dict[str | None, np.ndarray]:
    """Row positions per region, as libphonenumber attributes numbers of a calling code."""
    codes = COUNTRY_CODE_TO_REGION_CODE.get(country_code) or ()
    everyone = np.arange(len(national))
    if len(codes) == 1:
        main = _main_region(country_code)
        return {main.code if main else None: everyone}
    left = np.ones(len(national), dtype=bool)
    chosen: dict[str | None, np.ndarray] = {}
    for code in codes:
        region = _region(code)
        if region is None or not left.any():
            continue
        if region.leading_digits is not None:
            starts = pc.match_substring_regex(national, f"^(?:{region.leading_digits.pattern})")
            hit = pc.fill_null(starts, False).to_numpy(zero_copy_only=False)
        else:
            hit = _valid_vector(national, region)
        hit &= left
        if hit.any():
            chosen[code] = np.flatnonzero(hit)
            left &= ~hit
    if left.any():
        chosen[None] = np.flatnonzero(left)
    return chosen
