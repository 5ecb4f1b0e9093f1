"""Country codes and host names, normalised: the small pure helpers both the capture hop
(``tasks/normalise``) and reference-data loading (``leadflow/reference``) need, kept in the
core so that the core imports nothing from ``tasks/``."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

_SPACES = re.compile(r"\s+")
_DOMAIN = r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+(?:[a-z]{2,63}|xn--[a-z0-9-]{2,59})"
DOMAIN_PATTERN = rf"^{_DOMAIN}$"


def idna_host(domain: str) -> str | None:
    import idna

    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return None


def fold(value: str) -> str:
    decomposed = unicodedata.normalize("NFKD", value)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    plain = (
        plain.lower().replace("\u2019", "'").replace(".", "").replace(",", " ").replace("&", "and")
    )
    plain = _SPACES.sub(" ", plain).strip()
    return plain[4:] if plain.startswith("the ") else plain


COUNTRY_VARIANTS = {
    "uk": "GB",
    "great britain": "GB",
    "britain": "GB",
    "england": "GB",
    "scotland": "GB",
    "wales": "GB",
    "northern ireland": "GB",
    "united kingdom": "GB",
    "usa": "US",
    "us": "US",
    "america": "US",
    "united states": "US",
    "united states of america": "US",
    "estados unidos": "US",
    "holland": "NL",
    "netherlands": "NL",
    "nederland": "NL",
    "south korea": "KR",
    "korea": "KR",
    "republic of korea": "KR",
    "north korea": "KP",
    "russia": "RU",
    "uae": "AE",
    "emirates": "AE",
    "czech republic": "CZ",
    "czechia": "CZ",
    "turkey": "TR",
    "turkiye": "TR",
    "vietnam": "VN",
    "iran": "IR",
    "syria": "SY",
    "laos": "LA",
    "bolivia": "BO",
    "venezuela": "VE",
    "tanzania": "TZ",
    "moldova": "MD",
    "macedonia": "MK",
    "ivory coast": "CI",
    "cote d'ivoire": "CI",
    "deutschland": "DE",
    "germany": "DE",
    "espana": "ES",
    "brasil": "BR",
    "mexico": "MX",
    "schweiz": "CH",
    "suisse": "CH",
    "svizzera": "CH",
    "osterreich": "AT",
    "italia": "IT",
    "sverige": "SE",
    "norge": "NO",
    "danmark": "DK",
    "suomi": "FI",
    "polska": "PL",
    "nippon": "JP",
    "hong kong": "HK",
    "taiwan": "TW",
    "palestine": "PS",
    "cape verde": "CV",
    "swaziland": "SZ",
    "burma": "MM",
    "east timor": "TL",
    "vatican": "VA",
    "bahamas": "BS",
    "gambia": "GM",
    "prc": "CN",
    "china": "CN",
    "mainland china": "CN",
    "republic of ireland": "IE",
    "eire": "IE",
    "belgique": "BE",
    "belgie": "BE",
    "france": "FR",
    "india": "IN",
    "bharat": "IN",
}


@lru_cache(maxsize=1)
def _country_index() -> dict[str, str]:
    import pycountry

    index: dict[str, str] = {}
    for country in pycountry.countries:
        code = country.alpha_2
        for name in (
            country.alpha_2,
            country.alpha_3,
            country.name,
            getattr(country, "official_name", None),
            getattr(country, "common_name", None),
        ):
            if name:
                index[fold(name)] = code
    for name, code in COUNTRY_VARIANTS.items():
        index[fold(name)] = code
    return index


def country_code(raw: str) -> str | None:
    """ISO-3166 alpha-2 for a code, a name or a common variant; None if unknown."""
    index = _country_index()
    folded = fold(raw)
    if folded in index:
        return index[folded]
    # "Germany (DE)", "DE - Germany": try the parts.
    for part in re.split(r"[()/\-|]", folded):
        part = part.strip()
        if part in index:
            return index[part]
    return None


def host_of(raw: str) -> str | None:
    """The host name of a URL or bare domain, lower-case, without ``www.``; None if not one."""
    value = raw.strip().lower()
    value = re.sub(r"^[a-z][a-z0-9+.-]*://", "", value)
    value = value.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    value = value.rsplit("@", 1)[-1].split(":", 1)[0].strip(".")
    if value.startswith("www."):
        value = value[4:]
    if not value.isascii():
        value = idna_host(value) or ""
    return value if re.fullmatch(DOMAIN_PATTERN, value) else None
