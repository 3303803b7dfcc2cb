"""``peo postmortem``: the story of a quarantined object told from its own memory (the
failure streak, each tier, the restore and its state diff, the sheds, the alerts), as text
and as JSON; and the pure builder behind it (peo.healing.postmortem)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
from clirun import run
from rawsql import raw

import peo
from peo.config import NodeSettings
from peo.core.crypto import SigningKey
from peo.core.cycle.plan import restore, shed
from peo.core.head import head_of
from peo.core.memory import Fold, genesis, instantiation_outcome, make_entry, state_at, verify_chain
from peo.core.model import Action, Context, Entry, Intent
from peo.healing import postmortem
from peo.healing.alerts import AlertSender, alert_payload, incident_for, raise_alert
from peo.store import AppendItem

S = 10**9
T0 = 1_700_000_000 * S
REASON = "restore did not help: 2 failed steps of class ValueError after the restore at seq 9"


def _failed(cls: str, message: str, *, state: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"status": "failed", "error": {"class": cls, "message": message, "retryable": True,
                                                         "traceback": "Traceback ...\n  boom"},
                           "wake": {"until": T0}, "retry_in": S}
    if state:
        out["state"] = state
    return out


def story(memory: Sequence[Entry]) -> list[tuple[Action, dict[str, Any], str]]:
    """Entries 1..: two good steps, a failure that corrupts the state, a shed, a failure on
    another node, a node's restore to seq 2, and a failure after it. ``memory`` is what is
    written so far (for the restore's state)."""
    reentry = (Action.REENTRY, {"trigger": "time"}, "node-a")
    return [
        (Action.EXECUTE, {"status": "ok", "state": {"step": 1, "cache": "warm"}}, "node-a"),
        (Action.EXECUTE, {"status": "ok", "state": {"step": 2}}, "node-a"),
        (Action.DORMANCY, _failed("ValueError", "bad json at line 1\nsecond line",
                                  state={"cache": "corrupt", "poison": [1, 2, 3]}), "node-a"),
        reentry,
        (Action.DORMANCY, shed("memory", until=T0).outcome, "node-a"),
        reentry,
        (Action.DORMANCY, _failed("MemoryError", "out of memory\x1b[2J"), "node-b"),
        reentry,
        (Action.MUTATE, {}, "node-b"),  # the restore: filled in when written (it needs the memory)
        (Action.DORMANCY, _failed("ValueError", "bad json at line 1"), "node-a"),
    ]


def _outcome(action: Action, outcome: dict[str, Any], memory: Sequence[Entry]) -> dict[str, Any]:
    if action is Action.MUTATE and not outcome:
        return restore(2, state_at(memory, 2), reason="3 failures since seq 2", by="node").outcome
    return outcome


def pure_memory() -> list[Entry]:
    key = SigningKey(b"\x02" * 32)
    oid = "obj-7"
    out = [make_entry(key, seq=0, prev=genesis(oid), timestamp=T0, origin_node="client", policy_ref="p",
                      action=Action.INSTANTIATE,
                      outcome=instantiation_outcome(oid, Intent(handler="flaky"), Context()), trace_id=oid)]
    for action, outcome, node in story(out):
        out.append(make_entry(key, seq=len(out), prev=out[-1].hash, timestamp=T0 + len(out) * S, origin_node=node,
                              policy_ref="p", action=action, outcome=_outcome(action, outcome, out), trace_id=oid))
    return out


@attrs.frozen
class Alert:
    incident: str
    sink: str
    attempts: int
    delivered_at: int | None
    last_error: str | None
    next_at: int | None


def test_the_builder_tells_every_part_of_the_story() -> None:
    memory = pure_memory()
    head = postmortem.Head(id="obj-7", status="quarantined", reason=REASON, seq=10, stalls=2,
                           stalled_on=("node-b", "node-c"))
    alerts = [Alert("quarantine:10", "webhook", 2, T0 + 60 * S, "webhook x answered HTTP 500", T0),
              Alert("quarantine:10", "command", 3, None, "alert_command exited with 3", T0 + 99 * S)]
    pm = postmortem.build(memory, head, alerts=alerts)
    assert pm.handler == "flaky" and pm.known_good_seq == 2 and pm.incident == "quarantine:10"
    assert [(f.seq, f.error_class, f.node) for f in pm.failures] == [
        (3, "ValueError", "node-a"), (7, "MemoryError", "node-b"), (10, "ValueError", "node-a")]
    assert pm.failures[0].message == "bad json at line 1"  # the first line only
    assert pm.nodes == ["node-a", "node-b", "node-c"] and pm.error_classes == {"ValueError": 2, "MemoryError": 1}
    [r] = pm.restores
    assert (r.seq, r.from_seq, r.by, r.failures_after) == (9, 2, "node", 1)
    assert r.diff.removed == (("poison", "[1,2,3]"),) and r.diff.changed == (("cache", '"corrupt"', '"warm"'),)
    assert [(s.seq, s.reason) for s in pm.sheds] == [(5, "memory")]
    assert [t.tier for t in pm.tiers] == [1, 2, 3, 4]

    doc = json.loads(json.dumps(pm.as_dict()))
    assert doc["status"] == "quarantined" and doc["reason"] == REASON and doc["known_good_seq"] == 2
    assert doc["streak"]["count"] == 3 and doc["streak"]["start_seq"] == 3 and doc["streak"]["stalls"] == 2
    assert doc["streak"]["failures"][1]["at"] == "2023-11-14T22:13:27.000Z"
    assert doc["restores"][0]["state_diff"] == {"added": {}, "removed": {"poison": "[1,2,3]"},
                                                "changed": {"cache": {"before": '"corrupt"', "after": '"warm"'}}}
    assert doc["alerts"][0]["delivered"] is True and doc["alerts"][1]["last_error"] == "alert_command exited with 3"
    assert doc["config_repairs"] == [] and doc["problem"] is None

    text = pm.render_text()
    for part in ("post-mortem of obj-7 (flaky)", f"quarantined: {REASON}", "seq 2 (the last step that succeeded",
                 "failure streak: 3 failed step(s) from seq 3 to 10", "ValueError x2, MemoryError x1",
                 "on node-a, node-b, node-c", "seq 7", "MemoryError: out of memory",
                 "claims without progress: 2 (on node-b, node-c)",
                 "1. restart in place", "2. recreate elsewhere: ran on 3 nodes", "3. known-good restore",
                 "the last at seq 9 to the state of seq 2 (node)", "4. quarantine and alert",
                 "alert delivered to webhook",
                 "seq 9 at 2023-11-14 22:13:29.000Z on node-b: state set back to seq 2",
                 "- poison (was [1,2,3])", '~ cache: "corrupt" -> "warm"', "seq 5 at", "memory",
                 "webhook (quarantine:10): delivered at", "command (quarantine:10): not delivered after 3"):
        assert part in text, part
    assert "configuration repairs" not in text  # shown only when the node recorded some
    with_repairs = postmortem.build(memory, head, config_repairs=[{"file": "node.toml", "used": "known-good"}])
    assert "configuration repairs" in with_repairs.render_text() and with_repairs.as_dict()["config_repairs"]


def test_an_object_that_is_fine_has_an_empty_streak_and_no_quarantine() -> None:
    memory = pure_memory()[:3]
    pm = postmortem.build(memory, postmortem.Head(id="obj-7", status="runnable", reason=None, seq=2))
    assert pm.failures == () and pm.incident is None and pm.known_good_seq == 2
    text = pm.render_text()
    assert "failure streak: none" in text and "not quarantined" in text and "none recorded" in text


def test_a_long_streak_is_cut_in_the_text_but_whole_in_the_json() -> None:
    key = SigningKey(b"\x03" * 32)
    oid = "obj-8"
    out = [make_entry(key, seq=0, prev=genesis(oid), timestamp=T0, origin_node="c", policy_ref="p",
                      action=Action.INSTANTIATE, outcome=instantiation_outcome(oid, Intent(handler="h"), Context()),
                      trace_id=oid)]
    for i in range(1, 40):
        out.append(make_entry(key, seq=i, prev=out[-1].hash, timestamp=T0 + i * S, origin_node="n", policy_ref="p",
                              action=Action.DORMANCY, outcome=_failed("E", f"failure {i}"), trace_id=oid))
    pm = postmortem.build(out, postmortem.Head(id=oid, status="quarantined", reason="r", seq=39))
    text = pm.render_text()
    assert "... 27 more" in text and "failure 1\n" in text and "failure 39" in text and "failure 20" not in text
    assert len(pm.as_dict()["streak"]["failures"]) == 39


async def _write(client: peo.Client, oid: str) -> None:
    """Append the story's entries under an operator lease, signed with the client's key (the
    node's runtime writes the same entries in real life)."""
    for action, outcome, node in story([]):
        now = time.time_ns()
        claim = await client.store.seize(oid, "test", now=now, lease_ns=30 * S, force=True)
        assert claim is not None
        _, memory = verify_chain(oid, await client.store.entries(oid), client.keyring)
        fold = Fold.of(memory)
        entry = make_entry(client.key, seq=fold.seq + 1, prev=fold.hash, timestamp=now, origin_node=node,
                           policy_ref=client.policy.ref, action=action, outcome=_outcome(action, outcome, memory),
                           trace_id=oid)
        fold.apply(entry)
        [left] = await client.store.append([AppendItem(object_id=oid, token=claim.token, entry=entry,
                                                       head=head_of(fold, now=now), release=True)], now=now)
        assert left is not None


def test_peo_postmortem_tells_a_quarantined_objects_story(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    async def setup() -> str:
        async with peo.Client(store_url) as client:
            oid = await client.submit("flaky", {"n": 1})
            await _write(client, oid)
            row = await client.store.get(oid)
            await client.store.quarantine(oid, REASON, now=time.time_ns())
            _, memory = verify_chain(oid, await client.store.entries(oid), client.keyring)
            incident = incident_for(row.seq)
            payload = alert_payload(oid, handler="flaky", incident=incident, reason=REASON, memory=memory, now=T0)
            await raise_alert(client.store, oid, incident, payload, ["command"], T0)
            await AlertSender().deliver_due(client.store, NodeSettings(alert_command="true"), T0)
            return oid

    oid = asyncio.run(setup())
    code, out, err = run(capsys, "--store", store_url, "postmortem", oid)
    assert code == 0, err
    for part in (f"post-mortem of {oid} (flaky)", f"quarantined: {REASON}", "incident    quarantine:10",
                 "failure streak: 3 failed step(s) from seq 3 to 10", "ValueError x2, MemoryError x1",
                 "2. recreate elsewhere: ran on 2 nodes: node-a, node-b", "state set back to seq 2",
                 "- poison (was [1,2,3])", "sheds", "command (quarantine:10): delivered at"):
        assert part in out, part
    assert "\x1b" not in out and "out of memory\\x1b[2J" in out  # a terminal escape from memory is shown escaped
    code, out, err = run(capsys, "--store", store_url, "postmortem", oid, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["id"] == oid and doc["incident"] == "quarantine:10" and doc["known_good_seq"] == 2
    assert doc["streak"]["error_classes"] == {"ValueError": 2, "MemoryError": 1}
    assert [t["tier"] for t in doc["tiers"]] == [1, 2, 3, 4] and doc["restores"][0]["known_good_seq"] == 2
    assert doc["alerts"] == [{"incident": "quarantine:10", "sink": "command", "attempts": 1, "delivered": True,
                              "delivered_at": "2023-11-14T22:13:20.000Z", "given_up": False, "last_error": None,
                              "next_at": None}]


def test_peo_postmortem_of_an_unknown_or_bad_id_is_a_clear_error(store_url: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    async def setup() -> None:
        async with peo.Client(store_url) as client:
            await client.submit("flaky")

    asyncio.run(setup())
    for bad in ("01a250c5-bca2-7495-817f-4cc97f262c8b", "not an id", "x\x1b[31m", "é" * 300):
        code, out, err = run(capsys, "--store", store_url, "postmortem", bad)
        assert code == 1 and out == "" and err.startswith("peo: error: no object ") and "\x1b" not in err
    code, _, err = run(capsys, "--store", store_url, "postmortem")
    assert code == 2 and "ID" in err
    code, out, _ = run(capsys, "postmortem", "--help")
    assert code == 0 and "failure streak" in out and "--json" in out
    typo = f"sqlite:///{tmp_path / 'typo.db'}"  # a read verb never creates a store
    expected = f"peo: error: no peo store at {typo}; run peo init\n"
    assert run(capsys, "--store", typo, "postmortem", "x") == (1, "", expected)
    assert list(tmp_path.glob("typo.db*")) == []


def test_peo_postmortem_of_a_chain_that_fails_verification_tells_what_verifies(
        store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    async def setup() -> str:
        async with peo.Client(store_url) as client:
            oid = await client.submit("flaky", {"n": 1})
            await _write(client, oid)
        # Behind peo's back: a forged signature on entry 6.
        await raw(store_url, "UPDATE entries SET sig = ? WHERE object_id = ? AND seq = 6", b"\x00" * 64, oid)
        return oid

    oid = asyncio.run(setup())
    code, out, err = run(capsys, "--store", store_url, "postmortem", oid)
    assert code == 1 and "fails verification at seq 6" in err
    assert "warning: the memory fails verification at seq 6" in out
    assert "failure streak: 1 failed step(s) from seq 3 to 3" in out  # the failures before seq 6
