"""The scoring engine and its rules file, without a database."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from leadflow.config import ConfigError
from leadflow.scoring import decide as scoring
from leadflow.scoring.rules import parse_rules

pytestmark = pytest.mark.unit  # no database, no Prefect server

NOW = datetime(2026, 11, 1, tzinfo=UTC)

RULES = """
fit:
  - {name: senior, when: {field: seniority, in: [C-level, VP]}, points: 20}
  - {name: mid_size, when: {field: employees, range: [50, 5000]}, points: 10}
  - {name: free_mail, when: {field: email_type, equals: free}, points: -10}
  - {name: demo, when: {field: attributes.lead_form, equals: demo_request}, points: 20}
  - {name: has_phone, when: {field: phone, exists: true}, points: 5}
  - {name: gmail_regex, when: {field: email, regex: '@gmail[.]'}, points: -1}
  - {name: both, when: {all: [{field: country, in: [US]}, {not: {field: email_type, equals: free}}]}, points: 3}
engagement:
  - {name: pricing, event: page_view, url: '/pricing', points: 10, cap: 25, half_life_days: 10}
  - {name: unsub, event: unsubscribe, points: -30, cap: -30}
normalise: {min: -40, max: 100}
bands: {hot: 70, warm: 40}
mql_threshold: 60
fast_track:
  - {name: ceo_demo, when: {all: [{field: seniority, equals: C-level}, {field: attributes.lead_form, equals: demo_request}]}}
disqualify:
  - {name: student, when: {field: seniority, equals: Student}}
