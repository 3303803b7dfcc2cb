"""Process isolation (tier 2): ``@app.handler("x", isolation="process")`` runs each step of
``x`` in a child process that the node can kill.

The child is forked (multiprocessing, start method ``"fork"``): it inherits the handler and
the :class:`~peo.Step` by memory (nothing of the input is pickled, the user's module is not
imported again), runs the handler (an async one under its own ``asyncio.run``), sends the
pickled proposal or exception back over a pipe and leaves with ``os._exit(0)`` (no atexit
handler of the node runs, no buffer of the node is flushed twice). The node waits on the
pipe and the process's sentinel from its event loop, never blocking it, and samples the
child's resident set every 10 ms when the handler declares ``memory=``. A step that runs past
its timeout or grows past its ``memory=`` is killed (SIGKILL) and reaped, as is the child of a
step whose node task is cancelled (shutdown); a child that answered is reaped from the loop
once it has exited (the step does not wait for it). A killed step, and a child that died without answering
(``os._exit``, a signal, a segfault), are recorded as a retryable :class:`~peo.Fail` of class
``timeout``, ``memory`` or ``crash``; the handler's own exception is raised again in the node
and recorded as without isolation.

Forking a process that has threads (the node's thread pool, a store's thread) is risky: a
lock another thread held at the fork stays locked in the child for good. The child does as
little as it can (no logging, no store, no peo code but this module's); a handler that takes
such a lock in its child (its own threads' locks, a library's) may hang until its timeout
kills it. Memory is what the child added to its resident set since the fork: the pages it
still shares with the node are the node's.
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing
import os
import pickle
import signal
import traceback
import warnings
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from ..core.model import Fail, Step
from ..errors import UsageError

__all__ = ["ISOLATIONS", "check_isolation", "run_isolated"]

#: The isolation a handler may declare (None: the step runs in the node).
ISOLATIONS = (None, "process")
_SAMPLE = 0.01  # seconds between two samples of the child's memory


def check_isolation(isolation: object, what: str) -> None:
    """Refuse an isolation this platform or peo cannot provide (at registration)."""
    if isolation not in ISOLATIONS:
        raise UsageError(f"{what}: isolation must be None or 'process', not {isolation!r}")
    if isolation == "process" and "fork" not in multiprocessing.get_all_start_methods():
        raise UsageError(f"{what}: isolation='process' needs fork(), which this platform does not have")


def _child(fn: Callable[[Step], Any], step: Step, send: Connection) -> None:
    """The child's whole life: run the step, send one answer, leave without cleaning up."""
    try:
        signal.set_wakeup_fd(-1)  # the node's loop's self-pipe is not ours to write to
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)  # the node's shutdown kills its children
        try:
            result = fn(step)
            if inspect.iscoroutine(result):
                result = asyncio.run(result)
            kind, obj, text = "ok", result, ""
        except Exception as exc:
            frames = traceback.extract_tb(exc.__traceback__)[1:]  # without this function's frame
            kind, obj = "raised", exc
            text = "".join(["Traceback of the step's process (most recent call last):\n",
                            *traceback.format_list(frames), *traceback.format_exception_only(exc)])
        except SystemExit as exc:  # never carried into the node: the child ends as it asked
            os._exit(exc.code if isinstance(exc.code, int) else 1)
        try:
            blob = pickle.dumps(obj)
        except Exception as exc:
            blob, text = b"", f"{text}{type(obj).__name__} cannot be pickled: {type(exc).__name__}: {exc}"
            kind = "unpicklable" if kind == "ok" else kind
        message = str(obj)[:2000] if kind == "raised" else ""
        send.send_bytes(pickle.dumps((kind, type(obj).__name__, message, blob, text)))
    finally:
        os._exit(0)


