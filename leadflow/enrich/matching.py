"""Lead-to-account matching: by company domain (subdomains included), then by a known
alias domain, then by a fuzzy match of the cleaned company name above a threshold.

Every match says why: ``domain``, ``alias`` or ``name~0.93`` (the similarity).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd
from rapidfuzz import fuzz, process

from leadflow.capture.normalise import registered_domain


def clean_company(values: pd.Series, suffixes: tuple[str, ...]) -> pd.Series:
    """Company names reduced for matching: lower case, no punctuation, no legal suffixes."""
    text = values.astype("str").str.lower().str.replace(".", "", regex=False)  # "S.A." -> "sa"
    text = text.str.replace("&", " and ", regex=False).str.replace(
        r"[^0-9a-z\u00c0-\u024f]+", " ", regex=True
    )
    trailing = r"(?: (?:and|" + "|".join(re.escape(s) for s in suffixes) + r"))+$"
    # " Holdings Inc", " GmbH and Co KG": legal words at the end go, however many.
    text = (" " + text.str.strip()).str.replace(trailing, "", regex=True)
    text = text.str.replace(r" +", " ", regex=True).str.strip()
    return text.where(values.notna() & (text != ""), None).astype(object)


@dataclass(frozen=True)
class AccountIndex:
    by_domain: dict[str, tuple[int, int | None]]
    by_alias: dict[str, tuple[int, int | None]]
    names: list[str]
    name_owners: list[tuple[int, int | None]]

    @property
    def empty(self) -> bool:
        return not (self.by_domain or self.by_alias or self.names)


def _owner(value: object) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def build_index(accounts: pd.DataFrame, legal_suffixes: tuple[str, ...]) -> AccountIndex:
    """``accounts`` has id, name, domain, aliases (list or None), owner_rep_id."""
    by_domain: dict[str, tuple[int, int | None]] = {}
    by_alias: dict[str, tuple[int, int | None]] = {}
    for account_id, domain, aliases, owner in zip(
        accounts["id"],
        accounts["domain"],
        accounts["aliases"],
        accounts["owner_rep_id"],
        strict=True,
    ):
        entry = (int(account_id), _owner(owner))
        if isinstance(domain, str):
            by_domain.setdefault(registered_domain(domain) or domain, entry)
        for alias in aliases if isinstance(aliases, list) else []:
            by_alias.setdefault(registered_domain(alias) or alias, entry)
    cleaned = (
        clean_company(accounts["name"], legal_suffixes)
        if len(accounts)
        else pd.Series(dtype=object)
    )
    names, owners = [], []
    for name, account_id, owner in zip(
        cleaned, accounts["id"], accounts["owner_rep_id"], strict=True
    ):
        if isinstance(name, str) and name:
            names.append(name)
            owners.append((int(account_id), _owner(owner)))
    return AccountIndex(by_domain, by_alias, names, owners)


def match_accounts(
    domains: pd.Series,
    companies: pd.Series,
    index: AccountIndex,
    *,
    threshold: float = 0.9,
    min_name_length: int = 3,
) -> pd.DataFrame:
    """Per lead: account_id, account_owner_rep_id, account_match (reason), or nulls."""
    out = pd.DataFrame(
        {
            "account_id": pd.array([None] * len(domains), dtype="Int64"),
            "account_owner_rep_id": pd.array([None] * len(domains), dtype="Int64"),
            "account_match": pd.Series([None] * len(domains), dtype=object),
        },
        index=domains.index,
    )
    if index.empty:
        return out
    for reason, table in (("domain", index.by_domain), ("alias", index.by_alias)):
        todo = out["account_id"].isna() & domains.notna()
        hits = domains[todo].map(table).dropna()
        if len(hits):
            out.loc[hits.index, "account_id"] = [h[0] for h in hits]
            out.loc[hits.index, "account_owner_rep_id"] = pd.array(
                [h[1] for h in hits], dtype="Int64"
            )
            out.loc[hits.index, "account_match"] = reason
    todo = out["account_id"].isna() & companies.notna()
    if index.names and todo.any():
        wanted = companies[todo]
        wanted = wanted[wanted.str.len() >= min_name_length]
        cutoff = threshold * 100
        best: dict[str, tuple[int, int | None, float] | None] = {}
        for name in wanted.unique():
            found = process.extractOne(
                name, index.names, scorer=fuzz.token_sort_ratio, score_cutoff=cutoff
            )
            best[name] = None if found is None else (*index.name_owners[found[2]], found[1] / 100)
        hits = wanted.map(best).dropna()
        if len(hits):
            out.loc[hits.index, "account_id"] = [h[0] for h in hits]
            out.loc[hits.index, "account_owner_rep_id"] = pd.array(
                [h[1] for h in hits], dtype="Int64"
            )
            out.loc[hits.index, "account_match"] = [f"name~{h[2]:.2f}" for h in hits]
    return out
