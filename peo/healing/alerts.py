"""Tier 4 of self-healing: alert a human, once per quarantine (docs/operations.md, "Alerts
and post-mortems").

When a node quarantines an object because restoring it did not help, it builds the alert
(:func:`alert_payload`: the object, the reason, the failure streak in brief, the tiers
tried, and the ``peo postmortem ID`` to run) and records it in the store with
:func:`raise_alert`: one row per sink of its profile (``alert_command``, ``alert_webhook``),
keyed by (object, incident, sink), so that raising the same incident twice records it
once. The incident of a quarantine is ``quarantine:SEQ`` (:func:`incident_for`): the same
quarantine never alerts twice, and a later one (after ``peo resume``) alerts again.

Delivery is separate: :class:`AlertSender` takes the rows that are due (the store leases
them for about 30 s, so that two nodes do not take one row at once), delivers each to its
sink, and records the outcome. A command gets the JSON on stdin (run without a shell, with
a timeout; exit 0 is delivered); a webhook gets it as an HTTP POST (a 2xx answer is
delivered). A failed attempt is retried with exponential backoff (5 s doubling to 1 h),
and given up after :data:`MAX_ATTEMPTS`. Since the outcome is recorded in the store, a
node restart neither loses an alert nor repeats a delivered one. One window remains: a
node that dies after a sink accepted the alert and before the store recorded it leaves
the row to be delivered again, so a webhook carries an ``Idempotency-Key`` header
(``OBJECT:INCIDENT``) and a command the ``PEO_ALERT_KEY`` variable, for a receiver that
must drop duplicates. Nothing here raises into the node: a failing sink is logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..core.model import Entry
from . import postmortem

if TYPE_CHECKING:
    from ..store.base import AlertRow, Store

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_MAX",
    "GIVEN_UP_AT",
    "MAX_ATTEMPTS",
    "SINKS",
    "AlertSender",
    "alert_doc",
    "alert_payload",
    "backoff_ns",
    "incident_for",
    "raise_alert",
    "sinks_from",
]

log = logging.getLogger("peo.healing.alerts")

#: The sinks a node profile may configure, by the setting that names each.
SINKS: Mapping[str, str] = {"command": "alert_command", "webhook": "alert_webhook"}
#: Backoff between attempts: BACKOFF_BASE seconds, doubling, at most BACKOFF_MAX.
BACKOFF_BASE = 5.0
BACKOFF_MAX = 3600.0
#: Attempts per delivery before it is given up (about 11 hours of retries).
MAX_ATTEMPTS = 20
#: The ``next_at`` of a delivery given up: never due again (``Store.alert_attempted`` keeps
#: the lease's end as the retry time when given none).
GIVEN_UP_AT = postmortem.GIVEN_UP_AT
#: Seconds a command or a webhook may take (well under the store's ~30 s lease on a row).
SINK_TIMEOUT = 10.0
#: How many failures an alert lists (the post-mortem has them all).
_ALERT_FAILURES = 5
_NS = 1_000_000_000


class SettingsLike(Protocol):
    """What the alert sinks read of ``peo.config.NodeSettings``."""

    @property
    def alert_command(self) -> str | None: ...
    @property
    def alert_webhook(self) -> str | None: ...


def sinks_from(settings: SettingsLike) -> list[str]:
    """The sinks ``settings`` configure: "command", "webhook", both or none."""
    return [sink for sink, attr in SINKS.items() if getattr(settings, attr, None)]


def incident_for(seq: int) -> str:
    """The incident key of a quarantine of an object whose head is at ``seq``."""
    return f"quarantine:{seq}"


def backoff_ns(attempts: int) -> int:
    """The delay after the ``attempts``-th failed attempt (>= 1): 5 s, 10 s, ... at most 1 h."""
    return int(min(BACKOFF_BASE * 2.0 ** min(max(attempts - 1, 0), 32), BACKOFF_MAX) * _NS)


def _seq_of(incident: str) -> int:
    tail = incident.rpartition(":")[2]
    return int(tail) if tail.isdigit() else -1


def alert_doc(object_id: str, *, handler: str, incident: str, reason: str, memory: Sequence[Entry],
              stalls: int = 0, stalled_on: Sequence[str] | str | None = (), node: str | None = None,
              now: int) -> dict[str, Any]:
    """The alert as plain data (see :func:`alert_payload`)."""

    head = postmortem.Head(id=object_id, status="quarantined", reason=reason, seq=_seq_of(incident),
                           handler=handler, stalls=stalls, stalled_on=postmortem.stalled_nodes(stalled_on))
    pm = postmortem.build(memory, head)
    summary = pm.summary()
    failures = [f.as_dict() for f in pm.failures]
    summary["failures"] = failures[:_ALERT_FAILURES // 2 + 1] + failures[-(_ALERT_FAILURES // 2):] \
        if len(failures) > _ALERT_FAILURES else failures
    return {
        "kind": "peo.alert",
        "version": 1,
        "event": "quarantined",
        "object_id": object_id,
        "handler": handler,
        "incident": incident,
        "reason": reason[:2000],
        "node": node,
        "at": postmortem.iso(now),
        "at_ns": now,
        "seq": pm.seq,
        "known_good_seq": pm.known_good_seq,
        "streak": summary,
        "restores": [{"seq": r.seq, "known_good_seq": r.from_seq, "by": r.by, "reason": r.reason,
                      "failures_after": r.failures_after} for r in pm.restores],
        "tiers": [t.as_dict() for t in pm.tiers[:3]],
        "postmortem": f"peo postmortem {object_id}",
    }


def alert_payload(object_id: str, *, handler: str, incident: str, reason: str, memory: Sequence[Entry],
                  stalls: int = 0, stalled_on: Sequence[str] | str | None = (), node: str | None = None,
                  now: int) -> bytes:
    """The alert of a quarantine as JSON bytes (what a command reads on stdin and a webhook
    receives): the object, its handler, the ``incident``, the ``reason``, the failure streak
    in brief (count, error classes, nodes, first and last time, the last error), the
    known-good seq, the restores and what each tier tried, and the post-mortem command.
    ``memory`` is the object's verified memory from seq 0; ``stalls`` and ``stalled_on``
    the store's count of claims without progress and their nodes; ``node`` the node
    quarantining it."""
    doc = alert_doc(object_id, handler=handler, incident=incident, reason=reason, memory=memory, stalls=stalls,
                    stalled_on=stalled_on, node=node, now=now)
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), default=str).encode()


async def raise_alert(store: Store, object_id: str, incident: str, payload: bytes, sinks: Sequence[str],
                      now: int) -> int:
    """Record the alert for delivery to each of ``sinks`` (``Store.add_alert``): at most one
    row per (object, incident, sink), however often this is called. Returns how many rows
    were new. With no sinks nothing is recorded and a warning says so. A store error
    propagates (the caller decides whether to retry; nothing is half-written)."""
    if not sinks:
        log.warning("alert_not_sent object=%s incident=%s: no alert sinks configured (set alert_command or "
                    "alert_webhook in the node profile); see `peo postmortem %s`", object_id, incident, object_id)
        return 0
    added = int(await store.add_alert(object_id, incident, list(sinks), payload, now=now))
    if added:
        log.warning("alert_raised object=%s incident=%s sinks=%s", object_id, incident, ",".join(sinks))
    return added


class AlertSender:
    """Delivers the alerts that are due, one attempt per row per call (see the module)."""

    def __init__(self, *, timeout: float = SINK_TIMEOUT, max_attempts: int = MAX_ATTEMPTS,
                 node_id: str | None = None) -> None:
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.node_id = node_id

    async def deliver_due(self, store: Store, settings: SettingsLike, now: int) -> int:
        """Deliver every alert due at ``now`` (``Store.due_alerts``), all at once so that the
        batch ends well within the store's lease on its rows, and record each outcome
        (``Store.alert_attempted``). Returns how many were delivered. Never raises (except
        on cancellation): a store or sink failure is logged."""
        try:
            rows = await store.due_alerts(now=now)
        except Exception as exc:
            log.warning("alerts_unreadable error=%s: %s (will try again)", type(exc).__name__, exc)
            return 0
        if not rows:
            return 0
        done = await asyncio.gather(*(self._one(store, settings, row, now) for row in rows))
        return sum(done)

    async def _one(self, store: Store, settings: SettingsLike, row: AlertRow, now: int) -> bool:
        where = f"object={row.object_id} incident={row.incident} sink={row.sink}"
        try:
            error = await self.send(row.sink, settings, row.payload, key=f"{row.object_id}:{row.incident}")
        except Exception as exc:  # a bug in a sink must not stop the others
            error = f"{type(exc).__name__}: {exc}"
        attempt = int(row.attempts) + 1
        try:
            if error is None:
                await store.alert_attempted(row.object_id, row.incident, row.sink, now=now, delivered=True)
                log.info("alert_delivered %s attempt=%d", where, attempt)
                return True
            if attempt >= self.max_attempts:
                await store.alert_attempted(row.object_id, row.incident, row.sink, now=now, delivered=False,
                                            error=error[:2000], next_at=GIVEN_UP_AT)
                log.error("alert_given_up %s attempts=%d error=%s: nobody was told; run `peo postmortem %s`",
                          where, attempt, error, row.object_id)
                return False
            delay = backoff_ns(attempt)
            await store.alert_attempted(row.object_id, row.incident, row.sink, now=now, delivered=False,
                                        error=error[:2000], next_at=now + delay)
            log.warning("alert_failed %s attempt=%d of %d error=%s retry_in=%.0fs", where, attempt,
                        self.max_attempts, error, delay / _NS)
        except Exception as exc:
            log.warning("alert_not_recorded %s error=%s: %s (the row is retried once its lease ends)",
                        where, type(exc).__name__, exc)
        return False

    async def send(self, sink: str, settings: SettingsLike, payload: bytes, *, key: str) -> str | None:
        """Deliver ``payload`` to one sink of ``settings``: None if delivered, else why not."""
        if sink not in SINKS:
            return f"unknown alert sink {sink!r}"
        target = getattr(settings, SINKS[sink], None)
        if not target:
            return f"this node ({self.node_id or '?'}) has no {SINKS[sink]} configured"
        if sink == "command":
            return await self._command(target, payload, key)
        return await self._webhook(target, payload, key)

    async def _command(self, command: str, payload: bytes, key: str) -> str | None:
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            return f"alert_command does not parse: {exc}"
        if not argv:
            return "alert_command is empty"
        env = {**os.environ, "PEO_ALERT_KEY": key}
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                        stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.PIPE, env=env)
        except OSError as exc:
            return f"alert_command {argv[0]!r} cannot be started: {exc.strerror or exc}"
        try:
            _, err = await asyncio.wait_for(proc.communicate(payload), self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return f"alert_command did not finish within {self.timeout:g} s (killed)"
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if proc.returncode != 0:
            tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] if err else []
            return f"alert_command exited with {proc.returncode}" + (f": {tail[0][:300]}" if tail else "")
        return None

    async def _webhook(self, url: str, payload: bytes, key: str) -> str | None:
        try:
            import httpx
        except ImportError:
            return "the webhook sink needs httpx, which is not installed (pip install httpx)"

        headers = {"content-type": "application/json", "user-agent": "peo-alerts", "idempotency-key": key}
        try:
            async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as client:
                resp = await client.post(url, content=payload, headers=headers)
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            return f"webhook {url} unreachable: {type(exc).__name__}: {exc or 'no detail'}"
        if 200 <= resp.status_code < 300:
            return None
        return f"webhook {url} answered HTTP {resp.status_code}"

    async def run_forever(self, store: Store, settings: SettingsLike, *, interval: float = 5.0,
                          clock: Callable[[], int] = time.time_ns) -> None:
        """Deliver due alerts every ``interval`` seconds until cancelled (a node background
        task). Never raises but CancelledError."""
        while True:
            try:
                await self.deliver_due(store, settings, clock())
            except Exception:  # deliver_due logs its own failures; this is a last resort
                log.exception("alert_sender_error")
            await asyncio.sleep(interval)
