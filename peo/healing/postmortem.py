"""The post-mortem of an object, told from its own memory (``peo postmortem``; pure).

:func:`build` takes what a reader already has: the object's verified memory (entries from
seq 0), its stored head (status, reason, and the store's count of claims that ended
without progress and on which nodes) and its alert deliveries. It answers a
:class:`PostMortem`: the failure streak (every failed entry since the last step that
succeeded, with its error class, node and time), each tier of self-healing and how it
ended, each restore with the known-good seq it went back to and the state it changed,
the sheds, the quarantine and the alerts. :meth:`PostMortem.render_text` is for people,
:meth:`PostMortem.as_dict` for programs (plain JSON-able data; times as ns since the epoch
and ISO 8601 text). Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..core.memory import Fold, state_at
from ..core.model import Action, Entry

__all__ = [
    "GIVEN_UP_AT",
    "AlertRecord",
    "Failure",
    "Head",
    "PostMortem",
    "RestoreRecord",
    "ShedRecord",
    "StateDiff",
    "Tier",
    "build",
    "failure_entries",
    "iso",
    "stalled_nodes",
]

#: How long a value or a message may be in a post-mortem (longer ones are cut, with "…").
VALUE_CHARS = 80
MESSAGE_CHARS = 200
#: How many failures the text shows in full (the first and the newest; the JSON has them all).
TEXT_FAILURES = 12
#: The ``next_at`` of an alert delivery that was given up (never due again: year 2116).
GIVEN_UP_AT = 1 << 62
#: Statuses of an entry that records a failed step.
FAILED_STATUSES = frozenset({"failed", "refused", "invalid"})


def _cut(text: object, limit: int) -> str:
    s = str(text)
    return s if len(s) <= limit else s[: max(limit - 1, 0)] + "…"


def _value(value: Any) -> str:
    """A state value, as one short line of JSON."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return _cut(text, VALUE_CHARS)


def iso(ns: int | None) -> str | None:
    """A time (ns since the epoch) as ISO 8601 text in UTC, to the millisecond."""
    if ns is None:
        return None
    return _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _timed(record: Any) -> dict[str, Any]:
    """An attrs record with an ``at`` (ns) as a dict, ``at`` in ISO 8601 and ns (``at_ns``)."""
    doc: dict[str, Any] = attrs.asdict(record, recurse=False)
    doc["at"], doc["at_ns"] = iso(record.at), record.at
    return doc


def _when(ns: int | None) -> str:
    return (iso(ns) or "-").replace("T", " ")


@attrs.frozen
class Head:
    """A stored head as :func:`build` reads it, for a caller without a store row (a node
    about to quarantine an object builds one for the alert)."""

    id: str
    status: str
    reason: str | None
    seq: int
    handler: str | None = None
    stalls: int = 0
    stalled_on: tuple[str, ...] = ()


@attrs.frozen
class Failure:
    """One failed entry: a step that raised, timed out or proposed what was refused."""

    seq: int
    at: int
    node: str
    action: str
    error_class: str
    message: str  # the first line, cut short
    retryable: bool | None

    def as_dict(self) -> dict[str, Any]:
        return _timed(self)


@attrs.frozen
class StateDiff:
    """What a restore changed in the working state: keys added, removed and changed (with
    the values before and after, cut short)."""

    added: tuple[tuple[str, str], ...] = ()
    removed: tuple[tuple[str, str], ...] = ()
    changed: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def between(cls, before: Mapping[str, Any], after: Mapping[str, Any]) -> StateDiff:
        return cls(
            added=tuple((k, _value(after[k])) for k in sorted(after) if k not in before),
            removed=tuple((k, _value(before[k])) for k in sorted(before) if k not in after),
            changed=tuple((k, _value(before[k]), _value(after[k])) for k in sorted(before)
                          if k in after and before[k] != after[k]),
        )

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def as_dict(self) -> dict[str, Any]:
        return {"added": {k: v for k, v in self.added}, "removed": {k: v for k, v in self.removed},
                "changed": {k: {"before": b, "after": a} for k, b, a in self.changed}}

    def lines(self) -> list[str]:
        return ([f"+ {k} = {v}" for k, v in self.added] + [f"- {k} (was {v})" for k, v in self.removed]
                + [f"~ {k}: {b} -> {a}" for k, b, a in self.changed])