"""


def leads():
    return pd.DataFrame(
        {
            "id": [1, 2, 3, 4],
            "seniority": ["C-level", "Manager", "Student", "VP"],
            "employees": [120, 40, None, 5000],
            "email_type": ["business", "free", "free", "business"],
            "attributes.lead_form": ["demo_request", None, "demo_request", "ebook"],
            "phone": ["+14155550100", None, "  ", None],
            "email": ["a@acme.com", "b@gmail.com", "c@gmail.com", "d@beta.io"],
            "country": ["US", "US", "GB", "US"],
        }
    )


def events():
    return pd.DataFrame(
        {
            "lead_id": [2, 2, 2, 4, 4],
            "event_type": ["page_view", "page_view", "page_view", "unsubscribe", "page_view"],
            "occurred_at": pd.to_datetime(
                [
                    NOW,
                    NOW - timedelta(days=10),
                    NOW + timedelta(days=1),
                    NOW - timedelta(days=3),
                    NOW - timedelta(days=5),
                ],
                utc=True,
            ),
            "url": ["/pricing", "/pricing?x=1", "/pricing", None, "/blog"],
        }
    )


def test_points_decay_caps_bands_and_decisions():
    rules = parse_rules(RULES, "rules.yaml")
    result = scoring.score_leads(rules, leads(), events(), NOW)
    fired = [scoring.parse_fired(f) for f in result["fired"]]
    assert fired[0] == {"senior": 20, "mid_size": 10, "demo": 20, "has_phone": 5, "both": 3}
    # Lead 2: today's view 10 + a 10-day-old one at half weight; tomorrow's does not count yet.
    assert fired[1] == {"free_mail": -10, "gmail_regex": -1, "pricing": 15}
    assert fired[3] == {"senior": 20, "both": 3, "unsub": -30}  # 5000 is not < 5000
    raw = [58, 4, 0, -7]
    assert result["raw"].tolist()[:2] == [58, 4] and result["raw"][3] == raw[3]
    assert result["score"].tolist()[0] == round((58 + 40) / 140 * 100, 2)
    assert result["temperature"].tolist() == ["hot", "cold", "cold", "cold"]
    assert result["fast_track"].tolist() == ["ceo_demo", None, None, None]
    assert result["disqualify"].tolist() == [None, None, "student", None]
    assert result["decision"].tolist() == ["mql", "nurturing", "disqualified", "nurturing"]


def test_moving_now_decays_engagement_without_sleeping():
    rules = parse_rules(RULES, "rules.yaml")
    later = scoring.score_leads(rules, leads(), events(), NOW + timedelta(days=20))
    # All three views now count: today+20d -> 10*0.25 + 10*0.125 + 10*(0.5**1.9)
    expected = 10 * 0.5**2 + 10 * 0.5**3 + 10 * 0.5**1.9
    assert scoring.parse_fired(later["fired"][1])["pricing"] == pytest.approx(expected, abs=0.01)


def test_condition_forms():
    frame = pd.DataFrame(
        {"attributes.n": ["25,000", "7", None, "x"], "attributes.flag": [True, False, None, True]}
    )

    def check(text):
        return scoring.condition_mask(
            parse_rules(
                f"fit: [{{name: r, when: {text}, points: 1}}]\nbands: {{hot: 2, warm: 1}}\nmql_threshold: 1",
                "r",
            )
            .fit[0]
            .when,
            frame,
        ).tolist()

    assert check("{field: attributes.n, range: [10, null]}") == [True, False, False, False]
    assert check("{field: attributes.n, missing: true}") == [False, False, True, False]
    assert check("{field: attributes.flag, equals: true}") == [True, False, False, True]
    assert check("{any: [{field: attributes.n, equals: 7}, {field: attributes.n, equals: x}]}") == [
        False,
        True,
        False,
        True,
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "fit: [{name: a, when: {field: shoe_size, equals: 9}, points: 1}]",
            "unknown field 'shoe_size'",
        ),
        (
            "fit: [{name: a, when: {field: title, regex: '(unclosed'}, points: 1}]",
            "bad regex '(unclosed'",
        ),
        (
            "fit: [{name: a, when: {field: title, equals: x, in: [y]}, points: 1}]",
            "needs exactly one of",
        ),
        (
            "fit: [{name: a, when: {field: employees, range: [10, 5]}, points: 1}]",
            "range minimum 10.0 is above its maximum 5.0",
        ),
        (
            "engagement: [{name: e, event: smoke_signal, points: 1}]",
            "unknown event type 'smoke_signal'",
        ),
        ("engagement: [{name: e, event: reply, points: 5, cap: -5}]", "different signs"),
    ],
)
def test_invalid_rules_name_file_rule_and_value(text, message):
    body = text + "\nbands: {hot: 70, warm: 40}\nmql_threshold: 60\n"
    with pytest.raises(ConfigError) as error:
        parse_rules(body, "rules/bad.yaml")
    assert "rules/bad.yaml" in str(error.value) and message in str(error.value)


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        (
            "bands: {hot: 40, warm: 70}\nmql_threshold: 60",
            "bands overlap: warm (70.0) must be below hot (40.0)",
        ),
        (
            "bands: {hot: 70, warm: 40}\nmql_threshold: 160",
            "mql_threshold: Input should be less than or equal to 100",
        ),
    ],
)
def test_bands_and_threshold_are_checked(tail, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_rules(
            "fit: [{name: a, when: {field: title, exists: true}, points: 1}]\n" + tail, "r.yaml"
        )


def test_contributions_json_and_auc_helpers():
    points = pd.DataFrame({"a": [1.0, 0.0], "b": [2.555, 0.0]})
    assert scoring.contributions_json(points) == ['{"a": 1, "b": 2.56}', "{}"]
    from leadflow.scoring.backtest import deciles, roc_auc

    labels = np.array([True, False, True, False])
    assert roc_auc(labels, np.array([0.9, 0.1, 0.8, 0.3])) == 1.0
    assert roc_auc(labels, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    rows = deciles(np.array([True] * 10 + [False] * 90), np.arange(100.0))
    assert rows[0]["decile"] == 10 and rows[0]["won"] == 0 and rows[-1]["won"] == 10


def test_event_types_are_the_ones_the_events_gate_accepts():
    """Rules may name exactly the event types capture lets through, no more, no fewer."""
    from leadflow import quality
    from leadflow.rules.fields import EVENT_TYPES
    from leadflow.scoring.rules import EVENT_TYPES as SCORABLE

    suite = quality.load_suite("events")
    (check,) = [e for e in suite.rows if e.name == "event_type_known"]
    assert sorted(check.kwargs()["value_set"]) == sorted(EVENT_TYPES) == sorted(SCORABLE)


def test_rules_that_fire_on_no_lead_are_named():
    rules = parse_rules(RULES, "test")
    events = pd.DataFrame(columns=["lead_id", "event_type", "occurred_at", "url"])
    result = scoring.score_leads(rules, leads(), events, NOW)
    hits = result.attrs["hits"]
    assert set(hits) == {
        r.name for r in (*rules.fit, *rules.engagement, *rules.fast_track, *rules.disqualify)
    }
    assert hits["unsub"] == 0 and hits["senior"] > 0
    assert "rule unsub fired on 0 leads" in scoring.never_fired(hits)
    assert "rule senior fired on 0 leads" not in scoring.never_fired(hits)
