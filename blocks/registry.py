"""leadflow's blocks, all together: ``leadflow blocks register`` registers their types with
the Prefect API, ``leadflow blocks init`` creates the blocks a deployment needs from
environment variables (a block whose variables are unset is skipped and said so), and
``capture_token`` finds the token ``POST /leads`` checks.

Block names are fixed defaults, so a worker finds them without configuration:

====================================  =========================  ===============================
block (type)                          default name               from
====================================  =========================  ===============================
Leadflow Database                     leadflow                   LEADFLOW_DATABASE_URL
Secret (capture token)                leadflow-capture-token     LEADFLOW_CAPTURE_TOKEN
Leadflow SMTP Notifier                leadflow-smtp              LEADFLOW_SMTP_HOST, _PORT,
                                                                 _USERNAME, _PASSWORD, _FROM,
                                                                 _STARTTLS, _SSL, _CA_FILE
Leadflow Public Site                  leadflow-site              LEADFLOW_PUBLIC_URL,
                                                                 LEADFLOW_UNSUBSCRIBE_SECRET
                                                                 (random when unset)
Leadflow Webhook Notifier             leadflow-webhook           LEADFLOW_WEBHOOK_URL, _TOKEN
Leadflow HTTP Firmographics           leadflow-firmographics     LEADFLOW_FIRMOGRAPHICS_URL, _KEY
Leadflow Rules Location               leadflow-rules             LEADFLOW_RULES_DIR
Custom Webhook (ops alerts)           leadflow-ops               LEADFLOW_OPS_WEBHOOK_URL, _TOKEN
Leadflow HubSpot                      leadflow-hubspot           LEADFLOW_HUBSPOT_TOKEN, _URL,
                                                                 _CALLS_PER_10S
Leadflow Salesforce                   leadflow-salesforce        LEADFLOW_SALESFORCE_CLIENT_ID,
                                                                 _CLIENT_SECRET, _LOGIN_URL,
                                                                 _USERNAME, _PASSWORD, _CA_FILE,
                                                                 _API_VERSION
Leadflow CalDAV Calendars             leadflow-caldav            LEADFLOW_CALDAV_URL, _USERNAME,
                                                                 _PASSWORD, _CALENDARS,
                                                                 _TIMEOUT_SECONDS, _CACHE_SECONDS
====================================  =========================  ===============================
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from blocks.calendar import CALDAV_BLOCK, CalDavCalendars
from blocks.crm import HubSpotCrm, SalesforceCrm, hubspot_from_env, salesforce_from_env
from blocks.database import LeadflowDatabase
from blocks.firmographics import FileFirmographics, HttpFirmographics
from blocks.notifier import MaildirNotifier, SmtpNotifier, WebhookNotifier
from blocks.ops import OPS_BLOCK
from blocks.ops import URL_ENV as OPS_URL_ENV
from blocks.ops import from_env as ops_from_env
from blocks.rules import RulesLocation, ScoringRulesBlock
from blocks.site import MIN_SECRET_LENGTH, LeadflowSite
from leadflow import links
from leadflow.config import ConfigError

TYPES = (
    LeadflowDatabase,
    HttpFirmographics,
    FileFirmographics,
    SmtpNotifier,
    WebhookNotifier,
    MaildirNotifier,
    ScoringRulesBlock,
    RulesLocation,
    LeadflowSite,
    HubSpotCrm,
    SalesforceCrm,
    CalDavCalendars,
)
CAPTURE_TOKEN = "leadflow-capture-token"
TOKEN_ENV = "LEADFLOW_CAPTURE_TOKEN"


def api_url() -> str | None:
    """The Prefect server this process talks to (env or profile), None for the ephemeral API."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def register() -> list[str]:
    """Register every leadflow block type (and Prefect's Secret) with the API."""
    from prefect.blocks.system import Secret

    names = []
    for kind in (*TYPES, Secret):
        kind.register_type_and_schema()
        names.append(kind.get_block_type_slug())
    return names


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else None


def _flag(name: str, default: bool) -> bool:
    raw = _env(name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"environment variable {name}={raw!r}: use true or false")


def _smtp() -> SmtpNotifier | None:
    """From LEADFLOW_SMTP_*: STARTTLS on 587 by default; LEADFLOW_SMTP_SSL=true is TLS from
    the start (port 465 by default); LEADFLOW_SMTP_CA_FILE trusts a private CA."""
    host = _env("LEADFLOW_SMTP_HOST")
    if host is None:
        return None
    ssl = _flag("LEADFLOW_SMTP_SSL", False)
    starttls = _flag("LEADFLOW_SMTP_STARTTLS", not ssl)
    if ssl and starttls:
        raise ConfigError(
            "LEADFLOW_SMTP_SSL=true and LEADFLOW_SMTP_STARTTLS=true: choose one "
            "(SSL: TLS from the start, port 465; STARTTLS: port 587)"
        )
    port = _env("LEADFLOW_SMTP_PORT")
    if port is not None and not port.isdigit():
        raise ConfigError(f"environment variable LEADFLOW_SMTP_PORT={port!r} is not a port")
    return SmtpNotifier(
        host=host,
        port=int(port or (465 if ssl else 587)),
        username=_env("LEADFLOW_SMTP_USERNAME"),
        password=_env("LEADFLOW_SMTP_PASSWORD"),
        from_address=_env("LEADFLOW_SMTP_FROM") or f"leadflow@{host}",
        starttls=starttls,
        ssl=ssl,
        ca_file=_env("LEADFLOW_SMTP_CA_FILE"),
    )


