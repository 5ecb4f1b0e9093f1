"""The lead store's connection as a Prefect block, so production credentials live in
Prefect (a SecretStr) rather than in environment files or ``prefect.yaml``."""

from __future__ import annotations

from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import SecretStr


class LeadflowDatabase(Block):
    """SQLAlchemy URL of the lead store, e.g. ``postgresql://user:pass@host/leads``."""

    _block_type_name: ClassVar[str] = "Leadflow Database"
    _description: ClassVar[str] = "Where leadflow keeps leads, the ledger and the quarantine."

    url: SecretStr

    def get_url(self) -> str:
        return self.url.get_secret_value()
