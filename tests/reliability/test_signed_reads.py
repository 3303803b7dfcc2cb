"""Reads come from the signed head, not the row (issue 19, items 3, 4 and 5).

Each test edits the ``objects`` row behind peo's back (plain SQL on either store), the way
anyone with write access to the store can, and checks that no reader returns what the row
alone claims: ``Client.wait``, ``Client.get`` and ``peo show`` raise IntegrityError (exit 1)
and flag the object, ``peo resume`` repairs it from its memory, and ``peo verify`` holds
the row's handler, scope, priority, parent and status to the verified chain. An import
that grafts an object onto a parent whose memory never delegated to it is refused.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import attrs
import msgpack
import pytest

import peo
from peo import config, keys
from peo.client import archive
from peo.core.codec import packb
from peo.core.memory import genesis, instantiation_outcome, make_entry
from peo.core.model import Action, Context, Intent, Step
from peo.errors import IntegrityError

APP = peo.App()
FORGED = {"forged": "pay 1,000,000 to mallory"}


@APP.handler("pay")
def pay(step: Step) -> peo.Proposal:
    if step.goal.get("fail"):
        return peo.Fail("card declined", retryable=False, error_class="CardDeclined")
    if step.goal.get("wait") and not any(s.name == "go" for s in step.signals):
        return peo.WaitSignal("go")
    return peo.Done({"paid": step.goal.get("amount", 10)})


@APP.handler("fan")
def fan(step: Step) -> peo.Proposal:
    if not step.state.get("asked"):
        return peo.Delegate([Intent("pay", {"amount": 1})], state={"asked": True})
    return peo.Done({"children": "done"})


# -- helpers --------------------------------------------------------------------------------------


async def edit(url: str, oid: str, **columns: Any) -> None:
    """UPDATE the object's row behind the store's back (SQLite or PostgreSQL)."""
    names = list(columns)
    if url.startswith("sqlite:"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            sets = ", ".join(f"{n} = ?" for n in names)
            db.execute(f"UPDATE objects SET {sets} WHERE id = ?", (*columns.values(), oid))
        return
    import asyncpg

    from peo.store.postgres import parse_postgres_url

    dsn, schema, _, _ = parse_postgres_url(url)
    conn = await asyncpg.connect(dsn)
    try:
        sets = ", ".join(f"{n} = ${i}" for i, n in enumerate(names, 1))
        await conn.execute(f'UPDATE "{schema}".objects SET {sets} WHERE id = ${len(names) + 1}',
                           *columns.values(), oid)
    finally:
        await conn.close()


async def run_objects(url: str, *goals: dict[str, Any], handler: str = "pay") -> list[str]:
    async with peo.Client(url) as client:
        ids = [await client.submit(handler, g) for g in goals]
    await peo.Node(url, APP, idle_horizon=0).run_until_idle()
    return ids


async def status_of(url: str, oid: str) -> tuple[peo.Status, str | None]:
    async with peo.Client(url) as client:
        row = await client.store.get(oid)
    return row.status, row.reason


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from peo.cli import main

    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


# -- a forged result, reason or status is never returned -------------------------------------------


async def test_a_forged_result_is_never_returned_by_wait_or_get_and_resume_repairs_it(store_url: str) -> None:
    [oid] = await run_objects(store_url, {"amount": 10})
    await edit(store_url, oid, result=msgpack.packb(FORGED))
    async with peo.Client(store_url) as client:
        with pytest.raises(IntegrityError, match="cached result") as info:
            await client.wait(oid, timeout=5)
        assert info.value.object_id == oid
        # The reader flagged it: nothing acts on the forged row, and reads say so.
        assert (await client.store.get(oid)).status is peo.Status.QUARANTINED
        got = await client.get(oid)
        assert got.status is peo.Status.QUARANTINED and got.result is None
        assert got.reason is not None and got.reason.startswith("verification failed")
        with pytest.raises(peo.ObjectFailedError, match="quarantined"):
            await client.wait(oid, timeout=5)
        # resume re-verifies the memory and rebuilds the head from it: the row is sound again.
        assert (await client.resume(oid)).result == {"paid": 10}
        assert await client.wait(oid, timeout=5) == {"paid": 10}
        assert await client.verify(oid) == 2


async def test_get_refuses_a_forged_result(store_url: str) -> None:
    [oid] = await run_objects(store_url, {"amount": 10})
    await edit(store_url, oid, result=msgpack.packb(FORGED))
    async with peo.Client(store_url) as client:
        with pytest.raises(IntegrityError, match="cached result"):
            await client.get(oid, memory=False)
        assert (await client.store.get(oid)).status is peo.Status.QUARANTINED


async def test_a_forged_reason_does_not_turn_a_failure_into_a_success(store_url: str) -> None:
    [oid] = await run_objects(store_url, {"fail": True})
    async with peo.Client(store_url) as client:
        with pytest.raises(peo.ObjectFailedError) as failed:
            await client.wait(oid, timeout=5)
        assert failed.value.last_error is not None and failed.value.last_error["class"] == "CardDeclined"
    await edit(store_url, oid, reason="done")  # the row now claims a success (with no result)
    async with peo.Client(store_url) as client:
        with pytest.raises(IntegrityError, match="reason 'done'"):
            await client.wait(oid, timeout=5)
        assert (await client.store.get(oid)).status is peo.Status.QUARANTINED
        await client.resume(oid)
        with pytest.raises(peo.ObjectFailedError, match="non-retryable failure"):
            await client.wait(oid, timeout=5)


async def test_a_forged_end_of_a_waiting_object_is_refused(store_url: str) -> None:
    [oid] = await run_objects(store_url, {"wait": True})
    await edit(store_url, oid, status="terminated", reason="done", result=msgpack.packb(FORGED), due_at=None,
               wait_signal=None)
    async with peo.Client(store_url) as client:
        with pytest.raises(IntegrityError, match="status terminated but the chain ended at seq 1"):
            await client.wait(oid, timeout=5)
        assert (await client.store.get(oid)).status is peo.Status.QUARANTINED
        assert (await client.resume(oid)).status is peo.Status.DORMANT
        await client.signal(oid, "go")
    await peo.Node(store_url, APP, idle_horizon=0).run_until_idle()
    async with peo.Client(store_url) as client:
        assert await client.wait(oid, timeout=5) == {"paid": 10}


async def test_a_finished_object_set_back_to_runnable_is_refused_by_get_and_wait(store_url: str) -> None:
    [oid] = await run_objects(store_url, {"amount": 10})
    await edit(store_url, oid, status="runnable", result=None, reason=None, due_at=0)
    async with peo.Client(store_url) as client:
        with pytest.raises(IntegrityError, match=r"status runnable but the chain ended at seq 1 \(terminate"):
            await client.get(oid)
        assert (await client.store.get(oid)).status is peo.Status.QUARANTINED
        await client.resume(oid)
        await edit(store_url, oid, status="runnable", result=None, reason=None, due_at=0)
        # wait() does not wait for a forged live row to end: it is refused at once.
        with pytest.raises(IntegrityError, match="status runnable"):
            await client.wait(oid, timeout=5)


def test_peo_show_refuses_a_forged_result_and_resume_repairs_it(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    [oid] = asyncio.run(run_objects(store_url, {"amount": 10}))
    asyncio.run(edit(store_url, oid, result=msgpack.packb(FORGED)))
    for argv in (["show", oid], ["show", oid, "--json"]):
        asyncio.run(edit(store_url, oid, status="terminated", reason="done"))  # as if never flagged
        code, out, err = cli(capsys, "--store", store_url, *argv)
        assert code == 1
        assert "mallory" not in out + err
        assert f"object {oid} fails verification" in err and "cached result" in err and "quarantined" in err
    assert asyncio.run(status_of(store_url, oid))[0] is peo.Status.QUARANTINED
    code, out, _ = cli(capsys, "--store", store_url, "show", oid, "--json")
    assert code == 0 and json.loads(out)["status"] == "quarantined" and json.loads(out)["result"] is None
    code, out, _ = cli(capsys, "--store", store_url, "resume", oid)
    assert code == 0, out
    code, out, _ = cli(capsys, "--store", store_url, "show", oid, "--json")
    assert code == 0
    doc = json.loads(out)
    assert (doc["status"], doc["result"], doc["reason"]) == ("terminated", {"paid": 10}, "done")


def test_peo_show_refuses_a_forged_status(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    [oid] = asyncio.run(run_objects(store_url, {"amount": 10}))
    asyncio.run(edit(store_url, oid, status="dormant", result=None, reason=None))
    code, out, err = cli(capsys, "--store", store_url, "show", oid)
    assert code == 1 and out == ""
    assert "status dormant but the chain ended at seq 1 (terminate" in err


async def test_a_reader_that_lacks_the_signers_key_is_refused_but_does_not_flag_the_object(store_url: str) -> None:
    [oid] = await run_objects(store_url, {"amount": 10})
    blind = attrs.evolve(config.default_policy(), trust_local_keys=False)  # trusts no key at all
    async with peo.Client(store_url, policy=blind) as client:
        with pytest.raises(IntegrityError, match="not in this reader's keyring"):
            await client.wait(oid, timeout=5)
        # A misconfigured reader must not stop a fleet: the object is left as it is.
        assert (await client.store.get(oid)).status is peo.Status.TERMINATED
    async with peo.Client(store_url) as client:
        assert await client.wait(oid, timeout=5) == {"paid": 10}


# -- peo verify holds the row to the chain ----------------------------------------------------------


@pytest.mark.parametrize(("column", "value"), [("handler", "refund"), ("scope", "payments"), ("priority", 7),
                                                ("parent", "someone-else"), ("identity", "mallory")])
def test_verify_reports_a_row_that_disagrees_with_entry_0(
    store_url: str, capsys: pytest.CaptureFixture[str], column: str, value: Any
) -> None:
    oid, bystander = asyncio.run(run_objects(store_url, {"amount": 10}, {"amount": 2}))
    asyncio.run(edit(store_url, oid, **{column: value}))

    async def client_verify() -> None:
        async with peo.Client(store_url) as client:
            with pytest.raises(IntegrityError, match=f"the row says {column} {value!r} but entry 0 says"):
                await client.verify(oid)
            assert await client.verify(bystander) == 2

    asyncio.run(client_verify())
    code, out, _ = cli(capsys, "--store", store_url, "verify", oid, bystander)
    assert code == 1
    [fail] = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert oid in fail and f"the row says {column}" in fail
    assert any(line.startswith("OK") and bystander in line for line in out.splitlines())


def test_verify_reports_a_finished_row_set_back_to_runnable(store_url: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    [oid] = asyncio.run(run_objects(store_url, {"amount": 10}))
    asyncio.run(edit(store_url, oid, status="runnable", result=None, reason=None, due_at=0))
    code, out, _ = cli(capsys, "--store", store_url, "verify", oid)
    assert code == 1
    assert f"FAIL  {oid}  the row says status runnable but the chain ended at seq 1 (terminate" in out


async def test_resume_does_not_paper_over_a_forged_handler(store_url: str) -> None:
    [oid] = await run_objects(store_url, {"amount": 10})
    await edit(store_url, oid, handler="refund")
    async with peo.Client(store_url) as client:
        with pytest.raises(IntegrityError, match="the row says handler 'refund'"):
            await client.get(oid)
        with pytest.raises(IntegrityError, match="resume rebuilds only the head"):
            await client.resume(oid)
        assert (await client.store.get(oid)).status is peo.Status.QUARANTINED


# -- import and lineage ---------------------------------------------------------------------------------


def _export_doc(oid: str, rows: list[tuple[bytes, bytes]], key: keys.SigningKey) -> bytes:
    """An export file as ``peo export`` writes it, signed by ``key``."""
    trailer: dict[str, Any] = {"seq": len(rows) - 1, "hash": make_hash(rows[-1][0]), "entries": len(rows),
                               "signer": key.key_id}
    trailer["sig"] = key.sign(archive._signed_bytes(oid, rows, trailer))
    return packb({"format": archive.EXPORT_FORMAT, "v": archive.EXPORT_VERSION, "id": oid,
                  "entries": [[b, s] for b, s in rows], "trailer": trailer})


def make_hash(body: bytes) -> bytes:
    import hashlib

    return hashlib.sha256(body).digest()


def _partner_object(partner: keys.SigningKey, parent: str | None, oid: str = "partner-obj") -> bytes:
    """An object signed by a key trusted only for scope "partner", naming ``parent`` and
    ending with a result: what the issue reproduced."""
    context = Context(identity="partner", trust_scope="partner", parent=parent)
    e0 = make_entry(partner, seq=0, prev=genesis(oid), timestamp=1, origin_node="partner", policy_ref="p@0",
                    action=Action.INSTANTIATE, outcome=instantiation_outcome(oid, Intent("pay"), context),
                    trace_id=oid)
    end = make_entry(partner, seq=1, prev=e0.hash, timestamp=2, origin_node="partner", policy_ref="p@0",
                     action=Action.TERMINATE, outcome={"status": "done", "reason": "done", "result": {"v": 999999}},
                     trace_id=oid)
    return _export_doc(oid, [(e0.body, e0.signature), (end.body, end.signature)], partner)


async def test_import_refuses_an_object_grafted_onto_a_parent_of_another_scope(store_url: str) -> None:
    partner = keys.generate()
    policy = attrs.evolve(config.default_policy(), trusted_keys={partner.public_key.hex(): ("partner",)})
    async with peo.Client(store_url, policy=policy) as client:
        victim = await client.submit("fan", scope="payments")
        with pytest.raises(IntegrityError, match=f"names parent {victim}, whose verified memory does not delegate"):
            await client.import_(_partner_object(partner, victim))
        with pytest.raises(peo.NotFoundError):
            await client.store.get("partner-obj")  # nothing written
        # The same object naming no parent, or a parent this store does not hold, is
        # imported (an orphan here).
        assert await client.import_(_partner_object(partner, "not-here", "orphan")) == "orphan"
        assert await client.wait("orphan", timeout=5) == {"v": 999999}
        assert await client.import_(_partner_object(partner, None, "free")) == "free"


async def test_import_accepts_a_child_its_parent_delegated_to(store_url: str, tmp_path: Any) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    [parent] = await run_objects(source, {}, handler="fan")
    async with peo.Client(source) as client:
        assert await client.wait(parent, timeout=5) == {"children": "done"}
        [child] = [s.id for s in await client.list(parent=parent)]
        files = {oid: await client.export(oid) for oid in (parent, child)}
    async with peo.Client(store_url) as client:
        assert await client.import_(files[parent]) == parent
        assert await client.import_(files[child]) == child
        assert await client.wait(child, timeout=5) == {"paid": 1}


def test_peo_resume_repairs_a_forged_row_no_reader_has_flagged_yet(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    [oid] = asyncio.run(run_objects(store_url, {"amount": 10}))
    asyncio.run(edit(store_url, oid, result=msgpack.packb(FORGED)))
    code, out, err = cli(capsys, "--store", store_url, "resume", oid)
    assert code == 0, err
    code, out, _ = cli(capsys, "--store", store_url, "show", oid, "--json")
    assert code == 0 and json.loads(out)["result"] == {"paid": 10}
