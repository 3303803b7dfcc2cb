"""Durable functions: ``run.refine``, ``run.wait_until``, ``run.progress``, and bad input.

Each operation is one cycle and one signed entry (progress rides on another's); each bad
input is a typed error recorded in the object's memory, or raised at registration, and
never a node crash.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections import Counter
from typing import Any

import pytest

import peo
from peo import cli
from peo.core.model import Action, Context, Intent
from peo.functions import MAX_PROGRESS_BYTES, PROGRESS_KEY, function_handler, progress_of

SECOND = 1_000_000_000


async def run_idle(url: str, app: peo.App, **kw: Any) -> None:
    node = peo.Node(url, app, **kw)
    await asyncio.wait_for(node.run_until_idle(), 60)


async def failure(client: peo.Client, oid: str) -> dict[str, Any]:
    """The error the failed object ``oid`` recorded last."""
    with pytest.raises(peo.ObjectFailedError) as failed:
        await client.wait(oid, timeout=10)
    assert failed.value.last_error is not None
    return failed.value.last_error


def show(capsys: pytest.CaptureFixture[str], url: str, oid: str, *more: str) -> str:
    """``peo show`` run in-process, as tests/cli/clirun.py does."""
    code = cli.main(["--store", url, "show", oid, *more])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err, err
    return out


# -- run.refine -----------------------------------------------------------------------------


async def test_refine_is_a_mutate_entry_and_run_goal_reads_the_refined_goal(store_url: str) -> None:
    calls: Counter[str] = Counter()
    app = peo.App()

    @app.function("deepen")
    async def deepen(run: peo.Run, topic: str) -> dict[str, Any]:
        calls["replay"] += 1
        seen = [dict(run.goal)]
        await run.refine(goal={"topic": topic, "depth": 2})
        seen.append(dict(run.goal))
        await run.refine(constraints=peo.Constraints(max_steps=40))
        pages = await run.step(lambda: [topic] * 2, name="search")
        return {"seen": seen, "pages": pages}

    async with peo.Client(store_url) as client:
        oid = await client.submit("deepen", goal={"topic": "bees"})
        await run_idle(store_url, app)
        # The function is re-run with the goal it was created with (it takes no `depth`),
        # while run.goal follows the recorded refines.
        assert await client.wait(oid, timeout=10) == {
            "seen": [{"topic": "bees"}, {"topic": "bees", "depth": 2}], "pages": ["bees", "bees"]}
        info = await client.get(oid)
        assert [e.action for e in info.memory] == [
            Action.INSTANTIATE, Action.MUTATE, Action.MUTATE, Action.EXECUTE, Action.TERMINATE]
        first, second = info.memory[1].outcome, info.memory[2].outcome
        assert first["new"] == {"goal": {"topic": "bees", "depth": 2}}
        assert first["state"]["fn.0"] == {"op": "refine", "name": "goal", "seq": 1}
        assert second["state"]["fn.1"] == {"op": "refine", "name": "constraints", "seq": 2}
        assert info.intent.goal == {"topic": "bees", "depth": 2}
        assert info.intent.constraints.max_steps == 40
        assert await client.verify(oid) == len(info.memory)
    # From the top at the start and after each refine (a refine ends the cycle); the step
    # then went on live to the return. Each refine was done once.
    assert calls["replay"] == 3


async def test_a_refine_the_policy_refuses_fails_the_object(store_url: str) -> None:
    app = peo.App()

    @app.function("loosen")
    async def loosen(run: peo.Run) -> None:
        await run.refine(constraints=peo.Constraints(max_steps=1000))

    async with peo.Client(store_url) as client:
        oid = await client.submit("loosen", max_steps=10)
        await run_idle(store_url, app)
        error = await failure(client, oid)
        assert error["class"] == "refused" and "relaxes max_steps" in error["message"]
        info = await client.get(oid)
        assert info.intent.constraints.max_steps == 10


@pytest.mark.parametrize(("goal", "constraints", "message"), [
    (None, None, "needs goal= or constraints="),
    ("deeper", None, "goal must be a dict with string keys, got 'deeper'"),
    ({1: "x"}, None, "goal must be a dict with string keys"),
    (None, {"max_steps": 3}, "constraints must be a peo.Constraints"),
])
async def test_refine_refuses_what_it_cannot_record(sqlite_url: str, goal: Any, constraints: Any,
                                                      message: str) -> None:
    app = peo.App()

    @app.function("r")
    async def r(run: peo.Run) -> None:
        await run.refine(goal=goal, constraints=constraints)

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("r")
        await run_idle(sqlite_url, app)
        error = await failure(client, oid)
        assert error["class"] == "UsageError" and message in error["message"]


# -- run.wait_until -------------------------------------------------------------------------


async def test_wait_until_is_a_dormancy_until_that_time_then_a_reentry(store_url: str) -> None:
    calls: Counter[str] = Counter()
    app = peo.App()

    @app.function("later")
    async def later(run: peo.Run) -> str:
        calls["replay"] += 1
        at = await run.step(lambda: time.time() + 0.05, name="pick")  # the clock, read in a step
        await run.wait_until(at)
        await run.wait_until(datetime.datetime.fromtimestamp(at + 0.05, tz=datetime.UTC))
        await run.wait_until(0)  # long past: still a dormancy and a reentry, the same on every re-run
        return "woke"

    async with peo.Client(store_url) as client:
        oid = await client.submit("later")
        await run_idle(store_url, app)
        assert await client.wait(oid, timeout=10) == "woke"
        info = await client.get(oid)
        assert [e.action for e in info.memory] == [
            Action.INSTANTIATE, Action.EXECUTE,
            Action.DORMANCY, Action.REENTRY, Action.DORMANCY, Action.REENTRY, Action.DORMANCY, Action.REENTRY,
            Action.TERMINATE]
        at = info.memory[1].outcome["state"]["fn.0"]["result"]
        waits = [info.memory[seq].outcome for seq in (2, 4, 6)]
        # Recorded as asked (the datetime to its microsecond).
        assert [w["state"][f"fn.{n}"]["until"] for n, w in enumerate(waits, 1)] == \
            [at, pytest.approx(at + 0.05, abs=1e-6), 0.0]
        # The wake time is the one asked for (to float precision), or, if that time had
        # already passed when the entry was written (a busy machine), at once.
        for seq, wait, wanted in zip((2, 4), waits[:2], (at, at + 0.05), strict=True):
            expected = max(wanted * SECOND, info.memory[seq].timestamp)
            assert abs(wait["wake"]["until"] - expected) < SECOND / 1000
        assert waits[2]["wake"]["until"] <= info.memory[6].timestamp
        assert {info.memory[seq].outcome["trigger"] for seq in (3, 5, 7)} == {"time"}
    assert calls["replay"] == 4  # the start (then live through the step), and after each wake-up


@pytest.mark.parametrize(("when", "shown"), [
    (datetime.datetime(2030, 1, 1), "the naive datetime 2030-01-01T00:00:00 (give it a tzinfo)"),
    ("tomorrow", "'tomorrow'"),
    (float("nan"), "nan"),
    (True, "True"),
])
async def test_wait_until_refuses_what_is_not_a_point_in_time(sqlite_url: str, when: Any, shown: str) -> None:
    app = peo.App()

    @app.function("w")
    async def w(run: peo.Run) -> None:
        await run.wait_until(when)

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("w")
        await run_idle(sqlite_url, app)
        error = await failure(client, oid)
        assert error["class"] == "UsageError"
        assert error["message"] == ("run.wait_until needs a Unix time in seconds (a finite number) or a "
                                    f"timezone-aware datetime, got {shown}")


# -- run.progress ---------------------------------------------------------------------------


async def test_progress_rides_on_the_entry_that_ends_the_cycle_and_only_when_it_changes(store_url: str) -> None:
    app = peo.App()

    @app.function("steps")
    async def steps(run: peo.Run) -> int:
        run.progress("starting")
        a = await run.step(lambda: 1, name="a")
        run.progress({"done": ["a"]})
        b = await run.step(lambda: 2, name="b")
        run.progress({"done": ["a"]})  # unchanged: not written again
        c = await run.step(lambda: 3, name="c")
        run.progress(("all", 3))  # recorded as a list
        return int(a + b + c)

    async with peo.Client(store_url) as client:
        oid = await client.submit("steps")
        await run_idle(store_url, app)
        assert await client.wait(oid, timeout=10) == 6
        info = await client.get(oid)
        # No entry of its own: three steps and the return.
        assert [e.action for e in info.memory] == [
            Action.INSTANTIATE, Action.EXECUTE, Action.EXECUTE, Action.EXECUTE, Action.TERMINATE]
        updates = [e.outcome["state"] for e in info.memory[1:]]
        assert [u.get(PROGRESS_KEY, "-") for u in updates] == ["starting", {"done": ["a"]}, "-", ["all", 3]]
        # The record of step a, the progress, and (the first entry) the function's version.
        assert sorted(updates[0]) == ["fn.0", PROGRESS_KEY, "fn.version"]
        assert info.state[PROGRESS_KEY] == ["all", 3] == progress_of(info) == progress_of(info.state)


def test_peo_show_prints_the_progress_of_a_waiting_function(capsys: pytest.CaptureFixture[str],
                                                             store_url: str) -> None:
    app = peo.App()

    @app.function("approval")
    async def approval(run: peo.Run, doc: str) -> str:
        run.progress({"phase": "waiting for approval", "doc": doc})
        verdict = await run.wait_signal("approve")
        run.progress("approved")
        return f"{doc}: {verdict.payload}"

    async def start() -> str:
        async with peo.Client(store_url) as client:
            oid = await client.submit("approval", goal={"doc": "plan"})
            await run_idle(store_url, app, idle_horizon=0)
            return oid

    async def finish(oid: str) -> Any:
        async with peo.Client(store_url) as client:
            await client.signal(oid, "approve", "yes")
            await run_idle(store_url, app, idle_horizon=0)
            return await client.wait(oid, timeout=10)

    oid = asyncio.run(start())
    # What is it doing now? Read from the store, without running the function.
    head = show(capsys, store_url, oid).partition("\n\n")[0]
    assert "dormant" in head
    assert 'progress  {"phase":"waiting for approval","doc":"plan"}' in head.splitlines()
    doc = json.loads(show(capsys, store_url, oid, "--json"))
    assert doc["progress"] == {"phase": "waiting for approval", "doc": "plan"} == doc["state"][PROGRESS_KEY]

    assert asyncio.run(finish(oid)) == "plan: yes"
    assert 'progress  "approved"' in show(capsys, store_url, oid).splitlines()
    assert json.loads(show(capsys, store_url, oid, "--json"))["progress"] == "approved"


def test_peo_show_json_has_a_null_progress_for_an_object_that_gave_none(capsys: pytest.CaptureFixture[str],
                                                                         sqlite_url: str) -> None:
    app = peo.App()

    @app.function("quiet")
    async def quiet(run: peo.Run) -> int:
        return int(await run.step(lambda: 1))

    async def go() -> str:
        async with peo.Client(sqlite_url) as client:
            oid = await client.submit("quiet")
            await run_idle(sqlite_url, app)
            return oid

    oid = asyncio.run(go())
    assert json.loads(show(capsys, sqlite_url, oid, "--json"))["progress"] is None
    assert not any(line.startswith("progress") for line in show(capsys, sqlite_url, oid).splitlines())


@pytest.mark.parametrize(("value", "message"), [
    ("x" * (MAX_PROGRESS_BYTES + 1), f"more than the {MAX_PROGRESS_BYTES} allowed"),
    ({"big": ["y" * 1000] * 5}, f"more than the {MAX_PROGRESS_BYTES} allowed"),
    (object(), "must be plain data"),
    ({1: "int key"}, "must be plain data"),
])
async def test_progress_refuses_a_value_too_big_or_not_plain_data(sqlite_url: str, value: Any, message: str) -> None:
    app = peo.App()

    @app.function("p")
    async def p(run: peo.Run) -> None:
        run.progress(value)

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("p")
        await run_idle(sqlite_url, app)
        error = await failure(client, oid)
        assert error["class"] == "UsageError" and message in error["message"]


async def test_progress_inside_a_step_is_refused(sqlite_url: str) -> None:
    app = peo.App()

    @app.function("inside")
    async def inside(run: peo.Run) -> None:
        async def tool() -> int:
            run.progress("from inside")  # a re-run that returns the step's result would not see it
            return 1

        await run.step(tool)

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("inside")
        await run_idle(sqlite_url, app)
        error = await failure(client, oid)
        assert error["class"] == "UsageError" and "run.progress inside a step" in error["message"]


# -- bad input --------------------------------------------------------------------------------


async def test_a_step_result_that_is_not_plain_data_fails_naming_the_step(store_url: str) -> None:
    calls: Counter[str] = Counter()
    app = peo.App()

    def handle() -> object:
        calls["handle"] += 1
        return object()

    @app.function("h")
    async def h(run: peo.Run) -> None:
        await run.step(handle)

    async with peo.Client(store_url) as client:
        oid = await client.submit("h")
        await run_idle(store_url, app)
        error = await failure(client, oid)
        assert error["class"] == "UsageError" and error["retryable"] is False
        assert "the result of step 'handle'" in error["message"] and "plain data" in error["message"]
        info = await client.get(oid)
        assert [e.action for e in info.memory] == [Action.INSTANTIATE, Action.TERMINATE]
    assert calls == Counter(handle=1)


async def test_a_step_result_over_the_policy_payload_limit_fails_as_invalid(store_url: str) -> None:
    calls: Counter[str] = Counter()
    app = peo.App()

    def big() -> str:
        calls["big"] += 1
        return "x" * 5000

    @app.function("big")
    async def big_fn(run: peo.Run) -> str:
        return str(await run.step(big))

    async with peo.Client(store_url) as client:
        oid = await client.submit("big")
        await run_idle(store_url, app, policy=peo.Policy(max_payload_bytes=1024))
        error = await failure(client, oid)
        assert error["class"] == "invalid" and error["retryable"] is False
        assert "more than 1024 bytes" in error["message"]
        info = await client.get(oid)
        assert [e.action for e in info.memory] == [Action.INSTANTIATE, Action.TERMINATE]
        assert "state" not in info.memory[-1].outcome  # the result was not recorded
    assert calls == Counter(big=1)


def test_registration_refuses_a_function_that_is_not_async() -> None:
    app = peo.App()

    def plain(run: peo.Run) -> None:
        return None

    async def generator(run: peo.Run) -> Any:
        yield None

    not_async: list[Any] = [plain, lambda run: None, generator]
    for fn in not_async:
        with pytest.raises(peo.UsageError, match=r"must be an async function \(async def\)"):
            app.function("f")(fn)
    assert "f" not in app


async def test_a_run_used_after_its_function_returned_raises_a_usage_error(sqlite_url: str) -> None:
    calls: Counter[str] = Counter()
    leaked: list[peo.Run] = []
    app = peo.App()

    def tool() -> int:
        calls["tool"] += 1
        return 1

    @app.function("leak")
    async def leak(run: peo.Run) -> str:
        leaked.append(run)
        return "returned"

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("leak")
        await run_idle(sqlite_url, app)
        assert await client.wait(oid, timeout=10) == "returned"
    [run] = leaked
    with pytest.raises(peo.UsageError, match=r"run\.step called outside its durable function"):
        await run.step(tool)
    with pytest.raises(peo.UsageError, match=r"run\.sleep called outside"):
        await run.sleep(1)
    with pytest.raises(peo.UsageError, match=r"run\.progress called outside"):
        run.progress("late")
    with pytest.raises(peo.UsageError, match=r"run\.child called outside"):
        run.child("leak")
    assert calls == Counter()


@pytest.mark.parametrize("how", ["create_task", "asyncio.gather", "swallowed"])
async def test_an_operation_from_another_task_fails_the_object(store_url: str, how: str) -> None:
    calls: Counter[str] = Counter()
    app = peo.App()

    def tool() -> int:
        calls["tool"] += 1
        return 1

    @app.function("spawn")
    async def spawn(run: peo.Run) -> str:
        if how == "asyncio.gather":
            await asyncio.gather(run.step(tool), run.step(tool))
        else:
            task = asyncio.create_task(run.step(tool))
            try:
                await task
            except peo.UsageError:
                if how != "swallowed":
                    raise
        return "carried on"

    async with peo.Client(store_url) as client:
        oid = await client.submit("spawn")
        await run_idle(store_url, app)
        # Even swallowed: what the task asked for was not carried out, so nothing after it holds.
        error = await failure(client, oid)
        assert error["class"] == "UsageError" and error["retryable"] is False
        assert "run.step called from another task than its durable function's" in error["message"]
    assert calls == Counter()


@pytest.mark.parametrize("what", ["int", "coroutine", "function"])
async def test_gather_of_what_is_not_a_child_fails_with_a_usage_error(store_url: str, what: str) -> None:
    app = peo.App()

    @app.function("g")
    async def g(run: peo.Run) -> list[Any]:
        given: Any = 42 if what == "int" else print if what == "function" else run.step(lambda: 1)
        return await run.gather(run.child("g"), given)

    async with peo.Client(store_url) as client:
        oid = await client.submit("g")
        await run_idle(store_url, app)
        error = await failure(client, oid)
        assert error["class"] == "UsageError"
        assert error["message"].startswith("run.gather takes this run's run.child(...) values, got ")
        info = await client.get(oid)
        assert [e.action for e in info.memory] == [Action.INSTANTIATE, Action.TERMINATE]  # no child started


async def test_a_step_given_something_not_callable_fails_with_a_usage_error(sqlite_url: str) -> None:
    app = peo.App()

    @app.function("s")
    async def s(run: peo.Run) -> None:
        await run.step(42)  # type: ignore[arg-type]

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("s")
        await run_idle(sqlite_url, app)
        error = await failure(client, oid)
        assert (error["class"], error["message"]) == ("UsageError", "run.step needs a function, got int")


class Abort(BaseException):
    """A library's own "stop" class: a BaseException that is not an Exception."""


