r"""What the SQLite and PostgreSQL stores share: the head's columns, the statements that
write heads and apply the wake rules, the reads, and the reading of result rows.

The statements that decide when an object is due are written once, here, as
:class:`Template`\ s that name their parameters in the text (``p("now")``) and bind them
by position, in the order the template declares. Each dialect renders them once at import
time with its own numbered placeholders (``?3`` for SQLite, ``$3::bigint`` for PostgreSQL)
and binds the same tuples, built by :func:`append_values` and friends. Their wake rules
come from :mod:`peo.core.wake`, so the store and the core cannot disagree about when an
object wakes. What differs between the dialects (claims, locking, migrations,
notifications) stays in each dialect's package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..core.codec import check_name, packb, unpackb
from ..core.head import Head
from ..core.model import CANCEL_SIGNAL, Entry, Signal, Status
from ..core.wake import child_end_wakes, due_case, final_statuses_sql, live_statuses_sql, signal_wakes
from ..errors import (
    CodecError,
    InboxFullError,
    NotFoundError,
    ObjectDeletedError,
    ObjectTerminatedError,
    StoreError,
    UsageError,
)
from .base import (
    REFUSALS_KEPT,
    STORED_STATUSES,
    AppendItem,
    Claim,
    NewObject,
    ObjectRow,
    RefusedSignal,
    SignalRefusal,
    SignalRefusalLike,
)
from .stalls import PROGRESS, claim_stalls, stalled_nodes

__all__ = [
    "CLAIM_COLUMNS",
    "COLUMNS",
    "COUNT_DESCENDANTS",
    "DROP_LEASE",
    "FINAL",
    "FORKS",
    "LIVE",
    "PARENT_WAKES",
    "Param",
    "Placeholder",
    "Template",
    "append_head",
    "append_values",
    "blob",
    "check_creatable",
    "check_inbox_room",
    "check_signal_target",
    "claim_of",
    "descendants_root",
    "drop_leases",
    "entry_values",
    "import_head",
    "import_values",
    "insert_entry",
    "insert_object",
    "is_due",
    "label_text",
    "labels_text",
    "list_query",
    "memories",
    "migrations_to_run",
    "no_store",
    "object_row",
    "object_values",
    "parent_to_wake",
    "prune_refused",
    "quarantine",
    "refusal_rows",
    "refused_signals",
    "release",
    "signal_wake",
    "signals",
    "wake_parent",
]

#: A template's placeholder for one named parameter, in the dialect being rendered.
Param = Callable[[str], str]
#: A dialect's placeholder for the parameter at a position (from 1) with a name.
Placeholder = Callable[[int, str], str]

#: The head's columns in the order :func:`object_row` reads them.
COLUMNS = (
    "id, handler, scope, identity, priority, status, seq, head, due_at, lease_owner, lease_until,"
    " parent, result, reason, wait_signal, wait_children, inbox, created_at, updated_at, root, stalls, stalled_on,"
    " deleted_at"
)
#: What a claim (and a seize) returns of the row it leases, after its id and token, in the
#: order :func:`claim_of` reads them: columns of the row being updated, so free to return.
CLAIM_COLUMNS = "seq, inbox, head, handler, scope, priority, parent, status, stalls, stalled_on"

#: ``'runnable', 'dormant'``: objects that may be claimed.
LIVE = live_statuses_sql()
#: ``'terminated', 'quarantined'``: objects that never act again.
FINAL = final_statuses_sql()
#: The object (a parent) is woken by the end of one of its children.
PARENT_WAKES = child_end_wakes(status="status", children="wait_children")
DROP_LEASE = "lease_owner = NULL, lease_token = NULL, lease_until = NULL"
REASON_LIMIT = 2000  # characters of a quarantine reason that are kept

_STATUS = {s.value: s for s in STORED_STATUSES}


# -- statements, as templates over named parameters ------------------------------------------


class Template:
    """An SQL statement whose text names its parameters and whose values are bound by
    position, in ``params`` order."""

    __slots__ = ("params", "text")

    def __init__(self, params: tuple[str, ...], text: Callable[[Param], str]):
        self.params = params
        self.text = text

    def render(self, placeholder: Placeholder) -> str:
        """The statement in one dialect (every parameter must be used)."""
        used: set[str] = set()

        def param(name: str) -> str:
            used.add(name)
            return placeholder(self.params.index(name) + 1, name)

        rendered = self.text(param)
        if used != set(self.params):
            raise AssertionError(f"template {self.text.__name__}: unused parameters {set(self.params) - used}")
        return rendered


def _template(*params: str) -> Callable[[Callable[[Param], str]], Template]:
    def make(text: Callable[[Param], str]) -> Template:
        return Template(params, text)

    return make


@_template("id", "handler", "scope", "identity", "priority", "hash", "due", "parent", "labels", "root", "forked_from")
def insert_object(p: Param) -> str:
    """A new object's head: runnable at seq 0, due at ``due`` (values: :func:`object_values`)."""
    return (
        "INSERT INTO objects (id, handler, scope, identity, priority, status, seq, head, due_at, parent,"
        f" created_at, updated_at, labels, root, forked_from) VALUES ({p('id')}, {p('handler')}, {p('scope')},"
        f" {p('identity')}, {p('priority')}, '{Status.RUNNABLE}', 0, {p('hash')}, {p('due')}, {p('parent')},"
        f" {p('due')}, {p('due')}, {p('labels')}, {p('root')}, {p('forked_from')})"
    )


