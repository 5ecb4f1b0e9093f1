"""The pipeline's hops in lifecycle order: the one list of hop declarations.

A hop's flow runs every declaration of that name (score runs new, then engaged leads).
"""

from __future__ import annotations

from leadflow.enrich import hop as enrich
from leadflow.routing import hop as route_hop
from leadflow.runner import Hop
from leadflow.scoring import hop as score_hop

PIPELINE: tuple[Hop, ...] = (
    enrich.HOP,
    score_hop.SCORE_NEW,
    score_hop.SCORE_ENGAGED,
    route_hop.HOP,
)


def hop_names() -> list[str]:
    """The pipeline's hops by name, in order, each once."""
    return list(dict.fromkeys(hop.name for hop in PIPELINE))