@attrs.frozen
class RestoreRecord:
    """A restore entry: the state set back to what it was after ``from_seq``."""

    seq: int
    at: int
    node: str
    from_seq: int | None
    reason: str
    by: str
    diff: StateDiff
    failures_after: int  # failed entries after it

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": iso(self.at), "at_ns": self.at, "node": self.node,
                "known_good_seq": self.from_seq, "reason": self.reason, "by": self.by,
                "state_diff": self.diff.as_dict(), "failures_after": self.failures_after}


@attrs.frozen
class ShedRecord:
    """A node put the object to sleep at a step boundary (e.g. reason ``memory``)."""

    seq: int
    at: int
    node: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return _timed(self)


@attrs.frozen
class AlertRecord:
    """One alert delivery (one incident, one sink) as the store recorded it."""

    incident: str
    sink: str
    attempts: int
    delivered_at: int | None
    last_error: str | None
    next_at: int | None

    @property
    def given_up(self) -> bool:
        return self.delivered_at is None and self.next_at is not None and self.next_at >= GIVEN_UP_AT

    @property
    def outcome(self) -> str:
        if self.delivered_at is not None:
            return f"delivered at {_when(self.delivered_at)} (attempt {self.attempts})"
        if self.attempts == 0:
            return "pending (not tried yet)"
        if self.given_up:
            return f"given up after {self.attempts} attempt(s): {_cut(self.last_error or '?', MESSAGE_CHARS)}"
        return f"not delivered after {self.attempts} attempt(s): {_cut(self.last_error or '?', MESSAGE_CHARS)}"

    def as_dict(self) -> dict[str, Any]:
        return {"incident": self.incident, "sink": self.sink, "attempts": self.attempts,
                "delivered": self.delivered_at is not None, "delivered_at": iso(self.delivered_at),
                "given_up": self.given_up, "last_error": self.last_error,
                "next_at": None if self.given_up or self.delivered_at is not None else iso(self.next_at)}


@attrs.frozen
class Tier:
    """What one tier of self-healing tried, and how that ended."""

    tier: int
    name: str
    tried: str
    ended: str

    def as_dict(self) -> dict[str, Any]:
        return {"tier": self.tier, "name": self.name, "tried": self.tried, "ended": self.ended}


