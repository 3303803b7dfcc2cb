"""Key files are the trust root: peo creates them safely and refuses any it must not use
(issue 19, item 7).

- Keys are written with ``O_EXCL | O_NOFOLLOW`` at a random temporary name, never through
  a symlink: a symlink planted at the temporary or the final name never receives the seed.
- Modes are exact whatever the umask: key directory 0700, secret 0600, ``.pub`` 0644.
- A key directory or key file owned by another user (root excepted) or writable by group
  or others is refused, and so is a secret key readable by them; so are symlinks, FIFOs
  and other non-regular key files, without ever blocking on a FIFO.
- Every refusal and every malformed key file names the file and says how to fix it; ``peo
  verify``, ``peo node`` and ``peo submit`` stop with it (exit 2, no traceback).

The key directory is ``$PEO_KEYS`` (``tmp_path/keys``) in every test here.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from clirun import ok, run

from peo import keyfiles, keys
from peo.core.crypto import _SMALL_ORDER, PUBLIC_HEADER, SECRET_HEADER
from peo.errors import IntegrityError, UsageError

APP_SOURCE = '''
import peo

app = peo.App()


@app.handler("echo")
def echo(step):
    return peo.Done(step.goal)
'''

#: A uid that owns nothing on the test machine: "another user".
STRANGER = 54321


@pytest.fixture
def key_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PEO_KEYS", str(tmp_path / "keys"))
    return tmp_path / "keys"


@pytest.fixture
def initialised(key_dir: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A deployment with a store (./peo.db), its client and node keys, and one object."""
    ok(capsys, "init")
    ok(capsys, "submit", "echo")
    return key_dir


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that would make new files and directories writable by everyone."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "keyfilesapp.py").write_text(APP_SOURCE)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    yield "keyfilesapp:app"
    sys.modules.pop("keyfilesapp", None)


@pytest.fixture
def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root (the owner check itself runs for every user)")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def attacker_file(tmp_path: Path) -> Path:
    """A file of the attacker's that a planted symlink points to."""
    target = tmp_path / "attacker" / "loot"
    target.parent.mkdir()
    target.write_text("attacker's\n")
    return target


def a_pub_file(path: Path, public_key: bytes) -> Path:
    path.write_text(f"{PUBLIC_HEADER}\n{public_key.hex()}\n")
    return path


# -- creating keys never writes through a symlink --------------------------------------------


def test_a_symlink_planted_at_the_old_predictable_temporary_name_never_receives_the_seed(
        tmp_path: Path, key_dir: Path) -> None:
    key_dir.mkdir(mode=0o700)
    loot = attacker_file(tmp_path)
    (key_dir / f"node.key.tmp{os.getpid()}").symlink_to(loot)
    (key_dir / f"node.key.pub.tmp{os.getpid()}").symlink_to(loot)

    key = keys.load_or_create(key_dir / "node.key")

    assert loot.read_text() == "attacker's\n"
    assert stat.S_ISREG(os.lstat(key_dir / "node.key").st_mode)
    assert keys.load_key_file(key_dir / "node.key").key_id == key.key_id


