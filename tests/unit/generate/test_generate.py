"""Sample data: seeded, with the promised defects."""

from datetime import UTC, datetime

import pandas as pd

from app.generate import DEFECTS, generate


def test_generate_is_seeded_and_has_the_promised_defects(tmp_path):
    now = datetime(2026, 11, 1, tzinfo=UTC)
    a = generate(tmp_path / "a", leads=4000, seed=3, now=now)
    b = generate(tmp_path / "b", leads=4000, seed=3, now=now)
    assert a["leads"].read_bytes() == b["leads"].read_bytes()
    leads = pd.read_csv(a["leads"], dtype=str)
    n = len(leads)
    emails = leads["email"].dropna()
    folded = emails.str.strip().str.lower()
    dupes = folded.duplicated().sum()
    assert abs(dupes / n - DEFECTS["duplicate"]) < 0.015
    assert (emails != emails.str.strip()).any() and (emails.str.strip() != folded).any()
    assert abs(leads["email"].isna().mean() - DEFECTS["no_identity"]) < 0.004
    assert set(leads["outcome"].dropna()) == {"won", "lost"}
    events = pd.read_csv(a["events"])
    assert {"page_view", "form_fill", "meeting_booked"} <= set(events["event_type"])
    assert 3.5 < len(events) / n < 7
    for name in ("accounts", "reps", "firmographics"):
        assert len(pd.read_csv(a[name])) > 0