@attrs.frozen
class PostMortem:
    """The whole story of one object (see :func:`build`)."""

    object_id: str
    handler: str
    status: str
    reason: str | None
    seq: int
    known_good_seq: int | None  # the last checkpoint, else the last step that succeeded before the streak
    streak_start: int | None  # the first failed seq of the streak (None: no streak)
    failures: tuple[Failure, ...]  # the streak
    earlier_failures: int  # failed entries before the streak (recovered from)
    stalls: int
    stalled_on: tuple[str, ...]
    restores: tuple[RestoreRecord, ...]
    sheds: tuple[ShedRecord, ...]
    tiers: tuple[Tier, ...]
    alerts: tuple[AlertRecord, ...]
    config_repairs: tuple[Mapping[str, Any], ...] = ()  # filled by the node (tier 3's configuration repair)
    incident: str | None = None  # the quarantine's alert incident key
    problem: str | None = None  # the memory could not all be read (e.g. it fails verification at seq N)
    known_good_is_checkpoint: bool = False  # known_good_seq is a checkpoint its handler marked

    @property
    def error_classes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for f in self.failures:
            counts[f.error_class] = counts.get(f.error_class, 0) + 1
        return counts

    @property
    def nodes(self) -> list[str]:
        """Every node the streak failed or stalled on, in order of first appearance."""
        seen: dict[str, None] = {}
        for name in [*(f.node for f in self.failures), *self.stalled_on]:
            seen.setdefault(name, None)
        return list(seen)

    def summary(self) -> dict[str, Any]:
        """The failure streak in brief (what an alert carries)."""
        first = self.failures[0] if self.failures else None
        last = self.failures[-1] if self.failures else None
        return {
            "count": len(self.failures),
            "error_classes": self.error_classes,
            "nodes": self.nodes,
            "first_at": iso(first.at) if first else None,
            "last_at": iso(last.at) if last else None,
            "last_error": {"class": last.error_class, "message": last.message, "seq": last.seq} if last else None,
            "stalls": self.stalls,
            "stalled_on": list(self.stalled_on),
        }

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.object_id,
            "handler": self.handler,
            "status": self.status,
            "reason": self.reason,
            "seq": self.seq,
            "incident": self.incident,
            "known_good_seq": self.known_good_seq,
            "known_good_is_checkpoint": self.known_good_is_checkpoint,
            "streak": {**self.summary(), "start_seq": self.streak_start,
                       "failures": [f.as_dict() for f in self.failures]},
            "earlier_failures": self.earlier_failures,
            "tiers": [t.as_dict() for t in self.tiers],
            "restores": [r.as_dict() for r in self.restores],
            "sheds": [s.as_dict() for s in self.sheds],
            "alerts": [a.as_dict() for a in self.alerts],
            "config_repairs": [dict(c) for c in self.config_repairs],
            "problem": self.problem,
        }
        return doc

    def render_text(self) -> str:
        """The post-mortem for people: plain text, one section per part of the story."""
        out: list[str] = [f"post-mortem of {self.object_id} ({self.handler})", ""]
        head = [("status", self.status + (f": {_cut(self.reason, 300)}" if self.reason else "")),
                ("seq", str(self.seq)),
                ("known-good", "-" if self.known_good_seq is None else f"seq {self.known_good_seq} ("
                 + ("the last checkpoint its handler marked)" if self.known_good_is_checkpoint
                    else "the last step that succeeded before the failure streak)"))]
        if self.incident:
            head.append(("incident", self.incident))
        out += [f"{k:<11} {v}" for k, v in head]
        if self.problem:
            out += ["", f"warning: {self.problem}"]
        out += ["", self._streak_title()]
        out += self._failure_lines()
        if self.stalls or self.stalled_on:
            out.append(f"  claims without progress: {self.stalls}"
                       + (f" (on {', '.join(self.stalled_on)})" if self.stalled_on else ""))
        out += ["", "what each tier tried"]
        for t in self.tiers:
            out.append(f"  {t.tier}. {t.name}: {t.tried}")
            out.append(f"     -> {t.ended}")
        if self.restores:
            out += ["", "restores"]
            for r in self.restores:
                src = "?" if r.from_seq is None else str(r.from_seq)
                out.append(f"  seq {r.seq} at {_when(r.at)} on {r.node}: state set back to seq {src} "
                           f"(by {r.by}: {_cut(r.reason, MESSAGE_CHARS)}); {r.failures_after} failure(s) after it")
                out += [f"    {line}" for line in r.diff.lines()] or ["    (the state was already the known-good one)"]
        if self.sheds:
            out += ["", "sheds"]
            out += [f"  seq {s.seq} at {_when(s.at)} on {s.node}: {s.reason}" for s in self.sheds]
        if self.config_repairs:
            out += ["", "configuration repairs"]
            out += [f"  {_value(c)}" for c in self.config_repairs]
        out += ["", "alerts"]
        out += [f"  {a.sink} ({a.incident}): {a.outcome}" for a in self.alerts] or ["  none recorded"]
        return "\n".join(out) + "\n"

    def _streak_title(self) -> str:
        if not self.failures:
            return "failure streak: none (no failed step since the last one that succeeded)"
        classes = ", ".join(f"{k} x{n}" for k, n in sorted(self.error_classes.items(), key=lambda kv: -kv[1]))
        first, last = self.failures[0], self.failures[-1]
        earlier = f"; {self.earlier_failures} earlier failure(s) recovered from" if self.earlier_failures else ""
        return (f"failure streak: {len(self.failures)} failed step(s) from seq {first.seq} to {last.seq}, "
                f"{_when(first.at)} to {_when(last.at)}; {classes}; on {', '.join(self.nodes)}{earlier}")

    def _failure_lines(self) -> list[str]:
        shown = list(self.failures)
        cut = 0
        if len(shown) > TEXT_FAILURES:
            half = TEXT_FAILURES // 2
            cut = len(shown) - TEXT_FAILURES
            shown = shown[:half] + shown[-half:]
        lines: list[str] = []
        for i, f in enumerate(shown):
            if cut and i == TEXT_FAILURES // 2:
                lines.append(f"  ... {cut} more (peo postmortem --json lists them all)")
            lines.append(f"  seq {f.seq:<5} {_when(f.at)}  {_cut(f.node, 24):<12} {f.error_class}: {f.message}")
        return lines


