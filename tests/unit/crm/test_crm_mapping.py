"""CRM field mappings: what a reviewed rules/crm/*.yaml may say, and the three-way merge."""

from __future__ import annotations

from pathlib import Path

import pytest

from leadflow.config import ConfigError
from leadflow.crm import mapping as m


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hubspot.yaml"
    path.write_text(text, encoding="utf-8")
    return path


BASE = "crm: hubspot\nid_property: leadflow_id\nfields:\n"


def test_shipped_mappings_load_and_are_off_by_default() -> None:
    for crm in m.CRMS:
        mapping, version = m.load_mapping(crm)
        assert mapping.crm == crm and not mapping.enabled and len(version) == 12
        assert "owner" in mapping.fields and mapping.fields["owner"].policy != "leadflow_wins"


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ("  scroe: leadflow_score\n", "unknown leadflow field 'scroe' (did you mean 'score'?"),
        ("  score: leadflow_score\n  temperature: LEADFLOW_SCORE\n", "both write"),
        ("  score: leadflow_id\n", "the id property"),
        ("  score: {to: s, policy: leadflow_always}\n", "fields.score.policy"),
        ("  attributes.: x\n", "attributes. needs a name"),
    ],
)
def test_mistakes_are_one_clear_error_naming_file_and_field(
    tmp_path: Path, fields: str, says: str
) -> None:
    path = _write(tmp_path, BASE + fields)
    with pytest.raises(ConfigError) as caught:
        m.load_mapping("hubspot", path)
    assert str(path) in str(caught.value) and says in str(caught.value)


def test_a_file_for_another_crm_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE.replace("hubspot", "salesforce") + "  score: s\n")
    with pytest.raises(ConfigError, match="but the file is for 'hubspot'"):
        m.load_mapping("hubspot", path)


def test_enabled_follows_the_variable_and_names_a_bad_crm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(m.ENV, "hubspot")
    assert [x.crm for x in m.enabled()] == ["hubspot"]
    monkeypatch.setenv(m.ENV, "none")
    assert m.enabled() == []
    monkeypatch.setenv(m.ENV, "pipedrive")
    with pytest.raises(ConfigError, match="unknown CRM 'pipedrive'"):
        m.enabled()
    monkeypatch.delenv(m.ENV)
    assert m.enabled() == []  # the shipped files say enabled: false


def test_values_map_statuses_and_leave_out_what_is_empty_or_unlisted() -> None:
    mapping, _ = m.load_mapping("hubspot")
    lead = {
        "status": "accepted",
        "score": 71.256,
        "temperature": None,
        "owner_id": "501",
        "email": "a@example.com",
        "attributes": {"utm_source": "ads"},
        "sla_breached": False,
    }
    values = m.leadflow_values(mapping, lead)
    assert values["hs_lead_status"] == "OPEN"
    assert values["leadflow_score"] == 71.26
    assert values["hubspot_owner_id"] == "501"
    assert values["leadflow_sla_breached"] == "false"
    assert "leadflow_temperature" not in values
    assert (
        m.leadflow_values(mapping, {**lead, "status": "captured"}).get("hs_lead_status")
        == m.UNLISTED
    )


def test_merge_keeps_what_a_person_changed_where_the_policy_says() -> None:
    mapping, _ = m.load_mapping("hubspot")
    ours = {"hubspot_owner_id": "2", "leadflow_score": 80, "company": "Acme"}
    pushed = {"hubspot_owner_id": "1", "leadflow_score": 50, "company": "Acme"}
    # A person moved the owner to 9 and renamed the company in HubSpot.
    crm_now = {"hubspot_owner_id": "9", "leadflow_score": 50, "company": "Acme Corp"}
    # Not read back by the pull yet: the owner stays as the person set it (the pull turns it
    # into a reassignment; overwriting it first would lose that).
    unread = m.merge(mapping, ours, crm_now, pushed, "routed")
    assert "hubspot_owner_id" not in unread.properties
    assert set(unread.kept) == {"company", "owner"}
    # Read back (and, say, ignored: not a rep): until accepted, leadflow's owner.
    pulled = {"hubspot_owner_id": "9"}
    before_accept = m.merge(mapping, ours, crm_now, pushed, "routed", pulled)
    assert before_accept.properties["hubspot_owner_id"] == "2"
    assert "company" not in before_accept.properties and before_accept.kept == ["company"]
    after = m.merge(mapping, ours, crm_now, pushed, "accepted", pulled)
    assert "hubspot_owner_id" not in after.properties and set(after.kept) == {"company", "owner"}
    assert after.properties["leadflow_score"] == 80  # leadflow_wins: always leadflow's
    # Nobody touched the CRM: leadflow's new values go, crm_wins or not.
    untouched = m.merge(mapping, {"company": "Acme Inc"}, {"company": "Acme"}, pushed, "accepted")
    assert untouched.properties == {"company": "Acme Inc"} and untouched.kept == []