def test_a_symlink_planted_at_the_random_temporary_name_is_refused_and_never_receives_the_seed(
        tmp_path: Path, key_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Guessing the random name is what an attacker cannot do; the test makes it guessable
    # to show that even then the file is created anew (O_EXCL), never opened through the link.
    monkeypatch.setattr(keyfiles, "secrets", types.SimpleNamespace(token_hex=lambda n: "guessed"))
    key_dir.mkdir(mode=0o700)
    loot = attacker_file(tmp_path)
    (key_dir / "node.key.tmpguessed").symlink_to(loot)

    with pytest.raises(UsageError, match=f"cannot create key file {key_dir / 'node.key'}: .* {key_dir}"):
        keys.load_or_create(key_dir / "node.key")
    assert loot.read_text() == "attacker's\n"
    assert not os.path.lexists(key_dir / "node.key")


@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
def test_a_symlink_planted_at_the_key_name_is_refused_and_never_written_through(
        tmp_path: Path, key_dir: Path, capsys: pytest.CaptureFixture[str], dangling: bool) -> None:
    key_dir.mkdir(mode=0o700)
    loot = attacker_file(tmp_path)
    if dangling:
        loot.unlink()
    (key_dir / "client.key").symlink_to(loot)

    code, out, err = run(capsys, "submit", "echo")
    assert (code, out) == (2, "")
    assert f"{key_dir / 'client.key'}" in err and "symlink" in err and f"remove the symlink {key_dir}" in err
    with pytest.raises(UsageError, match="symlink"):
        keys.save(keys.generate(), key_dir / "client.key")
    if dangling:
        assert not loot.exists()  # nothing was created through the link
    else:
        assert loot.read_text() == "attacker's\n"
    assert os.path.islink(key_dir / "client.key")  # left for the operator to look at


def test_a_symlink_planted_at_the_pub_name_is_refused_before_anything_is_written(
        tmp_path: Path, key_dir: Path) -> None:
    key_dir.mkdir(mode=0o700)
    loot = attacker_file(tmp_path)
    (key_dir / "node.key.pub").symlink_to(loot)

    with pytest.raises(UsageError, match=f"key file {key_dir / 'node.key.pub'}: a symlink"):
        keys.save(keys.generate(), key_dir / "node.key")
    assert loot.read_text() == "attacker's\n"
    assert sorted(p.name for p in key_dir.iterdir()) == ["node.key.pub"]  # no secret, no temporary file


# -- modes, whatever the umask ---------------------------------------------------------------


def test_under_umask_0_the_key_directory_is_0700_the_secrets_0600_and_the_pub_files_0644(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], open_umask: None) -> None:
    monkeypatch.setenv("PEO_KEYS", str(tmp_path / "deployment" / "keys"))
    ok(capsys, "init")
    directory = tmp_path / "deployment" / "keys"
    assert mode(directory) == 0o700
    assert mode(directory.parent) == 0o755  # a parent peo made on the way: nobody else writes there
    assert {p.name: mode(p) for p in directory.iterdir()} == {
        "client.key": 0o600, "client.key.pub": 0o644, "node.key": 0o600, "node.key.pub": 0o644}


