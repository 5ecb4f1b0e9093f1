"""Every hop declaration names a suite and real statuses."""

from __future__ import annotations

from leadflow.lifecycle import Status

from helpers import ROOT


def test_every_hop_declaration_names_a_suite_and_real_statuses():
    from leadflow import order

    for hop in order.PIPELINE:
        assert hop.inputs and all(isinstance(s, Status) for s in hop.inputs)
        assert (ROOT / "suites" / f"{hop.suite}.yaml").exists()
