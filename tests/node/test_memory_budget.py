"""The memory budget (issue 14, item 6): sizes, admission, whom to shed, and a node that
throttles and sheds with a fake memory probe (no timed assertions)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import peo
from peo import cli
from peo.core.model import Action
from peo.errors import UsageError
from peo.healing.memory import (
    DEFAULT_RESERVE,
    LEARN_SAMPLES,
    MemoryBudget,
    budget_for,
    cgroup_limit,
    cgroup_working_set,
    parse_limit,
    parse_size,
)

MiB = 1 << 20
GiB = 1 << 30


# -- sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "size"), [
    ("400MiB", 400 * MiB), ("2GiB", 2 * GiB), ("512M", 512 * MiB), ("512m", 512 * MiB), ("1e9", 10**9),
    ("1000", 1000), (1000, 1000), ("1.5GiB", 3 * GiB // 2), ("10 MB", 10**7), ("4k", 4096), ("  8KiB ", 8192),
    ("1TiB", 1 << 40), ("3gb", 3 * 10**9), ("2.5e3B", 2500),
])
def test_sizes_parse(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "abc", "-1", "0", "0.2", "12XB", "1e400", "nan", "inf", "MiB", "1 2MiB",
                                  "400 MiBs", "--4G"])
def test_malformed_sizes_are_usage_errors_that_say_what_a_size_looks_like(text: str) -> None:
    with pytest.raises(UsageError, match=r"size|at least one byte"):
        parse_size(text)


def test_a_size_of_the_wrong_type_is_a_usage_error() -> None:
    for value in (True, 1.5, None, [1]):
        with pytest.raises(UsageError):
            parse_size(value)  # type: ignore[arg-type]


def fake_cgroup(tmp_path: Path, limit: str | None, current: int = 0, inactive_file: int = 0) -> dict[str, Path]:
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("1:name=systemd:/\n0::/peo.slice/node-1\n")
    where = tmp_path / "sys" / "peo.slice" / "node-1"
    where.mkdir(parents=True)
    if limit is not None:
        (where / "memory.max").write_text(limit + "\n")
    (where / "memory.current").write_text(f"{current}\n")
    (where / "memory.stat").write_text(f"anon 5\nfile 9\ninactive_file {inactive_file}\nactive_file 3\n")
    return {"proc_cgroup": proc, "root": tmp_path / "sys"}


def test_auto_takes_the_cgroup_v2_memory_max_when_one_is_set(tmp_path: Path) -> None:
    paths = fake_cgroup(tmp_path, str(400 * MiB))
    assert cgroup_limit(**paths) == 400 * MiB
    assert parse_limit("auto", **paths) == (400 * MiB, "cgroup")
    assert parse_limit(None, **paths) == (400 * MiB, "cgroup")  # the default is auto
    assert parse_limit("off", **paths) == (None, "off")  # off wins over the cgroup
    assert parse_limit("300MiB", **paths) == (300 * MiB, "setting")


@pytest.mark.parametrize("limit", ["max", None, "garbage"])
def test_auto_is_no_limit_without_a_cgroup_memory_max(tmp_path: Path, limit: str | None) -> None:
    paths = fake_cgroup(tmp_path, limit)
    assert parse_limit("auto", **paths) == (None, "off")
    assert parse_limit("auto", proc_cgroup=tmp_path / "missing", root=tmp_path) == (None, "off")


def test_the_cgroup_probe_leaves_the_reclaimable_page_cache_out(tmp_path: Path) -> None:
    probe = cgroup_working_set(**fake_cgroup(tmp_path, "max", current=300 * MiB, inactive_file=100 * MiB))
    assert probe() == 200 * MiB


def test_a_malformed_limit_is_a_usage_error_at_node_start_and_in_the_cli(sqlite_url: str,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    app = peo.App()
    app.handler("x")(lambda step: peo.Done({}))
    with pytest.raises(UsageError, match="memory limit 'lots' is not a size"):
        peo.Node(sqlite_url, app, memory_limit="lots")
    assert budget_for("off", app) is None
    code = cli.main(["--store", sqlite_url, "node", "--app", "nosuchmodule:app", "--memory-limit", "12XB"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    # The app is loaded first; a module of our own: the limit is what is reported.
    Path("budgetapp.py").write_text("import peo\napp = peo.App()\napp.handler('x')(lambda step: peo.Done({}))\n")
    code = cli.main(["--store", sqlite_url, "node", "--app", "budgetapp:app", "--memory-limit", "12XB",
                     "--until-idle"])
    err = capsys.readouterr().err
    assert code == 2 and "memory limit '12XB' is not a size" in err and "Traceback" not in err
    Path("node.toml").write_text('app = "budgetapp:app"\nmemory_limit = "-5G"\n')
    code = cli.main(["--store", sqlite_url, "node", "--profile", "node.toml", "--until-idle"])
    err = capsys.readouterr().err
    assert code == 2 and "memory limit '-5G' is not a size" in err and "Traceback" not in err
    code = cli.main(["--store", sqlite_url, "node", "--app", "budgetapp:app", "--memory-limit", "300MiB",
                     "--until-idle"])
    err = capsys.readouterr().err
    assert code == 0 and "memory limit 300.0MiB (setting)" in err and "0 shed for memory" in err


def test_handlers_and_functions_declare_their_reserve() -> None:
    app = peo.App()

    @app.handler("big", memory="200MiB")
    def big(step: peo.Step) -> peo.Proposal:
        return peo.Done({})

    @app.function("fn", memory=64 * MiB)
    async def fn(run: peo.Run) -> int:
        return 1

    assert app.handlers["big"].memory == 200 * MiB
    assert app.handlers["fn"].memory == 64 * MiB
    with pytest.raises(UsageError, match="handler 'bad': memory"):
        app.handler("bad", memory="a lot")


# -- admission and shedding, with a fake probe -----------------------------------------


class Probe:
    """What the budget 'measures': set ``value`` to change it."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __call__(self) -> int:
        return self.value


