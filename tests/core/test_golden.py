"""A chain written by format version 1, kept in tests/data, must load forever.

``tests/data/entry-v1.bin`` is msgpack ``{"seed", "object_id", "rows": [{"body", "sig"}]}``:
two entries (an instantiation and one executed step) signed with a fixed seed. If a future
change of the entry format breaks this test, keep the file and add an upcaster
(``peo.core.codec.UPCASTERS[1]``) rather than rewriting it. Regenerate only while
FORMAT_VERSION is still 1: ``python -m tests.core.test_golden`` from the repository root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest

from peo.core.codec import FORMAT_VERSION
from peo.core.crypto import Keyring, SigningKey
from peo.core.memory import Fold, genesis, instantiation_outcome, make_entry, verify_chain
from peo.core.model import Action, Constraints, Context, Intent, Status
from peo.errors import IntegrityError

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "entry-v1.bin"
SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")  # RFC 8032 TEST 1
OBJECT_ID = "018f2f4e-7a1b-7c3d-8e9f-0a1b2c3d4e5f"
INTENT = Intent("summarize", goal={"url": "https://example.org", "max_words": 200},
                constraints=Constraints(deadline=1_717_000_000_000_000_000, max_failures=3, retry_base=0.25))
CONTEXT = Context(identity="alice", trust_scope="reports", priority=2, labels={"team": "docs"})
STEP_OUTCOME: dict[str, Any] = {"latency": 1_500_000, "status": "ok", "state": {"words": 120, "parts": [1, 2]}}


def golden_rows(key: SigningKey) -> list[tuple[bytes, bytes]]:
    """The chain as this version writes it (used to create the file, and to check it is unchanged)."""
    e0 = make_entry(key, seq=0, prev=genesis(OBJECT_ID), timestamp=1_716_000_000_000_000_000, origin_node="node-a",
                    policy_ref="default@0123456789ab", action=Action.INSTANTIATE,
                    outcome=instantiation_outcome(OBJECT_ID, INTENT, CONTEXT), trace_id=OBJECT_ID)
    e1 = make_entry(key, seq=1, prev=e0.hash, timestamp=1_716_000_001_000_000_000, origin_node="node-b",
                    policy_ref="default@0123456789ab", action=Action.EXECUTE, outcome=STEP_OUTCOME,
                    trace_id=OBJECT_ID)
    return [(e.body, e.signature) for e in (e0, e1)]


def load() -> dict[str, Any]:
    return msgpack.unpackb(GOLDEN.read_bytes(), raw=False)  # type: ignore[no-any-return]


def test_the_golden_chain_still_decodes_and_verifies() -> None:
    data = load()
    key = SigningKey(data["seed"])
    ring = Keyring()
    ring.trust(key.public_key, ["reports"])
    rows = [(r["body"], r["sig"]) for r in data["rows"]]
    head, entries = verify_chain(data["object_id"], rows, ring)
    assert head is not None and head.seq == 1 and head.scope == "reports"
    assert [e.action for e in entries] == [Action.INSTANTIATE, Action.EXECUTE]
    assert [e.origin_node for e in entries] == ["node-a", "node-b"]
    assert entries[1].outcome == STEP_OUTCOME and entries[1].timestamp == 1_716_000_001_000_000_000
    fold = Fold.of(entries)
    assert (fold.object_id, fold.intent, fold.context) == (OBJECT_ID, INTENT, CONTEXT)
    assert (fold.status, fold.state, fold.steps) == (Status.RUNNABLE, {"words": 120, "parts": [1, 2]}, 1)


def test_the_golden_chain_is_bound_to_its_object_and_its_signer() -> None:
    data = load()
    rows = [(r["body"], r["sig"]) for r in data["rows"]]
    ring = Keyring()
    ring.trust(SigningKey(data["seed"]).public_key)
    with pytest.raises(IntegrityError):
        verify_chain("another-object", rows, ring)
    with pytest.raises(IntegrityError):
        verify_chain(data["object_id"], rows, Keyring())


@pytest.mark.skipif(FORMAT_VERSION != 1, reason="the golden file records format 1; newer versions write other bytes")
def test_this_version_still_writes_exactly_the_golden_bytes() -> None:
    # Fails when the wire form changes without a FORMAT_VERSION bump (and an upcaster).
    data = load()
    assert data["seed"] == SEED and data["object_id"] == OBJECT_ID
    assert [(r["body"], r["sig"]) for r in data["rows"]] == golden_rows(SigningKey(SEED))


if __name__ == "__main__":  # pragma: no cover - regenerates the file, see the module docstring
    assert FORMAT_VERSION == 1
    doc = {"seed": SEED, "object_id": OBJECT_ID,
           "rows": [{"body": b, "sig": s} for b, s in golden_rows(SigningKey(SEED))]}
    GOLDEN.write_bytes(msgpack.packb(doc, use_bin_type=True))
    print(f"wrote {GOLDEN}")
