"""peo's verifier against published Ed25519 edge cases.

Sources (the hex below is copied from them; the prose is ours):

- RFC 8032, section 7.1: the known-answer vectors TEST 1 to TEST 3 (seed, public key,
  message, signature). A correct signer reproduces them byte for byte.
- "Taming the many EdDSAs" (Chalkias, Garillot, Nikolaenko, SSR 2020) and its companion
  repository novifinancial/ed25519-speccheck (``cases.json``): signatures built so that
  implementations disagree about them: small-order public keys and R points, mixed-order
  points (a small-order component added to a proper point), non-canonical encodings of R,
  S values at or above the group order L, and equations that hold only when multiplied by
  the cofactor 8. The paper's results table records that libsodium (which pynacl wraps and
  peo uses) accepts only the vector that satisfies the strict, cofactorless equation with
  mixed-order A and R.

Rather than copying the paper's expected verdicts, each vector is classified here by a
small pure-Python Edwards-curve model (RFC 8032 section 5.1 arithmetic), and the verdict
that model predicts for a strict verifier is compared with what pynacl and peo's
:class:`~peo.core.crypto.Keyring` actually answer.
"""

from __future__ import annotations

import hashlib

import nacl.exceptions
import nacl.signing
import pytest

from peo.core.crypto import Keyring, SigningKey, is_valid_public_key, key_id_of
from peo.errors import IntegrityError, UsageError

# -- a minimal Ed25519 model (RFC 8032 section 5.1), slow but obviously correct -----------

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493  # order of the prime-order subgroup
D = -121665 * pow(121666, -1, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)

Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T)
IDENTITY: Point = (0, 1, 1, 0)


def _add(a: Point, b: Point) -> Point:
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % P
    bb = (y1 + x1) * (y2 + x2) % P
    cc = 2 * t1 * t2 * D % P
    dd = 2 * z1 * z2 % P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(k: int, p: Point) -> Point:
    out = IDENTITY
    while k:
        if k & 1:
            out = _add(out, p)
        p = _add(p, p)
        k >>= 1
    return out


def _neg(p: Point) -> Point:
    x, y, z, t = p
    return (-x % P, y, z, -t % P)


def _eq(a: Point, b: Point) -> bool:
    return (a[0] * b[2] - b[0] * a[2]) % P == 0 and (a[1] * b[2] - b[1] * a[2]) % P == 0


def _decode(s: bytes) -> Point | None:
    """Lenient decoding (y taken mod p), so non-canonical encodings can be classified."""
    y = int.from_bytes(s, "little")
    sign, y = y >> 255, (y & ((1 << 255) - 1)) % P
    x2 = (y * y - 1) * pow(D * y * y + 1, -1, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P:
        return None  # not on the curve
    if x & 1 != sign:
        x = -x % P
    return (x, y, 1, x * y % P)


def _encode(p: Point) -> bytes:
    zi = pow(p[2], -1, P)
    x, y = p[0] * zi % P, p[1] * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


B = _decode((4 * pow(5, -1, P) % P).to_bytes(32, "little"))
assert B is not None


def _small_order(p: Point) -> bool:
    return _eq(_mul(8, p), IDENTITY)


def _challenge(r: bytes, a: bytes, msg: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r + a + msg).digest(), "little") % L


def _strict_verdict(pub: bytes, msg: bytes, sig: bytes) -> bool:
    """What a strict verifier (libsodium's rules) should answer: canonical S below L,
    canonical A and R, neither of small order, and the cofactorless equation
    [S]B = R + [k]A (checked as: the canonical encoding of [S]B - [k]A is R)."""
    a_point, r_point = _decode(pub), _decode(sig[:32])
    s = int.from_bytes(sig[32:], "little")
    if a_point is None or r_point is None or s >= L:
        return False
    if _encode(a_point) != pub or _small_order(a_point) or _small_order(r_point):
        return False
    k = _challenge(sig[:32], pub, msg)
    return _encode(_add(_mul(s, B), _neg(_mul(k, a_point)))) == sig[:32]


def _nacl_accepts(pub: bytes, msg: bytes, sig: bytes) -> bool:
    try:
        nacl.signing.VerifyKey(pub).verify(msg, sig)
    except (nacl.exceptions.BadSignatureError, ValueError):
        return False
    return True


def _peo_accepts(pub: bytes, msg: bytes, sig: bytes) -> bool:
    """The verdict of peo's Keyring, which is what every chain verification goes through."""
    ring = Keyring()
    try:
        kid = ring.trust(pub)
    except UsageError:
        return False  # refused before any signature is looked at
    try:
        ring.verify(kid, "default", msg, sig, seq=0)
    except IntegrityError:
        return False
    return True


# -- RFC 8032 section 7.1 -----------------------------------------------------------------

RFC8032 = [
    pytest.param(
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        id="test1-empty-message",
    ),
    pytest.param(
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        id="test2-one-byte",
    ),
    pytest.param(
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        id="test3-two-bytes",
    ),
]


