"""Alerts of a quarantine (peo.healing.alerts): recorded once per incident and sink, delivered
to a real local webhook and to a command, retried with backoff, and never raised into the
node. Time is injected: no test sleeps for a backoff."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest

from peo.config import NodeSettings
from peo.core.crypto import SigningKey
from peo.core.memory import genesis, instantiation_outcome, make_entry
from peo.core.model import Action, Context, Entry, Intent
from peo.healing import alerts
from peo.healing.alerts import AlertSender, alert_payload, backoff_ns, incident_for, raise_alert, sinks_from
from peo.store import open_store
from peo.store.base import Store

S = 10**9
T0 = 1_700_000_000 * S


class Endpoint:
    """An HTTP server on 127.0.0.1 that records each POST and answers the next status of
    ``statuses`` (then 200)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Endpoint:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if lines[0].startswith("POST "):
                self.posts.append((headers, body))
            status = self.statuses.pop(0) if self.statuses else 200
            writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".encode())
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = open_store(store_url)
    await s.open()
    yield s
    await s.aclose()


def _memory() -> list[Entry]:
    """A small memory: entry 0, a step that succeeded, two failed steps on two nodes."""
    key = SigningKey(b"\x01" * 32)
    oid = "obj-1"
    out: list[Entry] = []

    def add(action: Action, outcome: dict[str, object], node: str) -> None:
        prev = out[-1].hash if out else genesis(oid)
        out.append(make_entry(key, seq=len(out), prev=prev, timestamp=T0 + len(out) * S, origin_node=node,
                              policy_ref="p", action=action, outcome=outcome, trace_id=oid))

    add(Action.INSTANTIATE, instantiation_outcome(oid, Intent(handler="flaky"), Context()), "client")
    add(Action.EXECUTE, {"status": "ok", "state": {"n": 1}}, "node-a")
    for node, cls in (("node-a", "ValueError"), ("node-b", "memory")):
        add(Action.DORMANCY, {"status": "failed", "error": {"class": cls, "message": f"{cls} here\nsecond line",
                                                            "retryable": True}, "wake": {"until": T0}}, node)
    return out


def _payload(object_id: str = "obj-1", seq: int = 3) -> bytes:
    return alert_payload(object_id, handler="flaky", incident=incident_for(seq), reason="restore did not help",
                         memory=_memory(), stalls=2, stalled_on=("node-b", "node-a"), node="node-b", now=T0)


def test_the_payload_carries_the_streak_and_the_postmortem_hint() -> None:
    doc = json.loads(_payload())
    assert doc["object_id"] == "obj-1" and doc["handler"] == "flaky" and doc["incident"] == "quarantine:3"
    assert doc["reason"] == "restore did not help" and doc["node"] == "node-b"
    streak = doc["streak"]
    assert streak["count"] == 2 and streak["error_classes"] == {"ValueError": 1, "memory": 1}
    assert streak["nodes"] == ["node-a", "node-b"] and streak["stalls"] == 2
    assert streak["first_at"].startswith("2023-11-14T22:13:22") and streak["last_error"]["message"] == "memory here"
    assert doc["known_good_seq"] == 1 and doc["postmortem"] == "peo postmortem obj-1"
    assert [t["tier"] for t in doc["tiers"]] == [1, 2, 3]


