"""The block ops are told through: Prefect's own Custom Webhook notification block, named
``leadflow-ops``, which leadflow's automations (``app/automations.py``) send their messages
with. Prefect's server sends them itself, so the block is a type the server knows without
importing leadflow (a leadflow block type would need leadflow installed beside the server).

The webhook receives JSON ``{"text": SUBJECT + newline + BODY, "subject": ..., "body": ...,
"source": "leadflow"}``: ``text`` is what Slack, Mattermost and Teams-style incoming webhooks
show; a token, when given, goes as ``Authorization: Bearer TOKEN`` and is stored as the
block's secret. Any other notification block (Slack Webhook, Email from prefect-email, ...)
made in the UI works too: name it in ``LEADFLOW_OPS_BLOCK``.
"""

from __future__ import annotations

import os
from typing import Any

OPS_BLOCK = "leadflow-ops"
URL_ENV = "LEADFLOW_OPS_WEBHOOK_URL"
TOKEN_ENV = "LEADFLOW_OPS_WEBHOOK_TOKEN"


def ops_webhook(url: str, token: str | None = None) -> Any:
    """A Custom Webhook block posting leadflow's ops messages to ``url``."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    if not url.startswith(("http://", "https://")):
        from leadflow.config import ConfigError

        raise ConfigError(f"environment variable {URL_ENV}={url!r} is not an http(s) URL")
    return CustomWebhookNotificationBlock(
        name=OPS_BLOCK,
        url=url,
        method="POST",
        json_data={
            "text": "{{subject}}\n{{body}}",
            "subject": "{{subject}}",
            "body": "{{body}}",
            "source": "leadflow",
        },
        headers={"Authorization": "Bearer {{token}}"} if token else None,
        secrets={"token": token} if token else {},
    )


def from_env() -> Any | None:
    """The ``leadflow-ops`` block from LEADFLOW_OPS_WEBHOOK_URL (and _TOKEN), None if unset."""
    url = os.environ.get(URL_ENV) or None
    return ops_webhook(url, os.environ.get(TOKEN_ENV) or None) if url else None