def test_under_a_strict_umask_the_pub_files_stay_readable_by_all(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        keys.save(keys.generate(), tmp_path / "keys" / "node.key")
    finally:
        os.umask(old)
    assert (mode(tmp_path / "keys"), mode(tmp_path / "keys" / "node.key.pub")) == (0o700, 0o644)


def test_a_key_directory_as_earlier_versions_made_it_under_umask_022_is_still_used(
        initialised: Path, capsys: pytest.CaptureFixture[str]) -> None:
    initialised.chmod(0o755)
    assert "1 ok, 0 failed" in ok(capsys, "verify")


# -- refused: writable by others, owned by others, readable secrets ---------------------------


@pytest.mark.parametrize("bad_mode", [0o770, 0o707, 0o777, 0o1777], ids=oct)
def test_a_key_directory_writable_by_group_or_others_is_refused_naming_it(
        initialised: Path, capsys: pytest.CaptureFixture[str], bad_mode: int) -> None:
    initialised.chmod(bad_mode)
    for argv in (["verify"], ["submit", "echo"]):
        code, _, err = run(capsys, *argv)
        assert code == 2, argv
        assert f"key directory {initialised}: writable by group or others" in err
        assert f"chmod go-w {initialised}" in err
    with pytest.raises(UsageError, match=f"key directory {initialised}: writable"):
        keys.keyring_from_directory(initialised)
    with pytest.raises(UsageError, match=f"key directory {initialised}: writable"):
        keys.load_key_file(initialised / "node.key")


@pytest.mark.parametrize(("name", "argv"), [("client.key.pub", ["verify"]), ("node.key.pub", ["verify"]),
                                            ("client.key", ["submit", "echo"])])
@pytest.mark.parametrize("bad_mode", [0o620, 0o602], ids=oct)
def test_a_key_file_writable_by_group_or_others_is_refused_naming_it(
        initialised: Path, capsys: pytest.CaptureFixture[str], name: str, argv: list[str], bad_mode: int) -> None:
    path = initialised / name
    path.chmod(bad_mode)
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert f"key file {path}: writable by group or others (mode {bad_mode:04o})" in err
    assert f"chmod go-w {path}" in err


@pytest.mark.parametrize("bad_mode", [0o640, 0o604], ids=oct)
def test_a_secret_key_readable_by_group_or_others_is_refused(
        initialised: Path, capsys: pytest.CaptureFixture[str], bad_mode: int) -> None:
    path = initialised / "client.key"
    path.chmod(bad_mode)
    code, _, err = run(capsys, "submit", "echo")
    assert code == 2
    assert f"key file {path}: readable by group or others" in err and f"chmod 600 {path}" in err
    path.chmod(0o600)
    ok(capsys, "submit", "echo")


@pytest.mark.parametrize(("name", "argv"), [(".", ["verify"]), ("node.key.pub", ["verify"]),
                                            ("client.key", ["submit", "echo"])], ids=["directory", "pub", "secret"])
def test_a_key_directory_or_key_file_owned_by_another_user_is_refused(
        initialised: Path, capsys: pytest.CaptureFixture[str], as_root: None, name: str, argv: list[str]) -> None:
    path = initialised / name if name != "." else initialised
    os.chown(path, STRANGER, -1)
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert f"{path}: owned by uid {STRANGER}, not by you (uid 0) or root" in err
    assert f"chown 0 {path}" in err
    os.chown(path, 0, -1)  # root's own files are fine
    ok(capsys, *argv)


# -- refused: anything but a regular file ----------------------------------------------------


def test_a_symlink_as_a_key_file_is_refused_even_to_a_valid_key(
        tmp_path: Path, initialised: Path, capsys: pytest.CaptureFixture[str]) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    visitor = keys.generate()
    (initialised / "visitor.key.pub").symlink_to(a_pub_file(elsewhere / "visitor.key.pub", visitor.public_key))
    code, _, err = run(capsys, "verify")
    assert code == 2
    assert f"cannot read key file {initialised / 'visitor.key.pub'}: it is a symlink" in err
    with pytest.raises(UsageError, match="symlink"):
        keys.keyring_from_directory(initialised)


def test_a_directory_named_like_a_pub_file_is_refused(initialised: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (initialised / "odd.pub").mkdir()
    code, _, err = run(capsys, "verify")
    assert code == 2 and f"cannot read key file {initialised / 'odd.pub'}: it is a directory" in err


@pytest.mark.parametrize(("name", "argv"), [("visitor.key.pub", ["verify"]), ("client.key", ["submit", "echo"])])
def test_a_fifo_as_a_key_file_is_refused_without_blocking(
        initialised: Path, name: str, argv: list[str]) -> None:
    # A reader that opened the FIFO would wait forever for a writer: the command runs in a
    # child process so that such a hang fails this test (by the guard) instead of freezing it.
    path = initialised / name
    path.unlink(missing_ok=True)
    os.mkfifo(path, 0o600)
    done = subprocess.run([sys.executable, "-m", "peo", *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"cannot read key file {path}: it is a FIFO, not a regular file" in done.stderr
    assert "Traceback" not in done.stderr


# -- every malformed key file is named ------------------------------------------------------

MALFORMED_PUB = {
    "wrong-header": ("peo-ed25519-secret-v0\n" + "ab" * 32 + "\n", "not a peo public key file"),
    "bad-hex": (f"{PUBLIC_HEADER}\n" + "zz" * 32 + "\n", "malformed public key (not hex)"),
    "wrong-length": (f"{PUBLIC_HEADER}\n" + "ab" * 31 + "\n", "malformed public key (31 bytes"),
    "small-order": (f"{PUBLIC_HEADER}\n{min(_SMALL_ORDER).hex()}\n", "malformed public key (a small-order point"),
    "empty": ("", "not a peo public key file"),
    "binary": (b"\xff\xfe\x00", "not a peo key file (it is not text)"),
    "a-secret": (f"{SECRET_HEADER}\n" + "ab" * 32 + "\n", "holds a secret key, not a public key"),
}


def write(path: Path, content: str | bytes) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


@pytest.mark.parametrize(("content", "problem"), MALFORMED_PUB.values(), ids=MALFORMED_PUB.keys())
def test_a_malformed_pub_file_stops_peo_verify_with_a_message_naming_it(
        initialised: Path, capsys: pytest.CaptureFixture[str], content: str | bytes, problem: str) -> None:
    pub = initialised / "visitor.key.pub"
    write(pub, content)
    code, out, err = run(capsys, "verify")
    assert (code, out) == (2, "")
    assert f"peo: error: key file {pub}: {problem}" in err


@pytest.mark.parametrize("case", ["small-order", "bad-hex"])
def test_a_malformed_pub_file_stops_peo_node_with_a_message_naming_it(
        initialised: Path, capsys: pytest.CaptureFixture[str], app_module: str, case: str) -> None:
    content, problem = MALFORMED_PUB[case]
    pub = initialised / "visitor.key.pub"
    write(pub, content)
    code, _, err = run(capsys, "node", "--app", app_module, "--until-idle")
    assert code == 2
    assert f"peo: error: key file {pub}: {problem}" in err


@pytest.mark.parametrize(("content", "problem"), [
    ("hello\n", "not a peo secret key file"),
    (f"{PUBLIC_HEADER}\n" + "ab" * 32 + "\n", "not a peo secret key file but a public one"),
    (f"{SECRET_HEADER}\nnot-hex\n", "malformed key (the seed is not hex)"),
    (f"{SECRET_HEADER}\nabcd\n", "malformed key (a 2-byte seed"),
    ("x" * 5000, "not a peo key file (larger than 4096 bytes)"),
], ids=["garbage", "a-public-key", "bad-hex", "short-seed", "huge"])
def test_a_malformed_secret_key_file_stops_peo_node_and_submit_with_a_message_naming_it(
        initialised: Path, capsys: pytest.CaptureFixture[str], app_module: str, content: str, problem: str) -> None:
    for name, argv in (("node.key", ["node", "--app", app_module, "--until-idle"]),
                       ("client.key", ["submit", "echo"])):
        path = initialised / name
        path.write_text(content)
        code, _, err = run(capsys, *argv)
        assert code == 2
        assert f"peo: error: key file {path}: {problem}" in err


# -- a bad file that appears while a node runs ----------------------------------------------


def test_a_bad_pub_appearing_later_is_logged_once_and_its_key_stays_untrusted_while_the_others_work(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The keyring re-reads the directory when an unknown key id shows up, in the middle of a
    # node's work: a refusal there must not stop the node, nor trust the refused key.
    directory = tmp_path / "keys"
    keys.save(keys.generate(), directory / "node.key")
    ring = keys.keyring_from_directory(directory)
    newcomer, intruder = keys.generate(), keys.generate()
    keys.save(newcomer, directory / "newcomer.key")
    a_pub_file(directory / "intruder.key.pub", intruder.public_key).chmod(0o666)

    with caplog.at_level(logging.WARNING, logger="peo.keys"):
        ring.verify(newcomer.key_id, "default", b"m", newcomer.sign(b"m"))
        for _ in range(3):
            with pytest.raises(IntegrityError, match=f"untrusted key {intruder.key_id}"):
                ring.verify(intruder.key_id, "default", b"m", intruder.sign(b"m"))
    warnings = [r.getMessage() for r in caplog.records if r.name == "peo.keys"]
    assert len(warnings) == 1
    assert f"key file {directory / 'intruder.key.pub'}: writable by group or others" in warnings[0]


# -- peo keys says what is refused -----------------------------------------------------------


def test_peo_keys_reports_each_refused_file_and_lists_the_others(
        initialised: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(initialised / "broken.pub", MALFORMED_PUB["small-order"][0])
    (initialised / "node.key.pub").chmod(0o666)
    a_pub_file(initialised / "client.key.pub", keys.generate().public_key)  # not the client's own key

    code, out, err = run(capsys, "keys")
    assert code == 0
    assert f"peo keys: refused: key file {initialised / 'broken.pub'}: malformed public key" in err
    assert f"peo keys: refused: key file {initialised / 'node.key.pub'}: writable by group or others" in err
    assert f"peo keys: refused: key file {initialised / 'client.key.pub'}: holds key" in err
    assert str(initialised / "node.key") in out  # its secret is fine, so it is listed

    initialised.chmod(0o777)
    code, out, err = run(capsys, "keys")
    assert (code, out.splitlines()[1:]) == (0, ["no keys"])
    assert f"peo keys: refused: key directory {initialised}: writable by group or others" in err
