"""The exit code of a route run that leaves owner notices undelivered (3), then 0 once
``leadflow outbox send`` delivers them (the outbox commands are in store/test_outbox_cli.py)."""

from __future__ import annotations

import mailbox

from app import cli

from helpers import NOW, mqls, rules_file


def test_route_exits_3_when_owner_notices_could_not_be_delivered_then_0(
    engine, database_url, tmp_path, capsys
) -> None:
    mqls(engine, ["US", "DE"])
    rules = str(rules_file(tmp_path))
    box = tmp_path / "a-file"
    box.write_text("not a folder: the notifier cannot deliver")
    code = cli.main(
        ["route", "--rules", rules, "--notifier", f"maildir:{box}/x", "--now", NOW.isoformat()]
    )
    out, err = capsys.readouterr()
    assert code == 3
    # Two owner notices and the two leads' booking links, all put back.
    assert "routed 2" in out and "put back 4" in out and "outbox: 0 due, 4 waiting" in out
    assert "left undelivered" in err and "None" not in out
    code = cli.main(
        [
            "outbox",
            "send",
            "--notifier",
            f"maildir:{tmp_path}/box",
            "--now",
            "2026-11-02T15:05:00+00:00",
        ]
    )
    assert code == 0 and len(mailbox.Maildir(tmp_path / "box")) == 4
