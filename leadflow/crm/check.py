"""Checks of a CRM mapping against the CRM itself, for ``leadflow crm check`` and
``leadflow doctor``: the CRM answers with these credentials, every property the mapping
writes exists there, and every rep routing can choose is a user there."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from leadflow.crm.base import Adapter, CrmError
from leadflow.crm.mapping import LABEL, CrmMapping, mapping_path
from leadflow.quarantine import masked


@dataclass(frozen=True)
class Finding:
    ok: bool
    what: str  # reach | properties | owners
    line: str  # one line for a person, no personal data


def check(adapter: Adapter, mapping: CrmMapping, rep_emails: Sequence[str]) -> list[Finding]:
    """Reach the CRM, then compare the mapping's properties and the reps with it."""
    label = LABEL.get(mapping.crm, mapping.crm)
    path = mapping_path(mapping.crm)
    try:
        reached = adapter.probe()
    except CrmError as exc:
        return [Finding(False, "reach", _said(label, exc))]
    out = [Finding(True, "reach", reached)]
    try:
        known = {p.lower() for p in adapter.properties()}
        missing = [
            (name, rule.to) for name, rule in mapping.fields.items() if rule.to.lower() not in known
        ]
        if mapping.id_property.lower() not in known:
            missing.insert(0, ("id_property", mapping.id_property))
        if missing:
            shown = ", ".join(
                f"{'id_property' if n == 'id_property' else 'fields.' + n} -> {p}"
                for n, p in missing
            )
            out.append(Finding(False, "properties", f"{path}: {label} has no property {shown}"))
        else:
            out.append(
                Finding(
                    True, "properties", f"{path}: all {len(mapping.fields) + 1} properties exist"
                )
            )
        if "owner" in mapping.fields:
            owners = {k.lower() for k in adapter.owners()} | {k.lower() for k in mapping.owners}
            unknown = sorted({e for e in rep_emails if e and e.lower() not in owners})
            if unknown:
                names = ", ".join(masked(e) for e in unknown[:5])
                more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
                out.append(
                    Finding(
                        False,
                        "owners",
                        f"{len(unknown)} rep(s) are not {label} users: {names}{more} (add them "
                        f"in {label}, or map their email under owners: in {path})",
                    )
                )
            else:
                out.append(
                    Finding(True, "owners", f"all {len(set(rep_emails))} rep(s) are {label} users")
                )
    except CrmError as exc:
        out.append(Finding(False, "properties", _said(label, exc)))
    return out


def _said(label: str, exc: CrmError) -> str:
    """The CRM's error as a line that names the CRM once."""
    message = masked(str(exc))
    return message if message.startswith(label) else f"{label}: {message}"