@_template("id", "seq", "body", "sig", "hash")
def insert_entry(p: Param) -> str:
    """One entry row (values: :func:`entry_values`)."""
    return (
        "INSERT INTO entries (object_id, seq, body, sig, hash)"
        f" VALUES ({p('id')}, {p('seq')}, {p('body')}, {p('sig')}, {p('hash')})"
    )


@_template("id", "seq", "prev_seq", "hash", "status", "due", "wait_signal", "wait_children", "result", "reason",
           "consumed", "now", "release", "token", "deleted")
def append_head(p: Param) -> str:
    """The head update of one append, a compare-and-swap on (seq, lease token). A dormant
    head is due now if a wake rule already holds (a signal or a child's end committed
    before the wait began is never slept through), else at its time trigger. A deleted
    head (an operator's tombstone) is never due and keeps the time of its first deletion;
    an undelete clears it and the due time is the head's again. Returns the inbox count and
    the due time it wrote (values: :func:`append_values`)."""
    due = due_case(id=p("id"), status=p("status"), signal=p("wait_signal"), children=p("wait_children"),
                   now=p("now"), due=p("due"))
    due = f"CASE WHEN {p('deleted')} THEN NULL ELSE {due} END"
    deleted_at = f"CASE WHEN {p('deleted')} THEN coalesce(deleted_at, {p('now')}) ELSE NULL END"
    lease = ", ".join(f"{c} = CASE WHEN {p('release')} THEN NULL ELSE {c} END"
                      for c in ("lease_owner", "lease_token", "lease_until"))
    return (
        f"UPDATE objects SET seq = {p('seq')}, head = {p('hash')}, status = {p('status')}, due_at = {due},"
        f" wait_signal = {p('wait_signal')}, wait_children = {p('wait_children')},"
        f" result = {p('result')}, reason = {p('reason')},"
        f" inbox = inbox - {p('consumed')}, updated_at = {p('now')}, {lease}, {PROGRESS}, deleted_at = {deleted_at}"
        f" WHERE id = {p('id')} AND seq = {p('prev_seq')} AND lease_token = {p('token')}"
        " RETURNING inbox, due_at"
    )


