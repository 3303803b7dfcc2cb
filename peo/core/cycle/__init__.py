"""The evaluation cycle: a pure function from (object, policy, clock, signals, children)
to exactly one of six actions.

Theory of operation
-------------------
A node holding an object calls :func:`plan`. The answer is either

* a :class:`Decision` to append right away (``reentry`` when a dormant object's wake
  trigger holds; ``terminate`` on cancellation, a passed deadline or a spent step budget),
* :data:`RUN_HANDLER`: the node runs one handler step and passes the proposal (or the
  exception) to :func:`conclude`, which the policy turns into a Decision, or
* a :class:`Release`: a dormant object was woken but none of its triggers hold (a child
  finished but not all of them): the node puts it back without writing anything.

Each Decision is appended as exactly one signed entry; its effects (:class:`Consume`,
:class:`Spawn`) are carried out in the same transaction. The transition table
:data:`ALLOWED` is the only place that says which action may follow which status, and
every Decision passes through it (:func:`check_allowed`):

=========== ======================================================= ================
status      actions allowed                                         next status
=========== ======================================================= ================
runnable    execute, mutate                                         runnable
runnable    delegate                                                runnable, or dormant when waiting
runnable    dormancy (sleep, signal wait, retry backoff)            dormant
runnable    terminate (done, failed, cut off, cancelled, deadline)  terminated
dormant     reentry (time, signal, children done)                   runnable
dormant     terminate (cancelled, deadline)                         terminated
terminated  nothing, ever
=========== ======================================================= ================

Which function concludes which proposal kind is the table :data:`PROPOSALS`
(:mod:`.proposals`): one small function per kind.

Why each action exists: *execute* records one step's outcome; *mutate* changes the intent
without losing history; *delegate* splits work into children with lineage; *dormancy* is a
valid pause that costs no memory on any node (and the shape of retry backoff, so a
failing object waits in the store, not in a node); *reentry* records which trigger woke
the object; *terminate* ends the object and keeps its history.
"""

from __future__ import annotations

from .conclude import conclude
from .decision import ALLOWED, RUN_HANDLER, Child, Consume, Decision, Effect, Release, Spawn, check_allowed
from .plan import plan, restore, shed, tombstone, undelete
from .proposals import PROPOSALS, Rule

__all__ = [
    "ALLOWED",
    "PROPOSALS",
    "RUN_HANDLER",
    "Child",
    "Consume",
    "Decision",
    "Effect",
    "Release",
    "Rule",
    "Spawn",
    "check_allowed",
    "conclude",
    "plan",
    "restore",
    "shed",
    "tombstone",
    "undelete",
]