def _is_failure(entry: Entry) -> bool:
    out = entry.outcome
    return isinstance(out.get("error"), Mapping) or out.get("status") in FAILED_STATUSES


def _failure(entry: Entry) -> Failure:
    err = entry.outcome.get("error")
    error: Mapping[str, Any] = err if isinstance(err, Mapping) else {"message": err}
    message = str(error.get("message") or entry.outcome.get("reason") or "")
    retryable = error.get("retryable")
    return Failure(seq=entry.seq, at=entry.timestamp, node=entry.origin_node, action=str(entry.action),
                   error_class=str(error.get("class") or entry.outcome.get("status") or "error"),
                   message=_cut(message.strip().split("\n", 1)[0] if message.strip() else "", MESSAGE_CHARS),
                   retryable=retryable if isinstance(retryable, bool) else None)


def failure_entries(memory: Sequence[Entry]) -> list[Failure]:
    """Every failed entry of a memory, oldest first."""
    return [_failure(e) for e in memory if _is_failure(e)]


def stalled_nodes(value: Any) -> tuple[str, ...]:
    """A stored ``stalled_on`` (text, one node per line, or a sequence) as node ids."""
    if value is None:
        return ()
    items = value.splitlines() if isinstance(value, str) else list(value)
    return tuple(str(x) for x in items if str(x).strip())


def _known_good(memory: Sequence[Entry]) -> tuple[int | None, int | None, bool, str]:
    """Fold the memory: the known-good seq (the last checkpoint, else the last step that
    succeeded), the last step that succeeded, whether the known-good one is a checkpoint,
    and the handler (None, None, False, "?" if it does not fold)."""
    try:
        fold = Fold.of(memory)
    except Exception:  # a memory cut short by a failed verification still has its failures told
        return None, None, False, "?"
    return fold.known_good, fold.known_good_seq, fold.checkpoint_seq is not None, fold.intent.handler


def _restores(memory: Sequence[Entry], failures: Sequence[Failure]) -> list[RestoreRecord]:
    out: list[RestoreRecord] = []
    for e in memory:
        info = e.outcome.get("restore")
        if e.action is not Action.MUTATE or not isinstance(info, Mapping):
            continue
        before = state_at(memory, e.seq - 1)
        after = state_at(memory, e.seq)
        src = info.get("seq")
        out.append(RestoreRecord(seq=e.seq, at=e.timestamp, node=e.origin_node,
                                 from_seq=src if isinstance(src, int) else None,
                                 reason=str(info.get("reason") or ""), by=str(info.get("by") or "?"),
                                 diff=StateDiff.between(before, after),
                                 failures_after=sum(1 for f in failures if f.seq > e.seq)))
    return out