@_template("id", "token", "due", "now")
def release(p: Param) -> str:
    """Drop a lease without appending: a runnable object becomes due at ``due`` (if given),
    a dormant one at ``due`` unless a wake rule already holds (then now). A deleted object
    stays never due (an operator's lease on it let go without writing)."""
    due = due_case(id=p("id"), status="status", signal="objects.wait_signal", children="wait_children",
                   now=p("now"), due=p("due"), runnable=f"coalesce({p('due')}, due_at)", final="due_at")
    due = f"CASE WHEN deleted_at IS NOT NULL THEN NULL ELSE {due} END"
    return f"UPDATE objects SET due_at = {due}, {DROP_LEASE} WHERE id = {p('id')} AND lease_token = {p('token')}"


@_template("id", "name", "now")
def signal_wake(p: Param) -> str:
    """Count a new signal in the inbox and wake the object if it waits for it."""
    wakes = signal_wakes(status="status", waiting_for="wait_signal", name=p("name"))
    return (
        f"UPDATE objects SET inbox = inbox + 1, due_at = CASE WHEN {wakes} THEN {p('now')} ELSE due_at END"
        f" WHERE id = {p('id')}"
    )


@_template("id", "reason", "now")
def quarantine(p: Param) -> str:
    return (
        f"UPDATE objects SET status = '{Status.QUARANTINED}', reason = {p('reason')}, due_at = NULL, {DROP_LEASE},"
        f" updated_at = {p('now')} WHERE id = {p('id')}"
    )


@_template("parent", "now")
def wake_parent(p: Param) -> str:
    """A child has ended (or was quarantined): its parent, if it waits for children (and is
    not deleted: an undelete makes it due as its head says), is due."""
    return f"UPDATE objects SET due_at = {p('now')} WHERE id = {p('parent')} AND {PARENT_WAKES} AND deleted_at IS NULL"


@_template("id", "seq", "hash", "status", "due", "wait_signal", "wait_children", "result", "reason", "now",
           "deleted")
def import_head(p: Param) -> str:
    """The head of an imported object (values: :func:`import_values`); a deleted one (its
    memory ends deleted) stays deleted, never due, from the time of the import."""
    return (
        f"UPDATE objects SET seq = {p('seq')}, head = {p('hash')}, status = {p('status')},"
        f" due_at = CASE WHEN {p('deleted')} THEN NULL ELSE {p('due')} END,"
        f" wait_signal = {p('wait_signal')}, wait_children = {p('wait_children')}, result = {p('result')},"
        f" reason = {p('reason')}, updated_at = {p('now')},"
        f" deleted_at = CASE WHEN {p('deleted')} THEN {p('now')} ELSE NULL END WHERE id = {p('id')}"
    )


# -- the values those statements bind, in their templates' order -----------------------------


def object_values(o: NewObject) -> tuple[Any, ...]:
    return (o.id, o.handler, o.scope, o.identity, o.priority, o.entry.hash, o.due_at, o.parent, labels_text(o.labels),
            o.root, o.forked_from)


# The objects table's ``labels`` column: one line per label, "KEY<tab>VALUE", sorted, with a
# newline before each and after the last ("" for none). Labels are checked names (no control
# characters), so a tab parts key from value unambiguously (a key may hold "=") and one
# label is matched exactly by looking for its "\nKEY\tVALUE\n" in the column.


def label_text(key: str, value: str) -> str:
    """One label as the ``labels`` column holds it, newlines around it."""
    return f"\n{key}\t{value}\n"


def labels_text(labels: Mapping[str, str]) -> str:
    """The ``labels`` column of an object with these labels."""
    if not labels:
        return ""
    return "".join(f"\n{k}\t{labels[k]}" for k in sorted(labels)) + "\n"


def entry_values(object_id: str, e: Entry) -> tuple[Any, ...]:
    return object_id, e.seq, e.body, e.signature, e.hash


