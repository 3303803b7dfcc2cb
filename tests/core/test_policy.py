"""Policy: a TOML document, parsed strictly and evaluated purely."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from peo.config import default_policy, load_policy
from peo.core.crypto import key_id_of
from peo.core.model import Context, Intent
from peo.core.policy import Policy, SignalRule
from peo.errors import PolicyError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "policies" / "default.toml"
BUILTIN = REPO / "peo" / "default_policy.toml"
SEED = bytes([128]) + bytes(31)  # jitter fraction 0.75 + 0.25 * 128/255


def test_the_shipped_default_policy_is_the_builtin_copy_byte_for_byte() -> None:
    assert SHIPPED.read_bytes() == BUILTIN.read_bytes()


def test_the_default_policy_document_states_the_builtin_defaults() -> None:
    loaded = load_policy(SHIPPED)
    assert loaded == default_policy()
    assert attrs.evolve(loaded, ref=Policy().ref) == Policy()


def test_every_setting_in_the_default_policy_is_explained_by_a_comment_above_it() -> None:
    # A comment may explain a run of adjacent settings (base_seconds and max_seconds).
    lines = [line for line in SHIPPED.read_text().splitlines() if line.strip()]
    setting = re.compile(r"^[a-z_]+\s*=")
    for i, line in enumerate(lines):
        if setting.match(line):
            above = next(prev for prev in reversed(lines[:i]) if not setting.match(prev))
            assert above.startswith("#"), f"setting {line!r} has no comment above it"


def test_a_policy_ref_is_its_name_and_a_hash_of_its_exact_text() -> None:
    text = 'name = "strict"\n'
    assert Policy.parse(text).ref == f"strict@{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    assert Policy.parse(text + "# a comment\n").ref != Policy.parse(text).ref


def test_a_policy_sets_every_field_it_names() -> None:
    policy = Policy.parse(
        """
        name = "tight"
        [accept]
        trust_scopes = ["payments"]
        identities = ["alice", "bob"]
        handlers = ["pay"]
        [trust]
        local_keys = false
        keys = { "ab12" = ["payments", "audit"] }
        [limits]
        max_payload_bytes = 1024
        max_children = 3
        child_handlers = ["pay"]
        max_sleep_seconds = 60
        handler_timeout = 2.5
        [thresholds]
        max_failures = 2
        max_steps = 10
        max_cannot_do = 1
        [retry]
        base_seconds = 1
        max_seconds = 8
        [refine]
        may_relax = true
        """
    )
    assert policy.name == "tight"
    assert (policy.accept_scopes, policy.accept_identities, policy.accept_handlers) == (
        {"payments"}, {"alice", "bob"}, {"pay"})
    assert (policy.trust_local_keys, policy.trusted_keys) == (False, {"ab12": ("audit", "payments")})
    assert (policy.max_payload_bytes, policy.max_children, policy.child_handlers) == (1024, 3, {"pay"})
    assert (policy.max_sleep_seconds, policy.handler_timeout) == (60.0, 2.5)
    assert (policy.max_failures, policy.max_steps, policy.max_cannot_do) == (2, 10, 1)
    assert (policy.retry_base, policy.retry_max, policy.refine_may_relax) == (1.0, 8.0, True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = ", "not valid TOML"),
        ("[network]\nport = 1", r"unknown section\(s\): network"),
        ("[limits]\nmax_kids = 3", r"unknown key\(s\) in \[limits\]: max_kids"),
        ("limits = 5", r"\[limits\] must be a table"),
        ("[[limits]]\nmax_children = 1", r"\[limits\] must be a table"),
        ("name = 5", "policy name must be a non-empty string"),
        ('name = ""', "policy name must be a non-empty string"),
        ('[accept]\nhandlers = "pay"', r"\[accept\] handlers must be a list of non-empty strings"),
        ('[accept]\ntrust_scopes = [""]', r"\[accept\] trust_scopes must be a list of non-empty strings"),
        ("[limits]\nmax_children = 2.5", r"\[limits\] max_children must be an integer"),
        ('[limits]\nmax_children = "3"', r"\[limits\] max_children must be an integer"),
        ("[limits]\nmax_children = true", r"\[limits\] max_children must be an integer"),
        ("[limits]\nmax_children = -1", r"\[limits\] max_children must be between 0 and 1e\+09"),
        ("[limits]\nmax_sleep_seconds = inf", r"\[limits\] max_sleep_seconds must be between"),
        ("[limits]\nmax_sleep_seconds = nan", r"\[limits\] max_sleep_seconds must be between"),
        ("[limits]\nhandler_timeout = 0", r"\[limits\] handler_timeout must be between 0.001"),
        ("[limits]\nmax_payload_bytes = 0", r"\[limits\] max_payload_bytes must be between 1"),
        ("[thresholds]\nmax_failures = 0", r"\[thresholds\] max_failures must be between 1"),
        ("[thresholds]\nmax_steps = 1e12", r"\[thresholds\] max_steps must be an integer"),
        ("[retry]\nbase_seconds = 1979-05-27", r"\[retry\] base_seconds must be a number"),
        ("[retry]\nmax_seconds = 1e10", r"\[retry\] max_seconds must be between"),
        ('[trust]\nlocal_keys = "yes"', "local_keys and may_relax must be true or false"),
        ("[refine]\nmay_relax = 1", "local_keys and may_relax must be true or false"),
        ('[trust]\nkeys = ["ab"]', r"\[trust\] keys must be a table"),
        ('[trust]\nkeys = { "ab" = "payments" }', r"keys\.ab must be a list"),
    ],
)
def test_an_invalid_policy_is_one_policy_error_that_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message) as info:
        Policy.parse(text, source="my.toml")
    assert str(info.value).startswith("my.toml: ")  # every message names the document


def test_parse_errors_name_the_document_they_come_from() -> None:
    with pytest.raises(PolicyError, match=r"^my\.toml: unknown section"):
        Policy.parse("[nope]", source="my.toml")


def test_a_policy_file_that_cannot_be_read_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy"):
        load_policy(tmp_path / "missing.toml")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyError, match="cannot read policy"):
        load_policy(tmp_path / "bin.toml")


def test_a_policy_loaded_from_a_file_names_the_file_in_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[nope]\n")
    with pytest.raises(PolicyError, match=re.escape(str(path))):
        load_policy(path)


# -- evaluation ----------------------------------------------------------------------------------

STRICT = Policy.parse('[accept]\ntrust_scopes = ["payments"]\nidentities = ["alice"]\nhandlers = ["pay"]\n'
                      '[limits]\nchild_handlers = ["audit"]')


def test_a_policy_that_accepts_everything_accepts_any_object() -> None:
    assert Policy().accepts(Intent("anything"), Context(identity="x", trust_scope="y")) is None


def test_a_node_accepts_only_the_scopes_identities_and_handlers_its_policy_names() -> None:
    ok = (Intent("pay"), Context(identity="alice", trust_scope="payments"))
    assert STRICT.accepts(*ok) is None
    assert STRICT.accepts(Intent("pay"), Context(identity="alice", trust_scope="reports")) == (
        "trust scope 'reports' is not accepted")
    assert STRICT.accepts(Intent("pay"), Context(identity="mallory", trust_scope="payments")) == (
        "identity 'mallory' is not accepted")
    assert STRICT.accepts(Intent("refund"), Context(identity="alice", trust_scope="payments")) == (
        "handler 'refund' is not accepted")


def test_helpers_for_handlers_children_and_store_claims() -> None:
    assert STRICT.accepts_handler("pay") and not STRICT.accepts_handler("refund")
    assert STRICT.child_handler_allowed("audit") and not STRICT.child_handler_allowed("pay")
    assert STRICT.scope_filter() == {"payments"}
    assert Policy().scope_filter() is None


# -- semantic backoff ----------------------------------------------------------------------------


def backoff(failures: int, error_class: str | None = "error", latency_s: float = 0.0, *,
            base: float | None = None, cap: float | None = None, seed: bytes = SEED,
            policy: Policy | None = None) -> float:
    """The delay in seconds."""
    ns = (policy or Policy()).backoff_ns(failures, error_class, int(latency_s * 1e9), base, cap, seed)
    return ns / 1e9


def test_backoff_doubles_with_each_consecutive_failure_until_the_cap() -> None:
    delays = [backoff(n, base=1.0, cap=100.0, seed=bytes(32)) for n in range(1, 10)]
    assert delays[:7] == [0.75 * 2**k for k in range(7)]
    assert delays[7:] == [75.0, 75.0]  # capped at 100 s, then jittered


def test_backoff_is_stretched_for_rate_limits() -> None:
    assert backoff(2, "rate_limit") == pytest.approx(4 * backoff(2, "error"))


def test_backoff_after_a_timeout_is_at_least_twice_the_observed_latency() -> None:
    assert backoff(1, "timeout", latency_s=10.0, seed=b"\xff") == 20.0
    assert backoff(1, "timeout", latency_s=0.001, seed=b"\xff") == backoff(1, "error", seed=b"\xff")


def test_backoff_is_deterministic_and_jitter_comes_only_from_the_seed() -> None:
    assert backoff(3, seed=b"\x01" * 32) == backoff(3, seed=b"\x01" * 32)
    assert backoff(3, seed=b"\x00") == 0.75 * 2.0 and backoff(3, seed=b"\xff") == 2.0


def test_an_objects_retry_pacing_overrides_the_policys() -> None:
    assert backoff(1, base=7.0, seed=b"\xff") == 7.0
    assert backoff(20, cap=3.0, seed=b"\xff") == 3.0
    assert backoff(20, seed=b"\xff") == Policy().retry_max


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -5.0])
def test_nonsense_retry_pacing_from_an_object_cannot_break_the_backoff(bad: float) -> None:
    delay = backoff(3, base=bad, cap=bad, seed=b"\xff")
    assert 0 <= delay <= Policy().retry_max
    assert backoff(60, base=1e300, cap=1e300, seed=b"\xff") * 1e9 < 2**63


@given(
    failures=st.integers(1, 200),
    error_class=st.sampled_from([None, "error", "rate_limit", "timeout", "refused"]),
    latency_ns=st.integers(0, 10**13),
    base=st.none() | st.floats(0, 1e4),
    cap=st.none() | st.floats(0, 1e6),
    seed=st.binary(min_size=1, max_size=32),
)
def test_property_backoff_is_capped_deterministic_and_never_shrinks_with_more_failures(
    failures: int, error_class: str | None, latency_ns: int, base: float | None, cap: float | None, seed: bytes
) -> None:
    policy = Policy()
    ns = policy.backoff_ns(failures, error_class, latency_ns, base, cap, seed)
    cap_s = policy.retry_max if cap is None else cap
    assert 0 <= ns <= cap_s * 1e9 + 1
    assert ns == policy.backoff_ns(failures, error_class, latency_ns, base, cap, seed)
    assert policy.backoff_ns(failures + 1, error_class, latency_ns, base, cap, seed) >= ns


# -- totals, signers and signal rules (issue 19) ---------------------------------------------------

OPS_KEY = "AB" * 32  # a public key as a policy may write it (any case)
OPS_KEY_ID = key_id_of(bytes.fromhex(OPS_KEY))


def test_a_policy_sets_the_totals_signers_and_signal_rules_it_names() -> None:
    policy = Policy.parse(
        f"""
        [accept]
        signers = ["0123456789ABCDEF", "{OPS_KEY}"]
        [limits]
        max_depth = 4
        max_descendants = 50
        max_state_bytes = 4096
        [signals]
        max_inbox = 10
        batch = 2
        unsigned = true
        rules = [
          {{ name = "approve", objects = ["payments"], senders = ["ops", "{OPS_KEY}"] }},
          {{ name = "*", objects = ["*"], senders = ["admin"] }},
        ]
        """
    )
    # Signers are kept as key ids, the form an entry names its signer in.
    assert policy.accept_signers == {"0123456789abcdef", OPS_KEY_ID}
    assert (policy.max_depth, policy.max_descendants, policy.max_state_bytes) == (4, 50, 4096)
    assert (policy.max_inbox, policy.signal_batch, policy.accept_unsigned_signals) == (10, 2, True)
    approve = SignalRule("approve", frozenset({"payments"}), frozenset({"ops", OPS_KEY.lower()}))
    assert policy.signal_rules == (approve, SignalRule("*", frozenset({"*"}), frozenset({"admin"})))
    assert (approve.scopes, approve.keys, approve.key_ids) == ({"ops"}, {OPS_KEY.lower()}, {OPS_KEY_ID})


def test_the_first_signal_rule_that_matches_the_name_and_the_receiving_scope_names_the_senders() -> None:
    policy = Policy.parse(
        '[signals]\nrules = [{ name = "approve", objects = ["payments"], senders = ["ops"] },\n'
        '  { name = "approve", objects = ["*"], senders = ["leads"] },\n'
        '  { name = "*", objects = ["payments"], senders = ["payments-team"] }]'
    )
    assert policy.signal_senders("approve", "payments") == {"ops"}
    assert policy.signal_senders("approve", "reports") == {"leads"}
    assert policy.signal_senders("note", "payments") == {"payments-team"}
    assert policy.signal_rule("note", "payments") == policy.signal_rules[2]
    # No rule: None, and the default applies (a key trusted for the object's scope).
    assert policy.signal_senders("note", "reports") is None
    assert Policy().signal_senders("approve", "payments") is None


def test_a_node_accepts_only_objects_whose_entry_0_a_listed_key_signed() -> None:
    only_ops = Policy(accept_signers=frozenset({OPS_KEY_ID}))
    assert only_ops.accepts(Intent("pay"), Context(), signer=OPS_KEY_ID) is None
    assert only_ops.accepts(Intent("pay"), Context(), signer="0123456789abcdef") == (
        "signer key 0123456789abcdef is not accepted")
    assert only_ops.accepts(Intent("pay"), Context()) == "signer key None is not accepted"
    # The default ("*") accepts any signer, and callers that pass none still work.
    assert Policy().accepts(Intent("pay"), Context()) is None
    assert Policy().accepts(Intent("pay"), Context(), signer="0123456789abcdef") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[limits]\nmax_depth = -1", r"\[limits\] max_depth must be between 0"),
        ("[limits]\nmax_descendants = 1.5", r"\[limits\] max_descendants must be an integer"),
        ("[limits]\nmax_state_bytes = 0", r"\[limits\] max_state_bytes must be between 1"),
        ("[signals]\nmax_inbox = 0", r"\[signals\] max_inbox must be between 1"),
        ('[signals]\nbatch = "all"', r"\[signals\] batch must be an integer"),
        ("[signals]\nunsigned = 1", r"\[signals\] unsigned must be true or false"),
        ("[signals]\nsigned = true", r"unknown key\(s\) in \[signals\]: signed"),
        ("signals = 3", r"\[signals\] must be a table"),
        ('[signals]\nrules = { name = "x" }', r"\[signals\] rules must be an array of tables"),
        ('[signals]\nrules = ["approve"]', r"\[signals\] rules\[0\] must be a table"),
        ('[signals]\nrules = [{ name = "approve", objects = ["*"] }]',
         r"rules\[0\] must have exactly the keys name, objects and senders \(missing senders\)"),
        ('[signals]\nrules = [{ name = "a", objects = ["*"], senders = ["x"], who = 1 }]',
         r"rules\[0\] must have exactly the keys name, objects and senders \(unknown who\)"),
        ('[signals]\nrules = [{ name = "", objects = ["*"], senders = ["ops"] }]',
         r"rules\[0\] name must be a non-empty"),
        ('[signals]\nrules = [{ name = "a", objects = "*", senders = ["ops"] }]',
         r"rules\[0\] objects must be a list of non-empty strings"),
        ('[signals]\nrules = [{ name = "a", objects = ["*"], senders = [] }, 5]', r"rules\[1\] must be a table"),
        ('[accept]\nsigners = ["alice"]', r"\[accept\] signers: 'alice' is neither"),
        ("[accept]\nsigners = [1]", r"\[accept\] signers must be a list of non-empty strings"),
    ],
)
def test_an_invalid_total_signer_or_signal_setting_is_one_clear_policy_error(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message) as info:
        Policy.parse(text, source="my.toml")
    assert str(info.value).startswith("my.toml: ")


def test_the_strict_example_policy_is_stricter_than_the_default_on_every_total() -> None:
    strict, default = load_policy(REPO / "policies" / "strict.toml"), default_policy()
    for name in ("max_depth", "max_descendants", "max_state_bytes", "max_inbox", "signal_batch"):
        assert getattr(strict, name) < getattr(default, name), name
    assert strict.signal_senders("approve", "internal") == {"ops"}
