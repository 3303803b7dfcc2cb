"""The CLI side of an object no node serves: submit warns (or refuses with --strict), an
until-idle node says what it left behind, ls says why the object waits."""

from __future__ import annotations

from clirun import run


def test_a_submit_for_a_handler_no_node_serves_warns_and_strict_refuses(capsys, sqlite_url) -> None:
    code, out, err = run(capsys, "--store", sqlite_url, "submit", "cuont")
    assert code == 0 and out.strip() and "no node has served handler 'cuont'" in err and "--strict" in err
    code, out, err = run(capsys, "--store", sqlite_url, "submit", "cuont", "--strict")
    assert code == 1 and out == "" and "nothing would run it" in err
    code, _, _ = run(capsys, "--store", sqlite_url, "node", "--app", "peo.demo:app", "--until-idle")
    code, out, err = run(capsys, "--store", sqlite_url, "submit", "research", "--strict")
    assert code == 0 and "warning" not in err  # a node that serves "research" registered
    code, _, err = run(capsys, "--store", sqlite_url, "node", "--app", "peo.demo:app", "--until-idle")
    assert code == 0 and "left 1 object behind: handler 'cuont' is not served by this node" in err
    code, out, _ = run(capsys, "--store", sqlite_url, "ls", "--handler", "cuont")
    assert "no node serves this handler" in out


def test_ls_pages_with_limit_and_after(capsys, sqlite_url) -> None:
    ids = [run(capsys, "--store", sqlite_url, "submit", "research")[1].strip() for _ in range(3)]
    code, out, _ = run(capsys, "--store", sqlite_url, "ls", "--limit", "2")
    first = [line.split()[0] for line in out.splitlines()[1:]]
    assert code == 0 and first == sorted(ids)[:2]
    code, out, _ = run(capsys, "--store", sqlite_url, "ls", "--limit", "2", "--after", first[-1])
    assert [line.split()[0] for line in out.splitlines()[1:]] == sorted(ids)[2:]