def _site() -> LeadflowSite | None:
    """From LEADFLOW_PUBLIC_URL, signing with LEADFLOW_UNSUBSCRIBE_SECRET or a new random
    secret (kept: init does not overwrite a block that exists)."""
    url = _env(links.URL_ENV)
    if url is None:
        return None
    secret = _env(links.SECRET_ENV) or links.new_secret()
    if len(secret) < MIN_SECRET_LENGTH:
        raise ConfigError(f"{links.SECRET_ENV}: at least {MIN_SECRET_LENGTH} characters")
    return LeadflowSite(public_url=links.check_public_url(url, links.URL_ENV), secret=secret)


def _token() -> Any:
    from prefect.blocks.system import Secret

    value = _env(TOKEN_ENV)
    return Secret(value=value) if value else None


def _maybe(kind: Callable[..., Any], **fields: str | None) -> Any:
    """``kind(**fields)`` when the first field is set, else None."""
    first = next(iter(fields.values()))
    return kind(**{k: v for k, v in fields.items() if v is not None}) if first else None


PLANS: dict[str, tuple[str, Callable[[], Any]]] = {
    "leadflow": (
        "LEADFLOW_DATABASE_URL",
        lambda: _maybe(LeadflowDatabase, url=_env("LEADFLOW_DATABASE_URL")),
    ),
    CAPTURE_TOKEN: (TOKEN_ENV, _token),
    "leadflow-smtp": ("LEADFLOW_SMTP_HOST", _smtp),
    "leadflow-webhook": (
        "LEADFLOW_WEBHOOK_URL",
        lambda: _maybe(
            WebhookNotifier, url=_env("LEADFLOW_WEBHOOK_URL"), token=_env("LEADFLOW_WEBHOOK_TOKEN")
        ),
    ),
    "leadflow-firmographics": (
        "LEADFLOW_FIRMOGRAPHICS_URL",
        lambda: _maybe(
            HttpFirmographics,
            base_url=_env("LEADFLOW_FIRMOGRAPHICS_URL"),
            api_key=_env("LEADFLOW_FIRMOGRAPHICS_KEY"),
        ),
    ),
    links.SITE_BLOCK: (links.URL_ENV, _site),
    "leadflow-rules": (
        "LEADFLOW_RULES_DIR",
        lambda: _maybe(RulesLocation, directory=_env("LEADFLOW_RULES_DIR")),
    ),
    OPS_BLOCK: (OPS_URL_ENV, ops_from_env),
    "leadflow-hubspot": ("LEADFLOW_HUBSPOT_TOKEN", hubspot_from_env),
    "leadflow-salesforce": ("LEADFLOW_SALESFORCE_CLIENT_ID", salesforce_from_env),
    CALDAV_BLOCK: ("LEADFLOW_CALDAV_URL", lambda: _caldav()),
}


def _caldav() -> CalDavCalendars | None:
    from leadflow.calendars import config_from_env

    config = config_from_env()
    return None if config is None else CalDavCalendars.from_config(config)


def init(overwrite: bool = False) -> dict[str, str]:
    """Create each block whose environment variables are set; say what became of each."""
    register()
    report = {}
    for name, (variable, build) in PLANS.items():
        block = build()
        if block is None:
            report[name] = f"skipped ({variable} is not set)"
            continue
        try:
            block.save(name, overwrite=overwrite)
        except ValueError as exc:
            if "already in use" not in str(exc):
                raise
            report[name] = "exists (kept; --overwrite replaces it)"
            continue
        report[name] = f"saved ({block.get_block_type_name()})"
    return report


def capture_token(block: str | None) -> tuple[str | None, str]:
    """The capture token and, when there is none, what to do about it.

    An explicit ``block`` must exist. Otherwise the default Secret block is tried when a
    Prefect server is configured, then ``$LEADFLOW_CAPTURE_TOKEN``."""
    name = block or CAPTURE_TOKEN
    missing = (
        f"no capture token: the Secret block {name!r} does not exist; create it with "
        f"`{TOKEN_ENV}=... leadflow blocks init` (or in the Prefect UI)"
    )
    if block or api_url():
        from prefect.blocks.system import Secret

        try:
            return str(Secret.load(name).get()), missing
        except ValueError:
            if block:
                return None, missing
        except Exception as exc:  # the API is not there: say which, not a bare ConnectError
            api = api_url()
            raise RuntimeError(
                f"cannot read the Secret block {name!r}: the Prefect API at {api} does not "
                f"answer ({type(exc).__name__}); start it, or unset PREFECT_API_URL and set "
                f"{TOKEN_ENV}"
            ) from None
    value = _env(TOKEN_ENV)
    if value:
        return value, missing
    if not api_url():
        missing = (
            f"no capture token: set {TOKEN_ENV}, or run a Prefect server and create the "
            f"Secret block {CAPTURE_TOKEN!r} with `leadflow blocks init`"
        )
    return None, missing