def test_watermarks_and_admission_count_what_is_reserved_but_not_used_yet() -> None:
    probe = Probe(100 * MiB)
    b = MemoryBudget(200 * MiB, probe, declared={"big": 20 * MiB})
    assert (b.high, b.low) == (200 * MiB, 170 * MiB)
    assert b.room(["big"], 32) == 3  # (170 - 100) // 20
    for oid in ("a", "b", "c"):
        assert b.admit(b.reserve_for("big"))
        b.reserve(oid, "big", 0)
    # Measured memory has not grown yet, but the reserves count: no room for a fourth.
    assert not b.admit(20 * MiB) and b.room(["big"], 32) == 0 and b.throttled == 2
    probe.value = 140 * MiB  # they used 40 of the 60 MiB they reserved: still 60 accounted
    assert b.accounted() == 160 * MiB and b.room(["big"], 32) == 0
    probe.value = 165 * MiB  # they use more than they reserved: the measure counts
    b.sample()
    assert b.accounted() == 165 * MiB
    b.release("a")
    b.release("b")
    b.release("c")
    probe.value = 100 * MiB
    assert b.room(["big"], 2) == 2


def test_a_node_holding_nothing_admits_one_even_over_its_budget() -> None:
    b = MemoryBudget(200 * MiB, Probe(300 * MiB))
    assert b.room(["x"], 32) == 1 and b.admit(10 * GiB)
    b.reserve("a", "x", 0)
    assert b.room(["x"], 32) == 0 and not b.admit(1)


