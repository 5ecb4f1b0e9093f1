"""CRM credentials as Prefect blocks: ``leadflow-hubspot`` and ``leadflow-salesforce``.

Secrets (HubSpot's private-app token, Salesforce's client secret and password) are
``SecretStr``: never in ``repr``, logs or the Prefect UI. ``leadflow blocks init`` makes them
from ``LEADFLOW_HUBSPOT_*`` / ``LEADFLOW_SALESFORCE_*`` variables; ``crm_block`` finds the one
a sync uses (``load_adapter`` turns it into the adapter of ``leadflow/crm/``).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, ValidationError

from leadflow.config import ConfigError
from leadflow.crm.base import Adapter

BLOCKS = {"hubspot": "leadflow-hubspot", "salesforce": "leadflow-salesforce"}


class HubSpotCrm(Block):
    """A HubSpot account, through a private app's access token (scopes
    crm.objects.contacts.read, crm.objects.contacts.write, crm.objects.owners.read)."""

    _block_type_name: ClassVar[str] = "Leadflow HubSpot"
    _description: ClassVar[str] = "The HubSpot account leadflow syncs leads with."

    access_token: SecretStr
    base_url: str = Field(default="https://api.hubapi.com", pattern=r"^https?://")
    # HubSpot's documented limit for private apps: 100 calls per 10 s (Free/Starter), 190
    # (Professional/Enterprise); leadflow stays under what is set here.
    calls_per_10s: int = Field(default=100, ge=1, le=1000)
    timeout_seconds: float = Field(default=20.0, gt=0)

    def adapter(self, id_property: str = "leadflow_id") -> Adapter:
        from leadflow.crm.hubspot import HubSpotAdapter

        return HubSpotAdapter(
            access_token=self.access_token.get_secret_value(),
            id_property=id_property,
            base_url=self.base_url,
            calls_per_10s=self.calls_per_10s,
            timeout_seconds=self.timeout_seconds,
        )


class SalesforceCrm(Block):
    """A Salesforce org, through OAuth 2.0: a connected app's client id and secret (the
    client-credentials flow), plus a user's name and password for the username-password
    flow."""

    _block_type_name: ClassVar[str] = "Leadflow Salesforce"
    _description: ClassVar[str] = "The Salesforce org leadflow syncs leads with."

    login_url: str = Field(default="https://login.salesforce.com", pattern=r"^https?://")
    client_id: str
    client_secret: SecretStr
    username: str | None = None
    password: SecretStr | None = None
    api_version: str = Field(default="60.0", pattern=r"^\d+\.\d$")
    ca_file: str | None = None  # PEM of certificates to trust (a private CA)
    bulk_threshold: int = Field(default=2000, ge=1)
    daily_reserve: float = Field(default=0.1, ge=0, lt=1)  # share of the daily API budget kept
    timeout_seconds: float = Field(default=30.0, gt=0)

    def adapter(self, id_property: str = "Leadflow_Id__c") -> Adapter:
        from leadflow.crm.salesforce import SalesforceAdapter

        return SalesforceAdapter(
            id_field=id_property,
            login_url=self.login_url,
            client_id=self.client_id,
            client_secret=self.client_secret.get_secret_value(),
            username=self.username,
            password=self.password.get_secret_value() if self.password else None,
            api_version=self.api_version,
            ca_file=self.ca_file,
            bulk_threshold=self.bulk_threshold,
            daily_reserve=self.daily_reserve,
            timeout_seconds=self.timeout_seconds,
        )


TYPES = (HubSpotCrm, SalesforceCrm)


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else None


def _int(name: str) -> int | None:
    raw = _env(name)
    if raw is None:
        return None
    if not raw.isdigit():
        raise ConfigError(f"environment variable {name}={raw!r} is not a whole number")
    return int(raw)


def hubspot_from_env() -> HubSpotCrm | None:
    """From LEADFLOW_HUBSPOT_TOKEN (and _URL, _CALLS_PER_10S); None when the token is unset."""
    token = _env("LEADFLOW_HUBSPOT_TOKEN")
    if token is None:
        return None
    fields: dict[str, Any] = {"access_token": token}
    if url := _env("LEADFLOW_HUBSPOT_URL"):
        fields["base_url"] = url
    if (calls := _int("LEADFLOW_HUBSPOT_CALLS_PER_10S")) is not None:
        fields["calls_per_10s"] = calls
    return HubSpotCrm(**fields)


def salesforce_from_env() -> SalesforceCrm | None:
    """From LEADFLOW_SALESFORCE_CLIENT_ID, _CLIENT_SECRET (and _LOGIN_URL, _USERNAME,
    _PASSWORD, _CA_FILE, _API_VERSION); None when the client id is unset."""
    client_id = _env("LEADFLOW_SALESFORCE_CLIENT_ID")
    if client_id is None:
        return None
    secret = _env("LEADFLOW_SALESFORCE_CLIENT_SECRET")
    if secret is None:
        raise ConfigError(
            "LEADFLOW_SALESFORCE_CLIENT_ID is set but LEADFLOW_SALESFORCE_CLIENT_SECRET is not"
        )
    fields: dict[str, Any] = {"client_id": client_id, "client_secret": secret}
    for name, variable in (
        ("login_url", "LEADFLOW_SALESFORCE_LOGIN_URL"),
        ("username", "LEADFLOW_SALESFORCE_USERNAME"),
        ("password", "LEADFLOW_SALESFORCE_PASSWORD"),
        ("ca_file", "LEADFLOW_SALESFORCE_CA_FILE"),
        ("api_version", "LEADFLOW_SALESFORCE_API_VERSION"),
    ):
        if value := _env(variable):
            fields[name] = value
    return SalesforceCrm(**fields)


# A block field -> the end of the variable it comes from (LEADFLOW_<CRM>_...).
VARIABLE_OF = {"access_token": "token", "base_url": "url"}
FROM_ENV = {"hubspot": hubspot_from_env, "salesforce": salesforce_from_env}


def crm_block(crm: str) -> HubSpotCrm | SalesforceCrm:
    """The credentials of ``crm``: the block ``LEADFLOW_<CRM>_BLOCK`` names, else the block
    ``leadflow-<crm>`` when a Prefect server is configured; with no server (a trial, a test),
    the ``LEADFLOW_<CRM>_*`` variables. Raises ``MissingBlock`` saying how to make one."""
    from blocks import resolve
    from leadflow.settings import configured_prefect_api

    kind = HubSpotCrm if crm == "hubspot" else SalesforceCrm
    named = _env(f"LEADFLOW_{crm.upper()}_BLOCK")
    if named or configured_prefect_api():
        return resolve.load(named or BLOCKS[crm], (kind,), f"{crm} CRM")
    try:
        block = FROM_ENV[crm]()
    except ValidationError as exc:  # a variable the block refuses: one line naming it
        problem = exc.errors()[0]
        field = str(problem["loc"][0]) if problem["loc"] else ""
        variable = f"LEADFLOW_{crm.upper()}_{VARIABLE_OF.get(field, field).upper()}"
        raise ConfigError(
            f"{variable}={problem.get('input')!r}: {problem['msg']} "
            f"(the {crm} credentials from the environment)"
        ) from None
    if block is None:
        variable = "LEADFLOW_HUBSPOT_TOKEN" if crm == "hubspot" else "LEADFLOW_SALESFORCE_CLIENT_ID"
        raise resolve.MissingBlock(
            f"no {crm} credentials: set {variable} (and its companions: `leadflow crm --help`), "
            f"or run a Prefect server and create the block {BLOCKS[crm]!r} with "
            "`leadflow blocks init`"
        )
    return block


def load_adapter(crm: str, id_property: str | None = None) -> Adapter:
    """The adapter of ``crm`` from its credentials, keyed by the mapping's ``id_property``."""
    block = crm_block(crm)
    return block.adapter(id_property) if id_property else block.adapter()