def _rss(pid: int) -> int:
    """The resident set of ``pid`` (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _ended(exitcode: int | None) -> str:
    if exitcode is None:
        return "it did not exit"
    if exitcode < 0:
        try:
            return f"killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"


def _answer(data: bytes) -> tuple[object, bool]:
    """The proposal in ``data`` (False), or the handler's exception to raise again (True)."""
    kind, name, message, blob, text = pickle.loads(data)
    if kind == "unpicklable":
        return Fail(f"the step's proposal could not be sent back from its process: {text}"[:2000],
                    error_class="invalid"), False
    try:
        obj = pickle.loads(blob) if blob else None
    except Exception as exc:
        if kind == "ok":
            return Fail(f"the step's proposal could not be read back: {type(exc).__name__}: {exc}"[:2000],
                        error_class="invalid"), False
        obj = None
    if kind == "ok":
        return obj, False
    if not isinstance(obj, BaseException):  # could not be carried: one of the same name stands in
        obj = type(name, (Exception,), {"__module__": __name__})(message)
    obj.__traceback__ = None
    if text:
        obj.add_note(text.rstrip("\n"))
    return obj, True


def _when_readable(loop: asyncio.AbstractEventLoop, fd: int) -> asyncio.Future[None]:
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        loop.remove_reader(fd)  # once: a sentinel stays readable
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    return fut


async def run_isolated(fn: Callable[[Step], Any], step: Step, *, timeout: float,
                       memory_limit: int | None) -> object:
    """Run ``fn(step)`` in a forked child and return its proposal, or a retryable Fail of
    class ``timeout``, ``memory`` or ``crash`` (the child is killed and reaped), or an
    ``invalid`` Fail for a proposal that cannot be pickled; the handler's own exception is
    raised again here, with the child's traceback as a note."""
    check_isolation("process", "an isolated step")
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn, step, send), daemon=True, name=f"peo-step-{step.object_id}")
    with warnings.catch_warnings():  # 3.12+ warns on fork() with threads: see the module's docstring
        warnings.simplefilter("ignore", DeprecationWarning)
        proc.start()
    send.close()  # the child holds the only writing end: a child that dies is an EOF here
    pid = proc.pid
    assert pid is not None
    base = _rss(pid) if memory_limit is not None else 0  # what it shares with the node at the fork
    loop = asyncio.get_running_loop()
    answered, exited = _when_readable(loop, recv.fileno()), _when_readable(loop, proc.sentinel)
    deadline = loop.time() + timeout
    data = None
    try:
        while not (answered.done() or exited.done()):
            left = deadline - loop.time()
            if left <= 0:
                return _kill(proc, "timeout", f"the handler did not finish within {timeout:g} s: its process "
                                              "was killed")
            await asyncio.wait((answered, exited), timeout=left if memory_limit is None else min(left, _SAMPLE),
                               return_when=asyncio.FIRST_COMPLETED)
            if memory_limit is not None and not answered.done() and (grown := _rss(pid) - base) > memory_limit:
                return _kill(proc, "memory", f"the step's process grew by {grown >> 20} MiB, past its handler's "
                                             f"memory= of {memory_limit >> 20} MiB: it was killed")
        try:
            data = recv.recv_bytes() if recv.poll() else None  # sent whole before it exits: no wait here
        except (EOFError, OSError):
            data = None
        if data is None:
            await asyncio.wait((exited,), timeout=1.0)  # for its exit status
            return _kill(proc, "crash", "")
        answer, raised = _answer(data)
        if raised:
            assert isinstance(answer, BaseException)
            raise answer  # the handler's own exception, raised again in the node (its traceback: a note)
        return answer
    finally:
        loop.remove_reader(recv.fileno())
        recv.close()
        if data is not None and proc.exitcode is None:  # it answered and is exiting: reaped once it has
            exited.add_done_callback(lambda _: _reap(proc))  # (tearing down a big child takes a while)
        else:
            loop.remove_reader(proc.sentinel)
            _reap(proc)


def _reap(proc: multiprocessing.process.BaseProcess) -> None:
    _kill(proc, "", "")
    if proc.exitcode is not None:
        proc.close()  # its sentinel closed, and multiprocessing forgets it


def _kill(proc: multiprocessing.process.BaseProcess, error_class: str, reason: str) -> Fail:
    """SIGKILL ``proc`` unless it has exited, and reap it (no zombie is left)."""
    if proc.exitcode is None:
        proc.kill()
        proc.join(1.0)  # SIGKILL cannot be caught: its end is the kernel's business
    if error_class == "crash":
        reason = f"the step's process died without answering ({_ended(proc.exitcode)})"
    return Fail(reason, error_class=error_class, retryable=True)