def test_a_value_leadflow_dropped_is_cleared_unless_a_person_set_another() -> None:
    mapping, _ = m.load_mapping("hubspot")
    pushed = {"hubspot_owner_id": "1", "leadflow_routing_reason": "rule x"}
    # Recycled: leadflow released the owner and the reason.
    cleared = m.merge(mapping, {}, dict(pushed), pushed, "nurturing", pushed)
    assert cleared.properties == {"hubspot_owner_id": None, "leadflow_routing_reason": None}
    # A person gave it an owner in HubSpot meanwhile: theirs stays.
    theirs = m.merge(mapping, {}, {**pushed, "hubspot_owner_id": "7"}, pushed, "nurturing")
    assert theirs.properties == {"leadflow_routing_reason": None}


def test_a_record_that_exists_before_leadflow_keeps_what_people_set() -> None:
    """Read before the first write: a contact that already held a company keeps it
    (crm_wins), and no default overwrites a real value."""
    mapping, _ = m.load_mapping("salesforce")
    ours = {"Company": "acme", "Leadflow_Score__c": 70.0}
    existing = m.merge(mapping, ours, {"Company": "Acme Corp", "LastName": "Ng"}, None, "mql")
    assert existing.properties == {"Leadflow_Score__c": 70.0} and existing.kept == ["company"]


def test_create_fills_required_defaults() -> None:
    mapping, _ = m.load_mapping("salesforce")
    merged = m.merge(mapping, {"Email": "x@example.com"}, None, None, "routed")
    assert merged.properties["LastName"] == "[not provided]"
    assert merged.properties["Company"] == "[not provided]"
    record = m.record(7, mapping, merged.properties, "x@example.com")
    assert record.key == "7" and record.properties["Leadflow_Id__c"] == "7"


def test_a_broken_mapping_stops_a_run_before_anything_moves_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks import rules_check

    (tmp_path / "crm").mkdir()
    _write(tmp_path / "crm", BASE + "  scroe: s\n  score: {to: t, policy: x}\n")
    monkeypatch.setenv("LEADFLOW_RULES_DIR", str(tmp_path))
    monkeypatch.delenv(m.ENV, raising=False)
    with pytest.raises(ConfigError) as caught:
        rules_check.crm()
    message = str(caught.value)
    assert "\n" not in message and "hubspot.yaml" in message
    assert "fields.score.policy" in message and "crm_wins_after_accept" in message


def test_a_mistake_in_a_mapping_that_is_off_stops_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "crm").mkdir()
    _write(tmp_path / "crm", BASE.replace("fields:", "enabled: false\nfields:") + "  scroe: s\n")
    monkeypatch.setenv("LEADFLOW_RULES_DIR", str(tmp_path))
    monkeypatch.delenv(m.ENV, raising=False)
    assert m.enabled() == []
    monkeypatch.setenv(m.ENV, "hubspot")  # turned on: now it must be right
    with pytest.raises(ConfigError, match="scroe"):
        m.enabled()


def test_a_value_leadflow_set_out_to_write_is_not_a_persons() -> None:
    """A sync killed after the CRM took its write but before recording it: the value it set
    out to write (pending) is leadflow's, so a later decision still goes (the SIGKILL e2e
    test's case: routed written, then accepted)."""
    mapping, _ = m.load_mapping("salesforce")
    ours = {"Status": "Working - Contacted"}
    crm_now = {"Status": "Open - Not Contacted"}
    lost = m.merge(
        mapping, ours, crm_now, None, "accepted", None, {"Status": "Open - Not Contacted"}
    )
    assert lost.properties == ours and lost.kept == []
    person = m.merge(mapping, ours, crm_now, {"Status": "x"}, "accepted", {"Status": "y"}, None)
    assert person.properties == {} and person.kept == ["status"]