def test_sinks_come_from_the_settings() -> None:
    assert sinks_from(NodeSettings()) == []
    assert sinks_from(NodeSettings(alert_command="cat", alert_webhook="http://x")) == ["command", "webhook"]
    assert sinks_from(NodeSettings(alert_webhook="http://x")) == ["webhook"]
    assert [backoff_ns(n) // S for n in (1, 2, 3, 11, 50)] == [5, 10, 20, 3600, 3600]


async def test_one_incident_is_posted_once_however_often_it_is_raised_and_delivered(store: Store) -> None:
    async with Endpoint() as hook:
        settings = NodeSettings(alert_webhook=hook.url)
        payload = _payload()
        assert await raise_alert(store, "obj-1", "quarantine:3", payload, sinks_from(settings), T0) == 1
        assert await raise_alert(store, "obj-1", "quarantine:3", payload, sinks_from(settings), T0 + S) == 0
        sender = AlertSender()
        assert await sender.deliver_due(store, settings, T0 + 2 * S) == 1
        assert await sender.deliver_due(store, settings, T0 + 3600 * S) == 0
        # A node restarted: a new sender on the same store delivers nothing again.
        assert await AlertSender().deliver_due(store, settings, T0 + 7200 * S) == 0
        assert len(hook.posts) == 1
        headers, body = hook.posts[0]
        assert body == payload and headers["content-type"] == "application/json"
        assert headers["idempotency-key"] == "obj-1:quarantine:3"
        # A later quarantine of the same object (after peo resume) alerts again.
        assert await raise_alert(store, "obj-1", "quarantine:9", payload, ["webhook"], T0 + 8000 * S) == 1
        assert await sender.deliver_due(store, settings, T0 + 8000 * S) == 1
        assert len(hook.posts) == 2
    [first, second] = await store.alerts("obj-1")
    assert first.delivered_at == T0 + 2 * S and first.attempts == 1 and second.incident == "quarantine:9"


async def test_a_failing_webhook_is_retried_after_its_backoff_and_recorded_delivered(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="peo.healing.alerts")
    async with Endpoint([500]) as hook:
        settings = NodeSettings(alert_webhook=hook.url)
        await raise_alert(store, "obj-1", "quarantine:3", _payload(), ["webhook"], T0)
        sender = AlertSender()
        assert await sender.deliver_due(store, settings, T0) == 0
        [row] = await store.alerts("obj-1")
        assert row.attempts == 1 and row.delivered_at is None and row.next_at == T0 + 5 * S
        assert row.last_error is not None and "HTTP 500" in row.last_error
        assert await sender.deliver_due(store, settings, T0 + 4 * S) == 0  # not due yet
        assert len(hook.posts) == 1
        assert await sender.deliver_due(store, settings, T0 + 5 * S) == 1
        assert len(hook.posts) == 2
    [row] = await store.alerts("obj-1")
    assert row.attempts == 2 and row.delivered_at == T0 + 5 * S
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "alert_failed" in logged and "HTTP 500" in logged and "alert_delivered" in logged


async def test_an_unreachable_webhook_is_a_recorded_failure_never_an_exception(store: Store) -> None:
    # A port nothing listens on: bind one, then close it.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    settings = NodeSettings(alert_webhook=f"http://127.0.0.1:{port}/hook")
    await raise_alert(store, "obj-1", "quarantine:3", _payload(), ["webhook"], T0)
    assert await AlertSender(timeout=5).deliver_due(store, settings, T0) == 0
    [row] = await store.alerts("obj-1")
    assert row.attempts == 1 and row.delivered_at is None and row.next_at == T0 + 5 * S
    assert row.last_error is not None and "unreachable" in row.last_error
    # A URL that is not one is a failure too.
    bad = NodeSettings(alert_webhook="not a url")
    assert await AlertSender().deliver_due(store, bad, T0 + 5 * S) == 0
    [row] = await store.alerts("obj-1")
    assert row.attempts == 2 and row.next_at == T0 + 15 * S


async def test_a_delivery_that_keeps_failing_is_given_up(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    settings = NodeSettings(alert_command=f"{sys.executable} -c 'raise SystemExit(3)'")
    await raise_alert(store, "obj-1", "quarantine:3", _payload(), ["command"], T0)
    sender = AlertSender(max_attempts=3)
    now = T0
    for attempt in range(1, 4):
        assert await sender.deliver_due(store, settings, now) == 0
        [row] = await store.alerts("obj-1")
        assert row.attempts == attempt
        if attempt < 3:
            now = row.next_at
    assert row.next_at >= alerts.GIVEN_UP_AT and row.delivered_at is None
    assert await store.due_alerts(now=now + 50 * 365 * 86400 * S) == []  # never due again (for 90 years)
    assert any("alert_given_up" in r.getMessage() for r in caplog.records)


def _recorder(tmp_path: Path) -> str:
    script = tmp_path / "record.py"
    script.write_text("import os, sys\n"
                      "with open(sys.argv[1], 'ab') as f:\n"
                      "    f.write(sys.stdin.buffer.read() + b'\\n' + os.environ['PEO_ALERT_KEY'].encode() + b'\\n')\n")
    return f"{sys.executable} {script} '{tmp_path / 'got dir' / 'alerts.log'}'"


async def test_a_command_sink_gets_the_json_on_stdin_once(store: Store, tmp_path: Path) -> None:
    (tmp_path / "got dir").mkdir()
    settings = NodeSettings(alert_command=_recorder(tmp_path))
    payload = _payload()
    await raise_alert(store, "obj-1", "quarantine:3", payload, sinks_from(settings), T0)
    await raise_alert(store, "obj-1", "quarantine:3", payload, sinks_from(settings), T0)
    sender = AlertSender()
    assert await sender.deliver_due(store, settings, T0) == 1
    assert await sender.deliver_due(store, settings, T0 + 10**6 * S) == 0
    assert (tmp_path / "got dir" / "alerts.log").read_bytes() == payload + b"\nobj-1:quarantine:3\n"
    [row] = await store.alerts("obj-1")
    assert row.sink == "command" and row.delivered_at == T0


async def test_a_failing_command_is_a_recorded_failure(store: Store, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    script = tmp_path / "fail.py"
    script.write_text("import sys\nsys.stdin.read()\nprint('pager service down', file=sys.stderr)\nsys.exit(3)\n")
    settings = NodeSettings(alert_command=f"{sys.executable} {script}")
    await raise_alert(store, "obj-1", "quarantine:3", _payload(), ["command"], T0)
    assert await AlertSender().deliver_due(store, settings, T0) == 0
    [row] = await store.alerts("obj-1")
    assert row.attempts == 1 and row.delivered_at is None and row.next_at == T0 + 5 * S
    assert row.last_error == "alert_command exited with 3: pager service down"
    assert any("alert_failed" in r.getMessage() and "exited with 3" in r.getMessage() for r in caplog.records)
    # A command that does not exist, or does not parse, is a failure with its reason.
    for command, why in (("/nonexistent/alert-tool", "cannot be started"), ("echo 'unclosed", "does not parse")):
        await raise_alert(store, "obj-2", command, _payload("obj-2"), ["command"], T0)
        assert await AlertSender().deliver_due(store, attrs.evolve(settings, alert_command=command), T0) == 0
        row = next(r for r in await store.alerts("obj-2") if r.incident == command)
        assert row.last_error is not None and why in row.last_error


async def test_a_command_that_hangs_is_killed_at_the_timeout(store: Store) -> None:
    settings = NodeSettings(alert_command=f"{sys.executable} -c 'import time; time.sleep(60)'")
    await raise_alert(store, "obj-1", "quarantine:3", _payload(), ["command"], T0)
    assert await AlertSender(timeout=0.5).deliver_due(store, settings, T0) == 0
    [row] = await store.alerts("obj-1")
    assert row.last_error is not None and "did not finish within 0.5 s" in row.last_error


async def test_no_sinks_records_nothing_and_says_so(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    assert await raise_alert(store, "obj-1", "quarantine:3", _payload(), [], T0) == 0
    assert await store.alerts("obj-1") == []
    assert any("no alert sinks configured" in r.getMessage() for r in caplog.records)


async def test_a_sink_this_node_lacks_and_a_store_that_fails_are_logged_not_raised(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    await raise_alert(store, "obj-1", "quarantine:3", _payload(), ["webhook"], T0)
    assert await AlertSender(node_id="n1").deliver_due(store, NodeSettings(), T0) == 0
    [row] = await store.alerts("obj-1")
    assert row.last_error == "this node (n1) has no alert_webhook configured"

    class Broken:
        async def due_alerts(self, **kw: object) -> list[object]:
            raise OSError("disk on fire")

    assert await AlertSender().deliver_due(Broken(), NodeSettings(), T0) == 0
    assert any("alerts_unreadable" in r.getMessage() for r in caplog.records)


async def test_run_forever_delivers_until_cancelled(store: Store, tmp_path: Path) -> None:
    (tmp_path / "got dir").mkdir()
    settings = NodeSettings(alert_command=_recorder(tmp_path))
    await raise_alert(store, "obj-1", "quarantine:3", _payload(), ["command"], T0)
    task = asyncio.create_task(AlertSender().run_forever(store, settings, interval=0.01, clock=lambda: T0))
    try:
        for _ in range(500):
            if (await store.alerts("obj-1"))[0].delivered_at is not None:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert (await store.alerts("obj-1"))[0].delivered_at == T0
