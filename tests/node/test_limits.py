"""Policy limits are ceilings and totals, end to end on both stores: an object cannot ask
for more than the node's policy allows, a tree of delegations stops at the policy's
descendants and depth, an object's state stops growing at its ceiling, and a submit that
asks for more is refused to the submitter."""

from __future__ import annotations

import asyncio

import pytest

import peo

POLICY = peo.Policy.parse("""
[limits]
max_depth = 3
max_descendants = 20
max_state_bytes = 200000
max_children = 10
[thresholds]
max_steps = 5
max_failures = 3
""")


async def run_idle(url: str, app: peo.App) -> peo.Node:
    node = peo.Node(url, app, policy=POLICY, idle_horizon=1.0)
    await asyncio.wait_for(node.run_until_idle(), 300)  # a guard against a runaway, not a timing
    return node


async def test_a_refinement_to_a_huge_step_budget_still_stops_at_the_policys(store_url: str) -> None:
    app = peo.App()
    steps: list[int] = []

    @app.handler("greedy")
    def greedy(step: peo.Step) -> peo.Proposal:
        steps.append(step.seq)
        if step.seq == 1:
            return peo.Refine(constraints=peo.Constraints(max_steps=10**12))
        return peo.Continue()

    async with peo.Client(store_url) as client:
        oid = await client.submit("greedy")
        await run_idle(store_url, app)
        with pytest.raises(peo.ObjectFailedError, match="step budget exhausted"):
            await client.wait(oid, timeout=5)
        assert len(steps) == POLICY.max_steps


async def test_a_fork_bomb_stops_at_the_policys_descendants_and_depth(store_url: str) -> None:
    app = peo.App()

    @app.handler("fork")
    def fork(step: peo.Step) -> peo.Proposal:
        if step.state.get("forked"):
            return peo.Done(None)
        return peo.Delegate([peo.Intent("fork")] * 10, wait=False, state={"forked": True})

    async with peo.Client(store_url) as client:
        root = await client.submit("fork")
        await run_idle(store_url, app)
        everything = await client.list()
        assert len(everything) <= 1 + POLICY.max_descendants
        refused = [e.outcome["error"]["message"] for o in everything for e in (await client.get(o.id)).memory
                   if e.outcome.get("status") == "refused"]
        assert refused and all("max_descendants" in m or "max_depth" in m for m in refused)
        assert (await client.get(root, memory=False)).status is peo.Status.TERMINATED


async def test_state_that_keeps_growing_ends_the_object_at_the_policys_ceiling(store_url: str) -> None:
    app = peo.App()

    @app.handler("hoarder")
    def hoarder(step: peo.Step) -> peo.Proposal:
        return peo.Continue(state={f"k{step.seq}": "x" * 60_000})

    async with peo.Client(store_url) as client:
        oid = await client.submit("hoarder")
        await run_idle(store_url, app)
        with pytest.raises(peo.ObjectFailedError, match="state would grow") as failed:
            await client.wait(oid, timeout=5)
        assert "above the limit of 200000" in str(failed.value)
        assert len((await client.get(oid)).state) == 3  # 3 x 60 KB fit, the fourth would not


async def test_a_submit_above_the_policys_ceiling_is_refused_to_the_submitter(store_url: str) -> None:
    async with peo.Client(store_url, policy=POLICY) as client:
        with pytest.raises(peo.UsageError, match="max_steps 1000000000 is above the policy's ceiling of 5"):
            await client.submit("job", max_steps=10**9)
        assert await client.list() == []  # nothing was written
        oid = await client.submit("job", max_steps=5)
        assert oid



async def test_a_node_serves_only_objects_signed_by_the_keys_its_policy_accepts(store_url: str) -> None:
    from peo.keys import generate

    outsider = generate()
    ran: list[str] = []
    app = peo.App()

    @app.handler("job")
    def job(step: peo.Step) -> peo.Proposal:
        ran.append(step.object_id)
        return peo.Done(None)

    trust = peo.Policy.parse(f'[trust]\nkeys = {{ "{outsider.public_key.hex()}" = ["*"] }}\n')
    async with peo.Client(store_url, policy=trust) as client, \
            peo.Client(store_url, key=outsider, identity=client.identity) as other:
        mine = await client.submit("job")
        theirs = await other.submit("job")  # same claimed identity, another key
        policy = peo.Policy.parse(f'[accept]\nsigners = ["{client.key.key_id}"]\n'
                                  f'[trust]\nkeys = {{ "{outsider.public_key.hex()}" = ["*"] }}\n')
        node = peo.Node(store_url, app, policy=policy, idle_horizon=1.0)
        await asyncio.wait_for(node.run_until_idle(), 120)
        assert ran == [mine]
        assert (await client.get(theirs, memory=False)).status is peo.Status.RUNNABLE  # left for another node