async def test_a_base_exception_that_is_not_an_exception_is_a_failure_not_a_node_crash(store_url: str) -> None:
    calls: Counter[str] = Counter()
    app = peo.App()

    def stop() -> None:  # sync: raised in the step's thread
        calls["stop"] += 1
        raise Abort("stop now")

    @app.function("aborts")
    async def aborts(run: peo.Run, where: str) -> None:
        if where == "step":
            await run.step(stop)
        raise Abort()

    @app.function("fine")
    async def fine(run: peo.Run) -> int:
        return int(await run.step(lambda: 7))

    async with peo.Client(store_url) as client:
        in_step = await client.submit("aborts", goal={"where": "step"})
        between = await client.submit("aborts", goal={"where": "code"})
        other = await client.submit("fine")
        await run_idle(store_url, app)
        error = await failure(client, in_step)
        assert (error["class"], error["retryable"]) == ("Abort", False)
        assert error["message"] == "step 'stop' raised Abort, a BaseException that is not an Exception: stop now"
        error = await failure(client, between)
        assert error["message"] == "the function raised Abort, a BaseException that is not an Exception"
        assert await client.wait(other, timeout=10) == 7  # the node went on serving
        info = await client.get(in_step)
        assert [e.action for e in info.memory] == [Action.INSTANTIATE, Action.TERMINATE]  # not retried
    assert calls == Counter(stop=1)


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit])
async def test_keyboard_interrupt_and_system_exit_still_propagate(kind: type[BaseException]) -> None:
    async def f(run: peo.Run) -> None:
        await run.step(lambda: 1)

    async def g(run: peo.Run) -> None:
        def quit_() -> None:
            raise kind()

        await run.step(quit_)

    step = peo.Step(object_id="o", seq=1, intent=Intent("g", {}), context=Context(), state={}, memory=[])
    assert isinstance(await function_handler(f)(step), peo.Continue)
    with pytest.raises(kind):
        await function_handler(g)(step)
