"""An operator's own key, from the command line: `peo keys --new FILE` makes it and prints the
policy line that trusts it, `peo signal --key FILE` signs with it, and a policy rule lets only
that key approve."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from clirun import ok, run, submit

import peo


def waiter_app() -> peo.App:
    app = peo.App()

    @app.handler("payment")
    def payment(step: peo.Step) -> peo.Proposal:
        approvals = [s for s in step.signals if s.name == "approve"]
        if approvals:
            return peo.Done({"approved_by": approvals[0].sender})
        return peo.WaitSignal("approve")

    return app


def test_only_the_operators_key_approves(capsys: Any, sqlite_url: str, tmp_path: Path) -> None:
    out = ok(capsys, "keys", "--new", str(tmp_path / "ops" / "ops.key"), "--scope", "ops")
    hex_key = re.search(r"public key ([0-9a-f]{64})", out)
    key_id = re.search(r"key id +([0-9a-f]{16})", out)
    assert hex_key and key_id and f'keys = {{ "{hex_key[1]}" = ["ops"] }}' in out
    assert (tmp_path / "ops" / "ops.key").stat().st_mode & 0o777 == 0o600
    code, _, err = run(capsys, "keys", "--new", str(tmp_path / "ops" / "ops.key"))
    assert code == 2 and "exists: refusing to replace a key" in err

    policy_file = tmp_path / "payments.toml"
    policy_file.write_text(f'[trust]\nkeys = {{ "{hex_key[1]}" = ["ops"] }}\n'
                           '[[signals.rules]]\nname = "approve"\nobjects = ["payments"]\nsenders = ["ops"]\n')
    policy = peo.config.load_policy(policy_file)
    oid = submit(capsys, sqlite_url, "payment", "--scope", "payments")

    async def node() -> None:
        await peo.Node(sqlite_url, waiter_app(), policy=policy, idle_horizon=0).run_until_idle()

    asyncio.run(node())
    ok(capsys, "--store", sqlite_url, "signal", oid, "approve")  # the deployment's client key: not allowed
    asyncio.run(node())
    shown = ok(capsys, "--store", sqlite_url, "show", oid)
    assert "status    dormant" in shown and "the policy does not allow key" in shown
    ok(capsys, "--store", sqlite_url, "signal", oid, "approve", "--key", str(tmp_path / "ops" / "ops.key"))
    asyncio.run(node())
    assert '"approved_by": "' + key_id[1] in ok(capsys, "--store", sqlite_url, "show", oid, "--json")
    ok(capsys, "--store", sqlite_url, "verify", oid, "--policy", str(policy_file))
    code, out, _ = run(capsys, "--store", sqlite_url, "verify", oid)  # without the policy: the key is unknown
    assert code == 1 and "signed by untrusted key" in out
