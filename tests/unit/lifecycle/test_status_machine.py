"""The status machine: every status in it, terminal ones go nowhere."""

import pytest

from leadflow import lifecycle
from leadflow.lifecycle import ALLOWED, IllegalTransition, Status


def test_every_status_is_in_the_machine_and_terminal_ones_go_nowhere():
    assert set(ALLOWED) == {None, *Status}
    assert ALLOWED[Status.WON] == frozenset() and ALLOWED[Status.DISQUALIFIED] == frozenset()
    lifecycle.check(None, "captured")
    lifecycle.check("recycled", "nurturing")
    with pytest.raises(IllegalTransition, match="captured -> won is not allowed"):
        lifecycle.check("captured", "won")
    with pytest.raises(IllegalTransition, match="unknown status"):
        lifecycle.check("captured", "hot")