def append_values(item: AppendItem, now: int) -> tuple[Any, ...]:
    """The values of :data:`append_head` for ``item``: its entry and the head it leaves."""
    e, h = item.entry, item.head
    # Spelled out rather than through Head's properties: this runs once per step.
    w = h.waiting_for
    result = packb(h.result) if h.status is Status.TERMINATED else None
    return (item.object_id, e.seq, e.seq - 1, e.hash, h.status.value, h.due_at,
            None if w is None else w.signal, w is not None and w.children, result, h.reason, len(item.consumed),
            now, item.release, item.token, h.deleted)


def import_values(obj: NewObject, last: Entry, head: Head, now: int) -> tuple[Any, ...]:
    """The values of :data:`import_head`: ``head`` after the ``last`` entry."""
    return (obj.id, last.seq, last.hash, head.status.value, head.due_at, head.wait_signal, head.wait_children,
            head.result_bytes(), head.reason, now, head.deleted)


def parent_to_wake(item: AppendItem) -> str | None:
    """The parent to wake when ``item`` ends a child (a final head), else None."""
    return item.parent if item.parent is not None and item.head.status.is_final else None


def is_due(due_at: int | None, now: int) -> bool:
    return due_at is not None and due_at <= now


#: How many objects name one root (the descendants of a top-level object).
COUNT_DESCENDANTS = "SELECT count(*) FROM objects WHERE root = {}"
#: The ids forked from one object ({}: its placeholder), oldest first (objects_forked_from).
FORKS = "SELECT id FROM objects WHERE forked_from = {} ORDER BY created_at, id"


def descendants_root(item: AppendItem) -> str | None:
    """The root whose descendants an append with children must count, if it is bounded."""
    if not item.children or item.max_descendants is None:
        return None
    return item.children[0].root


def check_signal_target(object_id: str, row: Sequence[Any] | None) -> None:
    """Inside a signal's transaction, with the object's (status, reason, inbox, deleted_at)
    row (None: no such object): raise unless a signal to it may still be read. A quarantined
    object keeps its signals (it may be resumed); a terminated one never reads them, nor
    does a deleted one (until an undelete: the sender is told so)."""
    if row is None:
        raise NotFoundError(f"no object {object_id}")
    if len(row) > 3 and row[3] is not None:
        raise ObjectDeletedError(object_id, int(row[3]))
    if row[0] == Status.TERMINATED.value:
        raise ObjectTerminatedError(object_id, row[1])


def check_inbox_room(object_id: str, row: Sequence[Any], max_inbox: int | None) -> None:
    """Inside a signal's transaction, after :func:`check_signal_target`: raise InboxFullError
    if the object already has ``max_inbox`` signals waiting (None: no limit)."""
    if max_inbox is not None and row[2] >= max_inbox:
        raise InboxFullError(object_id, int(row[2]), max_inbox)


#: A signal's target: its (status, reason, inbox count), read in the signal's transaction.
SIGNAL_TARGET = "SELECT status, reason, inbox, deleted_at FROM objects WHERE id = {}"
#: An earlier cancel still in the inbox (a second cancel adds nothing: see Store.signal).
PENDING_CANCEL = f"SELECT id FROM inbox WHERE object_id = {{}} AND name = '{CANCEL_SIGNAL}' ORDER BY id LIMIT 1"


# -- claims and refused signals --------------------------------------------------------------


def claim_of(object_id: str, token: int, row: Sequence[Any]) -> Claim:
    """A :class:`Claim` of ``object_id`` under ``token`` from a row of :data:`CLAIM_COLUMNS`.
    Only live objects are claimed, so the status is runnable or dormant; a value peo never
    writes could only come from an edit behind its back, and reads as quarantined (the node
    then finds that the row disagrees with the chain), never as a crash."""
    seq, inbox, head, handler, scope, priority, parent, status, stalls, stalled_on = row[:10]
    return Claim(object_id, token, int(seq), int(inbox), blob(head) or b"", handler=handler, scope=scope,
                 priority=int(priority), parent=parent, status=_STATUS.get(status, Status.QUARANTINED),
                 stalls=int(stalls or 0), stalled_on=stalled_nodes(stalled_on))