def _tiers(failures: Sequence[Failure], nodes: Sequence[str], stalls: int, restores: Sequence[RestoreRecord],
           status: str, reason: str | None, alerts: Sequence[AlertRecord], known_good: int | None,
           last_success: int) -> list[Tier]:
    retries = max(len(failures) - 1, 0)
    t1 = Tier(1, "restart in place",
              f"{retries} retry(ies) of the failed step with backoff; {stalls} claim(s) ended without progress "
              "(a node died or gave up holding it)",
              "the failures went on" if failures or stalls else "nothing to restart")
    if len(nodes) > 1:
        t2 = Tier(2, "recreate elsewhere", f"ran on {len(nodes)} nodes: {', '.join(nodes)}",
                  "it failed on every one of them")
    else:
        t2 = Tier(2, "recreate elsewhere", f"only node {nodes[0]} ran it" if nodes else "not needed",
                  "no other node took it" if nodes else "-")
    # The restores of this incident: back to the known-good state (or a later one), or since
    # the last step that succeeded.
    recent = [r for r in restores if known_good is None or (r.from_seq is not None and r.from_seq >= known_good)
              or r.seq > last_success]
    if recent:
        r = recent[-1]
        t3 = Tier(3, "known-good restore",
                  f"{len(recent)} restore(s); the last at seq {r.seq} to the state of seq {r.from_seq} ({r.by})",
                  f"{r.failures_after} failure(s) after it" if r.failures_after else "no failure after it")
    else:
        t3 = Tier(3, "known-good restore", "no restore to its known-good state", "-")
    if status == "quarantined":
        delivered = [a for a in alerts if a.delivered_at is not None]
        told = (f"alert delivered to {', '.join(a.sink for a in delivered)}" if delivered
                else "alert not delivered yet" if alerts else "no alert recorded (no sinks configured?)")
        t4 = Tier(4, "quarantine and alert", f"quarantined: {_cut(reason or '?', MESSAGE_CHARS)}", told)
    else:
        t4 = Tier(4, "quarantine and alert", "not quarantined", f"the object is {status}")
    return [t1, t2, t3, t4]


def build(memory: Sequence[Entry], row: Any, *, alerts: Sequence[Any] = (),
          config_repairs: Sequence[Mapping[str, Any]] = (), problem: str | None = None) -> PostMortem:
    """The post-mortem of the object whose verified ``memory`` (from seq 0) and stored head
    ``row`` (a ``peo.store.ObjectRow`` or a :class:`Head`: id, status, reason, seq, and
    handler, stalls, stalled_on if known) are given, with its ``alerts`` (``Store.alerts``
    rows) and the ``config_repairs`` the node recorded. ``problem`` says why the memory
    may be cut short (shown as a warning)."""
    status = str(getattr(row.status, "value", row.status))
    known_good, last_success, checkpoint, handler = _known_good(memory) if memory else (None, None, False, "?")
    handler = str(getattr(row, "handler", None) or handler)
    everything = failure_entries(memory)
    streak = [f for f in everything if last_success is None or f.seq > last_success]
    stalls = int(getattr(row, "stalls", 0) or 0)
    stalled_on = stalled_nodes(getattr(row, "stalled_on", None))
    restores = _restores(memory, streak)
    sheds = [ShedRecord(e.seq, e.timestamp, e.origin_node, str(e.outcome.get("shed") or "?"))
             for e in memory if e.action is Action.DORMANCY and e.outcome.get("status") == "shed"]
    records = tuple(AlertRecord(a.incident, a.sink, a.attempts, a.delivered_at, a.last_error, a.next_at)
                    for a in alerts)
    streak_start = streak[0].seq if streak else None
    pm = PostMortem(
        object_id=row.id, handler=handler, status=status, reason=row.reason, seq=row.seq,
        known_good_seq=known_good, known_good_is_checkpoint=checkpoint, streak_start=streak_start,
        failures=tuple(streak),
        earlier_failures=len(everything) - len(streak), stalls=stalls, stalled_on=stalled_on,
        restores=tuple(restores), sheds=tuple(sheds), tiers=(), alerts=records,
        config_repairs=tuple(config_repairs),
        incident=f"quarantine:{row.seq}" if status == "quarantined" else None, problem=problem,
    )
    tiers = _tiers(streak, pm.nodes, stalls, restores, status, row.reason, records, known_good,
                   -1 if last_success is None else last_success)
    return attrs.evolve(pm, tiers=tuple(tiers))
