"""Enrichment settings (``rules/enrichment.yaml``): the firmographic provider and how
leads are matched to accounts."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from leadflow import config
from leadflow.settings import get_settings


class MatchRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    fuzzy_threshold: float = Field(default=0.9, ge=0.5, le=1.0)
    min_name_length: int = Field(default=3, ge=1)


class EnrichmentRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # none | file:PATH (a CSV/Parquet dump) | block:NAME (a saved firmographics block)
    provider: str = "none"
    match: MatchRules = Field(default_factory=MatchRules)

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        if value != "none" and not value.startswith(("file:", "block:")):
            raise ValueError("provider must be 'none', 'file:PATH' or 'block:NAME'")
        return value


def load_enrichment_rules(path: str | Path | None = None) -> tuple[EnrichmentRules, str]:
    """The rules in ``path``, else ``rules/enrichment.yaml`` if present, else defaults."""
    if path is None:
        default = get_settings().rules_dir / "enrichment.yaml"
        if not default.exists():
            return EnrichmentRules(), "default"
        path = default
    return config.load(EnrichmentRules, Path(path))
