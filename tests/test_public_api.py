"""The public surface of ``import peo`` is pinned: outside tests use these names, so a
change here is a decision (and a CHANGELOG line), never an accident."""

from __future__ import annotations

import peo

PUBLIC = [
    "Action", "AgentError", "App", "CannotDo", "ChildFailed", "Client", "CodecError", "ConflictError",
    "Constraints", "Context", "Continue", "Delegate", "DivergedError", "Done", "Entry", "Fail",
    "InboxFullError", "IntegrityError", "Intent", "InternalError", "Keyring", "LeaseLostError", "Model",
    "ModelError", "NodeSettings", "NotFoundError", "ObjectExistsError", "ObjectFailedError", "ObjectInfo",
    "ObjectSummary", "ObjectTerminatedError", "PeoError", "Policy", "PolicyError", "Proposal", "Refine",
    "Retry", "Run", "Signal", "SignalTimeout", "SigningKey", "Sleep", "Status", "Step", "StepFailed",
    "StepTimeout", "StoreError", "TimeoutError", "Tool", "UsageError", "WaitSignal",
]


def test_the_public_names_are_exactly_these() -> None:
    assert sorted(peo.__all__) == sorted(PUBLIC)


def test_every_public_name_resolves() -> None:
    for name in peo.__all__:
        assert getattr(peo, name) is not None, name


def test_errors_share_one_root_and_timeout_is_also_the_builtin() -> None:
    errors = [getattr(peo, n) for n in PUBLIC if n.endswith("Error")]
    assert all(issubclass(e, peo.PeoError) for e in errors)
    assert issubclass(peo.TimeoutError, TimeoutError)
