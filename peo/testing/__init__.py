"""Test helpers for peo users: a time-skipping environment for durable functions and
handlers (:class:`FunctionEnv`), hypothesis strategies, a fake clock, and a stateful
machine that checks resumption (crash, lease loss, restart) against your own handlers.

The strategies and the machine need hypothesis (a development extra: ``pip install
'peo[dev]'``); they are imported on first use, so :class:`FakeClock`,
:mod:`peo.testing.faults` and :mod:`peo.testing.chaos` work without it.

Modules: :mod:`.clock` (FakeClock), :mod:`.strategies` (plain_values, intents,
proposals), :mod:`.script` (the scripted handler, scripts, expected_actions),
:mod:`.cycle` (run_one_cycle), :mod:`.checks` (the machine's invariants), :mod:`.machine`
(ResumptionMachine, run_resumption_tests), :mod:`.timeskip` (FunctionEnv: a temporary
store, a fake clock that jumps to the next timer, crashes after any entry; see
docs/testing.md), :mod:`.programs` (random durable-function programs; run_function, which
runs a function to its end with crashes armed), :mod:`.faults`, :mod:`.chaos`,
:mod:`.fakellm` (FakeLLMServer: a scripted OpenAI-compatible server on 127.0.0.1);
``python -m peo.testing`` runs :func:`main`.

Property-based resumption tests
-------------------------------
:class:`ResumptionMachine` is a hypothesis ``RuleBasedStateMachine``. Two nodes ("a" and
"b") share one store and one :class:`FakeClock`; hypothesis interleaves these rules:

* ``submit``: a client submits an object (handler and goal drawn from ``goals``);
* ``run_cycle``: node a or b claims one object and runs exactly one cycle;
* ``crash_mid_step``: a node runs the handler (its side effect happens), then dies before
  its entry is committed (fault point ``node.after_handler`` or ``node.after_sign``); its
  lease stays behind, as a dead process leaves it;
* ``crash_after_claim``: a node claims an object and dies before doing anything;
* ``store_error_at_commit``: the store fails at ``store.before_commit`` (nothing written)
  or at ``store.after_commit`` (written, but the node hears an error) and the node must
  recover without running the step again;
* ``lease_lost_mid_step``: a node sits in a handler past its lease, the other node takes
  the object over and commits the step, then the first one wakes up and tries to append;
* ``restart``: a dead node comes back under the same id (and takes its leases back);
* ``advance_clock``: time jumps (leases expire, sleepers become due);
* ``deliver_awaited_signal``, ``send_unawaited_signal``, ``cancel``.

After every rule these invariants are checked: every chain verifies (``Client.verify``),
seqs are contiguous, an entry once seen at (object, seq) never changes (no fork), a
terminated object never gets another entry and no handler runs for it, no dormant object
wakes before its time, nothing is quarantined, the stored status is the one the last
entry implies, and a step's side effect (each handler call, keyed by its idempotency key)
ran more than once only where an attempt could not commit (a crash before the commit or a
lost lease), always with the same key. At the end (``drain``) both nodes come back,
awaited signals are delivered and the clock moves on until every object has terminated:
progress after the faults stop.

With no configuration the machine runs the built-in *scripted* handler, whose goal is a
small program of proposals (:func:`scripts`): then each chain is also compared, entry by
entry, with what a simple model (:func:`expected_actions`) says it must be.

To point it at your own handlers, subclass and set ``app`` and ``goals``::

    from hypothesis import strategies as st
    from peo.testing import ResumptionMachine

    class MyResumption(ResumptionMachine):
        app = my_app                     # your peo.App
        goals = {"count": st.fixed_dictionaries({"steps": st.integers(0, 5)})}
        drain = True                     # your objects finish once signals are delivered

    TestMyResumption = MyResumption.TestCase   # collected by pytest / unittest

or call :func:`run_resumption_tests` from a (synchronous) test function. Handlers may be
sync or async; each call counts as one side effect. The machine runs its own event loop,
so call it from a plain ``def`` test, not an ``async def`` one.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import faults as faults  # as before the split: ``peo.testing.faults`` after ``import peo.testing``
from .clock import FakeClock

if TYPE_CHECKING:
    from .__main__ import main
    from .cycle import run_one_cycle
    from .fakellm import FakeLLMServer, Reply
    from .machine import ResumptionMachine, run_resumption_tests
    from .programs import (
        Effect,
        FunctionRun,
        Program,
        SendSignal,
        crash_points,
        programs,
        register_programs,
        run_function,
        run_program,
    )
    from .script import NOISE_SIGNAL, SCRIPT_HANDLER, ScriptError, expected_actions, scripted_app, scripts
    from .strategies import intents, plain_values, proposals
    from .timeskip import Crash, FunctionEnv, StuckError

__all__ = [
    "NOISE_SIGNAL",
    "SCRIPT_HANDLER",
    "Crash",
    "Effect",
    "FakeClock",
    "FakeLLMServer",
    "FunctionEnv",
    "FunctionRun",
    "Program",
    "Reply",
    "ResumptionMachine",
    "ScriptError",
    "SendSignal",
    "StuckError",
    "crash_points",
    "expected_actions",
    "intents",
    "main",
    "plain_values",
    "programs",
    "proposals",
    "register_programs",
    "run_function",
    "run_one_cycle",
    "run_program",
    "run_resumption_tests",
    "scripted_app",
    "scripts",
]

# Where each public name lives; imported on first use (``.machine`` and ``.strategies``
# need hypothesis, and raise an ImportError naming ``pip install 'peo[dev]'`` without it).
_LAZY = {
    "NOISE_SIGNAL": ".script",
    "SCRIPT_HANDLER": ".script",
    "ScriptError": ".script",
    "expected_actions": ".script",
    "scripted_app": ".script",
    "scripts": ".script",
    "intents": ".strategies",
    "plain_values": ".strategies",
    "proposals": ".strategies",
    "run_one_cycle": ".cycle",
    "ResumptionMachine": ".machine",
    "run_resumption_tests": ".machine",
    "main": ".__main__",
    "FunctionEnv": ".timeskip",
    "Crash": ".timeskip",
    "StuckError": ".timeskip",
    "Effect": ".programs",
    "FunctionRun": ".programs",
    "Program": ".programs",
    "SendSignal": ".programs",
    "crash_points": ".programs",
    "programs": ".programs",
    "register_programs": ".programs",
    "run_function": ".programs",
    "run_program": ".programs",
    "FakeLLMServer": ".fakellm",
    "Reply": ".fakellm",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
