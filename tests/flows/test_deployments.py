"""Flow run names and the blocks, against a real Prefect API (``prefect deploy`` itself is
in e2e/test_deploy_prefect_yaml.py)."""

import pytest


@pytest.mark.flow
def test_flow_run_names_say_what_ran(database_url, tmp_path):
    from datetime import UTC, datetime

    from prefect.client.orchestration import get_client

    from flows.capture import capture
    from flows.nurture import nurture

    path = tmp_path / "webinar-leads.csv"
    path.write_text("email\nweb@x.com\n")
    captured = capture(path=str(path), source="webinar", return_state=True)
    ticked = nurture(now=datetime(2026, 11, 22, 10, 15, tzinfo=UTC), return_state=True)
    with get_client(sync_client=True) as client:
        names = [client.read_flow_run(s.state_details.flow_run_id).name for s in (captured, ticked)]
    assert names == ["capture-webinar-leads.csv", "nurture-2026-11-22T10:15"]


@pytest.mark.flow
def test_blocks_register_init_and_missing_block_messages(monkeypatch, tmp_path):
    import uuid

    from prefect.settings import PREFECT_API_URL

    from blocks import registry
    from leadflow.settings import get_settings

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    for name in ("DATABASE_URL", "SMTP_HOST", "WEBHOOK_URL", "FIRMOGRAPHICS_URL", "RULES_DIR"):
        monkeypatch.delenv(f"LEADFLOW_{name}", raising=False)
    assert "leadflow-database" in registry.register()
    token = uuid.uuid4().hex
    monkeypatch.setenv("LEADFLOW_CAPTURE_TOKEN", token)
    monkeypatch.setenv("LEADFLOW_SMTP_HOST", "smtp.example.com")
    monkeypatch.setenv("LEADFLOW_SMTP_PASSWORD", "pw-not-shown")
    monkeypatch.setenv("LEADFLOW_RULES_DIR", str(tmp_path))
    report = registry.init(overwrite=True)
    assert report["leadflow-capture-token"].startswith("saved")
    assert report["leadflow-smtp"] == "saved (Leadflow SMTP Notifier)"
    assert report["leadflow"] == "skipped (LEADFLOW_DATABASE_URL is not set)"
    assert registry.init()["leadflow-smtp"].startswith("exists")
    # The token comes from the Secret block, not the environment, once a server is in use.
    monkeypatch.delenv("LEADFLOW_CAPTURE_TOKEN")
    assert registry.capture_token(None)[0] == token
    value, missing = registry.capture_token("no-such-block")
    assert value is None and "no-such-block" in missing and "leadflow blocks init" in missing
    # Workers find the rules folder through its block.
    monkeypatch.delenv("LEADFLOW_RULES_DIR")
    monkeypatch.setenv("LEADFLOW_RULES_BLOCK", "leadflow-rules")
    assert get_settings().rules_dir == tmp_path
    monkeypatch.setenv("LEADFLOW_RULES_BLOCK", "nope")
    with pytest.raises(ValueError, match=r"LEADFLOW_RULES_BLOCK='nope'.*leadflow blocks init"):
        assert get_settings().rules_dir is None  # raises first
