"""A scoring rule set kept as a Prefect block: the reviewed YAML text, so that a deployment
can score with rules chosen in the UI (``--rules block:NAME``)."""

from __future__ import annotations

from typing import ClassVar

from prefect.blocks.core import Block


class ScoringRulesBlock(Block):
    """The text of a scoring rules file (validated when used, like a file)."""

    _block_type_name: ClassVar[str] = "Leadflow Scoring Rules"
    _description: ClassVar[str] = "A reviewed leadflow scoring rules file (YAML text)."

    text: str


class RulesLocation(Block):
    """Where a deployment's reviewed rules live: a folder holding ``scoring.yaml``,
    ``routing.yaml``, ``sla.yaml``, ``cadences.yaml``, ``recycle.yaml``, ``lists/``,
    ``sources/`` and ``templates/`` (a checkout of the rules repository on the workers).
    Workers read it when ``LEADFLOW_RULES_BLOCK`` names it; ``LEADFLOW_RULES_DIR`` wins."""

    _block_type_name: ClassVar[str] = "Leadflow Rules Location"
    _description: ClassVar[str] = "The folder leadflow's rules files are read from."

    directory: str