@pytest.mark.parametrize(("seed", "pub", "msg", "sig"), RFC8032)
def test_rfc8032_known_answers_sign_and_verify(seed: str, pub: str, msg: str, sig: str) -> None:
    key = SigningKey(bytes.fromhex(seed))
    message, signature = bytes.fromhex(msg), bytes.fromhex(sig)
    assert key.public_key.hex() == pub
    assert key.sign(message) == signature  # Ed25519 signing is deterministic
    assert _strict_verdict(key.public_key, message, signature)  # the model agrees it is valid
    ring = Keyring()
    assert ring.trust(key.public_key) == key.key_id == key_id_of(bytes.fromhex(pub))
    ring.verify(key.key_id, "default", message, signature, seq=0)  # does not raise
    with pytest.raises(IntegrityError, match="bad signature"):
        ring.verify(key.key_id, "default", message + b"\x00", signature, seq=0)


# -- non-canonical S (S >= L): the classic malleability ---------------------------------------


def test_a_signature_with_s_plus_l_is_refused_although_the_equation_holds() -> None:
    key = SigningKey(bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"))
    message = b"peo entry body"
    good = key.sign(message)
    s = int.from_bytes(good[32:], "little")
    for bumped in (s + L, s + 2 * L):  # both still fit in 32 bytes with the top bits clear
        malleated = good[:32] + bumped.to_bytes(32, "little")
        # [S + L]B = [S]B, so a verifier that reduces S mod L would accept this second
        # signature for the same message: exactly what must not happen.
        assert _eq(_mul(bumped, B), _mul(s, B))
        assert not _nacl_accepts(key.public_key, message, malleated)
        assert not _peo_accepts(key.public_key, message, malleated)
    assert _peo_accepts(key.public_key, message, good)


# -- small-order public keys ---------------------------------------------------------------

# Every encoding of a point of order 1, 2, 4 or 8, including the non-canonical ones (y >= p,
# or "negative zero" x): the list is the union of the torsion points and the alternative
# encodings discussed in the speccheck repository and in libsodium's blocklist.
SMALL_ORDER_ENCODINGS = [
    "0100000000000000000000000000000000000000000000000000000000000000",  # identity (order 1)
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # (0, -1): order 2
    "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
    "0000000000000000000000000000000000000000000000000000000000000080",  # order 4
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",  # order 8
    "0100000000000000000000000000000000000000000000000000000000000080",  # identity, x sign set
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # order 2, x sign set
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p + 1 (identity)
]


@pytest.mark.parametrize("hex_key", SMALL_ORDER_ENCODINGS)
def test_small_order_keys_are_refused_by_the_keyring_and_by_libsodium(hex_key: str) -> None:
    pub = bytes.fromhex(hex_key)
    point = _decode(pub)
    assert point is not None and _small_order(point)  # the list really is small-order points
    assert not is_valid_public_key(pub)
    with pytest.raises(UsageError, match="small-order"):
        Keyring().trust(pub)
    with pytest.raises(UsageError, match="small-order"):
        Keyring().add_mapping({hex_key: ["default"]})
    # The universal forgery such a key allows: R = the identity and S = 0 satisfy
    # [0]B = R + [k]A whenever [k]A is the identity, which for the identity key is always.
    forged = bytes.fromhex(SMALL_ORDER_ENCODINGS[0]) + bytes(32)
    for message in (b"", b"pay 100", b"\x00" * 64):
        assert not _nacl_accepts(pub, message, forged)


def test_the_identity_key_forgery_satisfies_the_naive_equation() -> None:
    """The forgery above is real for a naive verifier: check it with the model."""
    identity = _decode(bytes.fromhex(SMALL_ORDER_ENCODINGS[0]))
    assert identity is not None
    k = _challenge(bytes.fromhex(SMALL_ORDER_ENCODINGS[0]), bytes.fromhex(SMALL_ORDER_ENCODINGS[0]), b"pay 100")
    assert _eq(_mul(0, B), _add(identity, _mul(k, identity)))


# -- the "Taming the many EdDSAs" vectors (speccheck cases.json) -----------------------------

TAMING = [
    ("8c93255d71dcab10e8f379c26200f3c7bd5f09d9bc3068d3ef4edeb4853022b6",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"
     "0000000000000000000000000000000000000000000000000000000000000000"),
    ("9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
     "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43"
     "a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"),
    ("aebf3f2601a0c8c5d39cc7d8911642f740b78168218da8471772b35f9d35b9ab",
     "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"
     "8c4bd45aecaca5b24fb97bc10ac27ac8751a7dfe1baff8b953ec9f5833ca260e"),
    ("9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79",
     "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
     "9046a64750444938de19f227bb80485e92b83fdb4b6506c160484c016cc1852f"
     "87909e14428a7a1d62e9f22f3d3ad7802db02eb2e688b6c52fcd6648a98bd009"),
    ("e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c",
     "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
     "160a1cb0dc9c0258cd0a7d23e94d8fa878bcb1925f2c64246b2dee1796bed512"
     "5ec6bc982a269b723e0668e540911a9a6a58921d6925e434ab10aa7940551a09"),
    ("e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c",
     "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
     "21122a84e0b5fca4052f5b1235c80a537878b38f3142356b2c2384ebad4668b7"
     "e40bc836dac0f71076f9abe3a53f9c03c1ceeeddb658d0030494ace586687405"),
    ("85e241a07d148b41e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec40",
     "442aad9f089ad9e14647b1ef9099a1ff4798d78589e66f28eca69c11f582a623",
     "e96f66be976d82e60150baecff9906684aebb1ef181f67a7189ac78ea23b6c0e"
     "547f7690a0e2ddcd04d87dbc3490dc19b3b3052f7ff0538cb68afb369ba3a514"),
    ("85e241a07d148b41e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec40",
     "442aad9f089ad9e14647b1ef9099a1ff4798d78589e66f28eca69c11f582a623",
     "8ce5b96c8f26d0ab6c47958c9e68b937104cd36e13c33566acd2fe8d38aa1942"
     "7e71f98a473474f2f13f06f97c20d58cc3f54b8bd0d272f42b695dd7e89a8c22"),
    ("fdaebc429f4a735932a160da1301080c13280eea8bc280d1b392c6b9e6ba3a5a",
     "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
     "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"
     "454d370c8d9fc323a41450f8d513eafeb5b0697390c1e505a0d4ddc71f566607"),
    ("84b698d39be126ff55fe45079e6c8bf64a0d7db6994560b4e96b7021eb39c1a1",
     "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
     "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"
     "084d5b99c2a9463d9c8bd5026916996984eeec87ddf1d3be329006ace1b37b09"),
]


@pytest.mark.parametrize(("msg", "pub", "sig"), TAMING, ids=[f"case{i}" for i in range(len(TAMING))])
def test_taming_vectors_get_the_strict_verdict(msg: str, pub: str, sig: str) -> None:
    message, public, signature = bytes.fromhex(msg), bytes.fromhex(pub), bytes.fromhex(sig)
    expected = _strict_verdict(public, message, signature)
    assert _nacl_accepts(public, message, signature) is expected
    assert _peo_accepts(public, message, signature) is expected


def test_only_the_mixed_order_vector_that_satisfies_the_strict_equation_is_accepted() -> None:
    """Matches the paper's libsodium row: of these vectors, only case 3 verifies."""
    accepted = [i for i, (m, a, s) in enumerate(TAMING) if _peo_accepts(bytes.fromhex(a), bytes.fromhex(m),
                                                                         bytes.fromhex(s))]
    assert accepted == [3]
    case3 = _decode(bytes.fromhex(TAMING[3][1]))
    assert case3 is not None
    assert not _small_order(case3) and not _eq(_mul(L, case3), IDENTITY)  # A really is mixed-order


# -- a mixed-order key built here -------------------------------------------------------------


def _order8_point() -> Point:
    t = _decode(bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"))
    assert t is not None and _small_order(t) and not _eq(_mul(4, t), IDENTITY)
    return t


def _sign_mixed(a: int, pub: bytes, msg: bytes, nonce: int) -> bytes:
    r = _encode(_mul(nonce, B))
    s = (nonce + _challenge(r, pub, msg) * a) % L
    return r + s.to_bytes(32, "little")


def test_a_mixed_order_key_verifies_only_when_its_torsion_cancels() -> None:
    """A' = [a]B + T (T of order 8). A signature made with a verifies cofactored always,
    but cofactorless (libsodium, hence peo) only when [k]T is the identity, i.e. 8 | k.
    Such keys are not refused (they are not small-order and cannot be blocklisted), which is
    harmless here: only the holder of ``a`` can sign, and every peo verifier uses the same
    cofactorless rule, so two peo verifiers never disagree about a signature."""
    a = int.from_bytes(hashlib.sha256(b"peo mixed-order test scalar").digest(), "little") % L
    pub = _encode(_add(_mul(a, B), _order8_point()))
    assert is_valid_public_key(pub)  # not on the small-order blocklist
    seen = set()
    for i in range(64):
        msg = f"message {i}".encode()
        sig = _sign_mixed(a, pub, msg, nonce=1000 + i)
        k = _challenge(sig[:32], pub, msg)
        s, r = int.from_bytes(sig[32:], "little"), _decode(sig[:32])
        a_point = _decode(pub)
        assert r is not None and a_point is not None
        # The cofactored equation always holds for an honest signer.
        assert _eq(_mul(8, _mul(s, B)), _mul(8, _add(r, _mul(k, a_point))))
        expected = k % 8 == 0
        assert _peo_accepts(pub, msg, sig) is expected
        seen.add(expected)
        if seen == {True, False}:
            break
    assert seen == {True, False}  # both outcomes were exercised