# -- claims without progress (see peo.store.stalls) -----------------------------------------


def drop_leases(push: Callable[[str, str], str], owner: str) -> str:
    """Drop every lease of ``owner`` (a placeholder), each judged as a claim that ended
    holding its lease (see :func:`claim_stalls`)."""
    return (f"UPDATE objects SET {claim_stalls('lease_owner IS NOT NULL', push)}, {DROP_LEASE}"
            f" WHERE lease_owner = {owner}")


NAME_KEPT = 200  # characters of a refused signal's name, and of its sender, that are kept


def refusal_rows(refusals: Sequence[SignalRefusalLike]) -> list[tuple[int, str, str | None]]:
    """(id, reason, sender) of each refusal, the first of each id only, cut to size."""
    out: dict[int, tuple[int, str, str | None]] = {}
    for r in refusals:
        if isinstance(r, SignalRefusal):
            sid, reason, sender = r.id, r.reason, r.sender
        else:
            sid, reason = r[0], r[1]
            sender = r[2] if len(r) > 2 else None
        sid = int(sid)
        if sid not in out:
            out[sid] = (sid, str(reason)[:REASON_LIMIT], None if sender is None else str(sender)[:NAME_KEPT])
    return list(out.values())


@_template("id")
def prune_refused(p: Param) -> str:
    """Delete an object's refusals older than its newest :data:`REFUSALS_KEPT` (the oldest
    kept is found through the (object_id, refused_at, id) index: the cost is bounded)."""
    return (
        f"DELETE FROM refused_signals WHERE object_id = {p('id')} AND (refused_at, id) < ("
        f"SELECT refused_at, id FROM refused_signals WHERE object_id = {p('id')}"
        f" ORDER BY refused_at DESC, id DESC LIMIT 1 OFFSET {REFUSALS_KEPT - 1})"
    )


def refused_signals(rows: Iterable[Sequence[Any]]) -> list[RefusedSignal]:
    """Rows (id, name, reason, sender, refused_at, created_at) as refused signals."""
    return [RefusedSignal(int(sid), str(name), str(reason), sender, int(at), int(created))
            for sid, name, reason, sender, at, created in rows]


# -- reading ---------------------------------------------------------------------------------


