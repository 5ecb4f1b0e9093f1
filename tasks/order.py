"""The pipeline's hops in lifecycle order: the one list of hop declarations.

A hop's flow runs every declaration of that name (score runs new, then engaged leads).
"""

from __future__ import annotations

from tasks import enrich, route_hop, score_hop
from tasks.hops import Hop

PIPELINE: tuple[Hop, ...] = (
    enrich.HOP,
    score_hop.SCORE_NEW,
    score_hop.SCORE_ENGAGED,
    route_hop.HOP,
)


def hop_names() -> list[str]:
    """The pipeline's hops by name, in order, each once."""
    return list(dict.fromkeys(hop.name for hop in PIPELINE))