def test_the_reserve_is_declared_else_observed_else_the_default() -> None:
    probe = Probe(100 * MiB)
    b = MemoryBudget(GiB, probe, declared={"big": 300 * MiB})
    assert b.reserve_for("big") == 300 * MiB and b.learned("big")
    assert b.reserve_for("small") == DEFAULT_RESERVE and not b.learned("small")
    b.reserve("a", "small", 0)
    b.reserve("b", "small", 0)
    probe.value = 150 * MiB  # two objects of "small" grew the node by 50 MiB
    for _ in range(LEARN_SAMPLES):
        b.sample()
    assert b.learned("small") and b.reserve_for("small") == 25 * MiB
    probe.value = 110 * MiB  # the largest share seen is kept
    b.sample()
    assert b.reserve_for("small") == 25 * MiB


def test_start_ups_of_a_handler_not_learned_yet_go_one_at_a_time() -> None:
    probe = Probe(100 * MiB)
    b = MemoryBudget(GiB, probe, declared={"big": 100 * MiB})
    # Known reserves by the room there is; one of the new handler, and only one.
    assert b.admission(["big", "new"], 32) == [(["big"], 7), (["new"], 1)]
    b.reserve("n1", "new", 0)
    assert b.admission(["big", "new"], 32) == [(["big"], 7)]  # still learning "new"
    probe.value = 140 * MiB  # n1 is seen to take 40 MiB
    for _ in range(LEARN_SAMPLES):
        b.sample()
    assert b.reserve_for("new") == 40 * MiB
    assert b.admission(["new"], 32) == [(["new"], 18)]  # (870.4 MiB low - 140 measured) // 40
    assert MemoryBudget(GiB, Probe(2 * GiB)).admission(["new"], 32) == [(["new"], 1)]  # holding nothing


def test_a_handler_whose_objects_end_between_samples_is_learned_as_small() -> None:
    b = MemoryBudget(GiB, Probe(100 * MiB))
    b.reserve("a", "fast", 0)
    b.release("a")  # done before any sample saw it
    for _ in range(LEARN_SAMPLES):
        assert b.admission(["fast"], 32) in ([(["fast"], 1)], [(["fast"], 32)])  # one at a time, then all
    assert b.learned("fast") and b.reserve_for("fast") == MiB
    assert b.admission(["fast"], 32) == [(["fast"], 32)]


def test_pick_to_shed_takes_the_lowest_priority_first_and_of_equals_the_most_recent() -> None:
    probe = Probe(100 * MiB)
    b = MemoryBudget(200 * MiB, probe, declared={"x": 20 * MiB})
    for oid, priority in (("old-low", 1), ("high", 9), ("new-low", 1), ("mid", 5)):
        b.reserve(oid, "x", priority)
    running = [("old-low", 1), ("high", 9), ("new-low", 1), ("mid", 5)]
    probe.value = 171 * MiB  # just over the low watermark: one object's reserve covers it
    b.sample()
    assert b.pick_to_shed(running) == ["new-low"]
    probe.value = 215 * MiB  # 45 MiB over low, and each object seen to hold 115 / 4 MiB: two cover it
    b.sample()
    assert b.pick_to_shed(running) == ["new-low", "old-low"]
    b.estimates.clear()  # by their reserves of 20 MiB: three
    assert b.pick_to_shed(running) == ["new-low", "old-low", "mid"]
    probe.value = 10 * GiB  # never all of them: the highest priority one stays
    b.sample()
    assert b.pick_to_shed(running) == ["new-low", "old-low", "mid"]
    assert b.pick_to_shed([("high", 9)]) == []


def test_over_the_high_watermark_a_sample_chooses_whom_to_shed() -> None:
    probe = Probe(100 * MiB)
    b = MemoryBudget(200 * MiB, probe, declared={"x": 40 * MiB})
    b.reserve("low", "x", 1)
    b.reserve("high", "x", 9)
    assert not b.over_high() and not b.chosen("low")
    probe.value = 201 * MiB
    b.sample()
    assert b.over_high() and b.chosen("low") and not b.chosen("high")
    decision = b.shed("low", now=10**9)
    assert decision.outcome["status"] == "shed" and decision.outcome["shed"] == "memory"
    assert b.sheds == 1 and not b.chosen("low")
    b.release("low")
    assert list(b.running) == ["high"]


