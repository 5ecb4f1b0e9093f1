"""The outbox's retry delay: exponential, jittered, capped."""

from __future__ import annotations

import random

from leadflow.outbox import store as outbox


def test_retry_delay_is_exponential_jittered_and_capped() -> None:
    rng = random.Random(3)
    for failures, ceiling in ((1, 1), (2, 2), (3, 4), (4, 8), (30, 30)):
        delays = {outbox.retry_delay(failures, rng).total_seconds() / 60 for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 40  # spread out, not one instant for everyone