def blob(value: Any) -> bytes | None:
    """A BLOB cell as bytes. A cell of another type can only come from an edit behind peo's
    back: its text becomes bytes that then fail verification or decoding, never a crash."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return str(value).encode("utf-8", "surrogatepass")


def object_row(r: Sequence[Any]) -> ObjectRow:
    """An :class:`ObjectRow` from a row of :data:`COLUMNS`."""
    status = _STATUS.get(r[5])
    if status is None:  # only an edit behind peo's back writes another status
        raise StoreError(f"object {r[0]} has an unknown status {r[5]!r} in the store", retryable=False)
    return ObjectRow(
        id=r[0], handler=r[1], scope=r[2], identity=r[3], priority=r[4], status=status, seq=r[6],
        head=blob(r[7]) or b"", due_at=r[8], lease_owner=r[9], lease_until=r[10], parent=r[11],
        result=blob(r[12]), reason=r[13], wait_signal=r[14],
        wait_children=bool(r[15]), inbox=r[16], created_at=r[17], updated_at=r[18], root=r[19],
        stalls=int(r[20] or 0), stalled_on=stalled_nodes(r[21]), deleted_at=r[22],
    )


def list_query(param: Callable[[int], str], *, status: Status | str | None, limit: int | None,
               parent: str | None, now: int | None, handler: str | None = None,
               after: str | None = None, labels: Mapping[str, str] | None = None,
               contains: Callable[[str, str], str] | None = None, deleted: bool = False) -> tuple[str, list[Any]]:
    """The query of :meth:`Store.list` and its arguments; ``param(n)`` is the placeholder
    of the n-th argument (from 1), ``contains(text, part)`` the dialect's test that the SQL
    expression ``text`` holds ``part`` (exactly, case and all: needed for ``labels``).
    Deleted objects (an operator's tombstone) are left out, or with ``deleted`` the only ones."""
    where: list[str] = ["deleted_at IS NOT NULL" if deleted else "deleted_at IS NULL"]
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return param(len(args))

    if status == Status.RUNNING:
        if now is None:
            raise UsageError("listing running objects needs now= (a store never reads the clock)")
        where.append(f"status = '{Status.RUNNABLE}' AND lease_until > {arg(now)}")
    elif status is not None:
        where.append(f"status = {arg(str(status))}")
    if parent is not None:
        where.append(f"parent = {arg(parent)}")
    if handler is not None:
        where.append(f"handler = {arg(handler)}")
    if after is not None:  # paging: the next page starts after the last id of this one
        where.append(f"id > {arg(after)}")
    for key, value in sorted((labels or {}).items()):
        try:
            check_name(key, "label")
            check_name(value, "label value")
        except CodecError as exc:
            raise UsageError(str(exc)) from None
        if contains is None:
            raise AssertionError("list_query: filtering by labels needs contains=")
        where.append(contains("labels", arg(label_text(key, value))))
    query = f"SELECT {COLUMNS} FROM objects"
    if where:
        query += " WHERE " + " AND ".join(where)
    query += " ORDER BY id"
    if limit is not None:
        query += f" LIMIT {int(limit)}"
    return query, args


def memories(object_ids: Iterable[str], rows: Iterable[Sequence[Any]]) -> dict[str, list[tuple[bytes, bytes]]]:
    """(object_id, body, sig) rows in seq order, grouped by object, in ``object_ids`` order
    (an object without rows maps to an empty list)."""
    out: dict[str, list[tuple[bytes, bytes]]] = {oid: [] for oid in object_ids}
    for oid, body, sig in rows:
        out[oid].append((blob(body) or b"", blob(sig) or b""))
    return out


def signals(rows: Iterable[Sequence[Any]]) -> list[Signal]:
    """Inbox rows (id, name, payload, seal) as signals."""
    out = []
    for sid, name, payload, seal in rows:
        try:
            value = unpackb(blob(payload) or b"")
        except CodecError:
            value = None  # written by peo itself; a corrupt payload is delivered as None
        out.append(Signal(name, value, sid, seal=blob(seal)))
    return out


#: Every table peo's migrations create (one of them may be half-made by an old version).
PEO_TABLES = frozenset({"alerts", "entries", "entries_v3", "inbox", "nodes", "objects", "peo_schema",
                        "refused_signals"})


def no_store(where: str) -> StoreError:
    """A store opened with ``create=False`` that does not exist."""
    return StoreError(f"no peo store at {where}; run peo init", retryable=False)


def check_creatable(where: str, tables: Iterable[str], *, create: bool, force: bool) -> None:
    """Before creating peo's tables in a database without them: refuse unless ``create``,
    and refuse a database that holds other tables unless ``force``."""
    if not create:
        raise no_store(where)
    foreign = sorted(set(tables) - PEO_TABLES)
    if foreign and not force:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise StoreError(
            f"{where} holds tables that are not peo's ({shown}): refusing to add peo's tables there; "
            "use another database (or a schema of its own), or run peo init --force to add them anyway",
            retryable=False,
        )


def migrations_to_run(current: int, migrations: Sequence[Any]) -> range:
    """The numbers (from 0) of the migrations a store at version ``current`` still needs."""
    if current > len(migrations):
        raise StoreError(
            f"store schema version {current} is newer than this peo supports ({len(migrations)})", retryable=False
        )
    return range(current, len(migrations))