# -- a node with a budget ----------------------------------------------------------------


def budget_app(active: set[str], peak: list[int], *, steps: int, reserve: str) -> peo.App:
    """Objects that hold 'memory' (in ``active``) from their first step to their last."""
    app = peo.App()

    @app.handler("hold", memory=reserve)
    async def hold(step: peo.Step) -> peo.Proposal:
        active.add(step.object_id)
        peak[0] = max(peak[0], len(active))
        await asyncio.sleep(0.002)  # let other objects in between
        n = step.state.get("n", 0) + 1
        if n >= steps:
            active.discard(step.object_id)
            return peo.Done({"n": n})
        return peo.Continue(state={"n": n})

    return app


async def test_a_node_runs_only_as_many_objects_as_its_budget_fits_and_all_finish(store_url: str) -> None:
    active: set[str] = set()
    peak = [0]
    app = budget_app(active, peak, steps=5, reserve="20MiB")
    base = 100 * MiB

    def probe() -> int:  # each object holding memory uses 15 MiB of its 20 MiB reserve
        return base + 15 * MiB * len(active)

    async with peo.Client(store_url) as client:
        ids = await client.submit_many("hold", [{}] * 10)
        node = peo.Node(store_url, app, memory_limit="200MiB", memory_probe=probe, concurrency=32)
        await asyncio.wait_for(node.run_until_idle(), 60)
        for oid in ids:
            assert await client.wait(oid, timeout=5) == {"n": 5}
            assert await client.verify(oid) == len((await client.get(oid)).memory)
    assert peak[0] == 3  # (170 MiB low watermark - 100 MiB) // 20 MiB, never more
    assert node.memory is not None and node.memory.throttled > 0
    assert node.stats["sheds"] == 0


async def test_over_the_high_watermark_the_lowest_priority_object_is_shed_and_later_finishes(store_url: str) -> None:
    active: set[str] = set()
    peak = [0]
    app = budget_app(active, peak, steps=60, reserve="40MiB")
    state: dict[str, Any] = {"node": None}

    def probe() -> int:
        # Over the high watermark once all three run, until the node has shed something.
        node = state["node"]
        if len(active) == 3 and node is not None and node.stats.get("sheds", 0) == 0:
            return 200 * MiB + 1
        return 50 * MiB

    async with peo.Client(store_url) as client:
        low = await client.submit("hold", priority=1)
        mid = await client.submit("hold", priority=5)
        high = await client.submit("hold", priority=9)
        node = peo.Node(store_url, app, memory_limit="200MiB", memory_probe=probe, concurrency=32)
        assert node.memory is not None
        node.memory.shed_delay_ns = 20_000_000  # due again soon after, so that the test is short
        state["node"] = node
        await asyncio.wait_for(node.run_until_idle(), 60)
        shed_in: dict[str, list[dict[str, Any]]] = {}
        for oid in (low, mid, high):
            assert await client.wait(oid, timeout=5) == {"n": 60}  # nothing is lost
            info = await client.get(oid)
            shed_in[oid] = [e.outcome for e in info.memory
                            if e.action is Action.DORMANCY and e.outcome.get("status") == "shed"]
            assert await client.verify(oid) == len(info.memory)
    assert peak[0] == 3
    assert node.stats["sheds"] == 1
    assert [o["shed"] for o in shed_in[low]] == ["memory"]  # signed, in its own memory
    assert shed_in[mid] == [] and shed_in[high] == []


async def test_without_a_limit_a_node_has_no_budget(sqlite_url: str) -> None:
    app = budget_app(set(), [0], steps=1, reserve="1MiB")
    node = peo.Node(sqlite_url, app, memory_limit="off")
    assert node.memory is None and "sheds" not in node.stats
