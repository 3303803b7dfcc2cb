"""The codec: one cattrs converter for structure, msgpack for framing.

Three layers stay apart: structure (cattrs turns model values into plain data), framing
(msgpack turns plain data into bytes) and signing (``crypto``/``memory`` sign those exact
bytes). Decoding untrusted bytes enforces :class:`Limits` and raises only
:class:`~peo.errors.CodecError`; nothing else escapes.

Plain data is: None, bool, int in the signed 64-bit range, finite or not float, str,
bytes, lists and maps with str keys, nested at most ``Limits.depth`` deep.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import cattrs
import msgpack
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from ..errors import CodecError
from .model import Action, Constraints, Context, Entry, Intent

__all__ = [
    "FORMAT_VERSION",
    "UPCASTERS",
    "Limits",
    "check_name",
    "check_value",
    "converter",
    "decode_body",
    "encode_body",
    "packb",
    "read_back",
    "structure",
    "unpackb",
    "unstructure",
]

#: Version written into every record. Bump it when the wire form changes, and add an
#: upcaster from the previous version to :data:`UPCASTERS`.
FORMAT_VERSION = 1

#: ``UPCASTERS[v]`` turns a decoded body map of version ``v`` into version ``v + 1``.
#: Upcasting changes only what is *read*; the stored bytes (and their signature) never change.
UPCASTERS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1


@attrs.frozen
class Limits:
    """Bounds applied to untrusted input. The defaults suit memory entries."""

    max_bytes: int = 1 << 20  # whole record
    depth: int = 32  # nesting of lists and maps
    items: int = 100_000  # elements in one list or map, and in the whole record


DEFAULT_LIMITS = Limits()


def packb(value: Any) -> bytes:
    try:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode value: {exc}") from None


def _refuse_ext(code: int, data: bytes) -> Any:
    raise CodecError(f"unknown msgpack extension type {code}")


def unpackb(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Decode untrusted bytes into checked plain data, or raise CodecError."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError(f"expected bytes, got {type(data).__name__}")
    if len(data) > limits.max_bytes:
        raise CodecError(f"record of {len(data)} bytes exceeds the limit of {limits.max_bytes}")
    if not data:
        raise CodecError("empty record")
    try:
        # The max_*_len bounds make msgpack refuse a header that claims more elements than
        # the limits allow before it allocates anything for them.
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_refuse_ext,
            max_str_len=limits.max_bytes,
            max_bin_len=limits.max_bytes,
            max_array_len=limits.items,
            max_map_len=limits.items,
            max_ext_len=0,
        )
    except CodecError:
        raise
    except Exception as exc:  # msgpack raises many types (ValueError, StackError, ...)
        raise CodecError(f"malformed msgpack: {type(exc).__name__}: {exc}") from None
    check_value(value, limits)
    return value


def check_value(value: Any, limits: Limits = DEFAULT_LIMITS, *, what: str = "value") -> None:
    """Check that ``value`` is plain data within ``limits`` (iteratively: no recursion).

    A container's size is counted before its elements are looked at, and the summed length
    of its strings and bytes (a lower bound of its encoded size) is held to
    ``limits.max_bytes``, so an oversized value is refused before it is copied or encoded.
    Scalars are checked where their container is scanned (exact types first): this runs on
    every state update and every decoded record, so it is kept cheap.
    """
    if not isinstance(value, dict | list | tuple):
        if _scalar_size(value, what) > limits.max_bytes:
            raise CodecError(f"{what} holds more than {limits.max_bytes} bytes of text and binary data")
        return
    stack: list[tuple[Any, int]] = [(value, 0)]
    count = 1
    size = 0
    max_depth, max_items, max_bytes = limits.depth, limits.items, limits.max_bytes
    while stack:
        item, depth = stack.pop()
        if depth >= max_depth:
            raise CodecError(f"{what} is nested deeper than {max_depth} levels")
        count += len(item)
        if count > max_items:
            raise CodecError(f"{what} has more than {max_items} elements")
        if isinstance(item, dict):
            for k in item:
                if type(k) is not str and not isinstance(k, str):
                    raise CodecError(f"{what}: map keys must be strings, got {type(k).__name__}")
                size += len(k)
            values: Any = item.values()
        else:
            values = item
        for x in values:
            tx = type(x)
            if tx is str or tx is bytes:
                size += len(x)
            elif tx is int:
                if not _INT_MIN <= x <= _INT_MAX:
                    raise CodecError(f"{what}: integer {x} is out of the 64-bit range")
            elif x is None or tx is float or tx is bool:
                pass
            elif tx is dict or tx is list or isinstance(x, dict | list | tuple):
                stack.append((x, depth + 1))
            else:
                size += _scalar_size(x, what)
        if size > max_bytes:
            raise CodecError(f"{what} holds more than {max_bytes} bytes of text and binary data")


def _scalar_size(x: Any, what: str) -> int:
    """Check one non-container value (subclasses included); return its text/binary length."""
    if x is None or isinstance(x, bool | float):
        return 0
    if isinstance(x, str | bytes):
        return len(x)
    if isinstance(x, int):
        if not _INT_MIN <= x <= _INT_MAX:
            raise CodecError(f"{what}: integer {x} is out of the 64-bit range")
        return 0
    raise CodecError(f"{what}: values of type {type(x).__name__} cannot be stored")


def check_name(name: object, what: str = "name") -> str:
    """A handler, scope or signal name: a short, printable, non-empty str."""
    if not isinstance(name, str) or not name:
        raise CodecError(f"{what} must be a non-empty string")
    if len(name) > 200:
        raise CodecError(f"{what} is longer than 200 characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise CodecError(f"{what} contains control characters")
    return name


# -- the one converter ------------------------------------------------------------------


def _strict(kind: type, *, allow: tuple[type, ...] = ()) -> Callable[[Any, type], Any]:
    def hook(value: Any, _: type) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise CodecError(f"expected {kind.__name__}, got bool")
        if not isinstance(value, (kind, *allow)):
            raise CodecError(f"expected {kind.__name__}, got {type(value).__name__}")
        return kind(value) if allow else value

    return hook


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(int, _strict(int))
    conv.register_structure_hook(str, _strict(str))
    conv.register_structure_hook(bool, _strict(bool))
    conv.register_structure_hook(float, _strict(float, allow=(int,)))
    conv.register_structure_hook(Any, lambda v, _: v)
    for cls in (Constraints, Intent, Context):
        conv.register_structure_hook(cls, make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True))
    # Fields added after format 1 are left out while unset, so that an intent which does not
    # use them encodes to the same bytes as before (tests/core/test_golden.py).
    conv.register_unstructure_hook(
        Constraints, make_dict_unstructure_fn(Constraints, conv, non_retryable=override(omit_if_default=True),
                                              max_recoveries=override(omit_if_default=True)))
    conv.register_unstructure_hook(
        Context, make_dict_unstructure_fn(Context, conv, root=override(omit_if_default=True),
                                          depth=override(omit_if_default=True)))
    return conv


converter = _make_converter()

T = TypeVar("T")


def unstructure(value: Any) -> Any:
    return converter.unstructure(value)


def structure(data: Any, cls: type[T]) -> T:
    """Structure plain data into ``cls``; any mismatch becomes one CodecError."""
    try:
        return converter.structure(data, cls)
    except CodecError:
        raise
    except Exception as exc:
        messages = cattrs.transform_error(exc) if isinstance(exc, cattrs.BaseValidationError) else [str(exc)]
        raise CodecError(f"invalid {cls.__name__}: {'; '.join(messages)}") from None


# -- entry bodies ---------------------------------------------------------------------

_BODY_KEYS = ("v", "seq", "trace", "ts", "node", "policy", "action", "outcome", "prev", "signer")


def encode_body(
    *,
    seq: int,
    trace_id: str,
    timestamp: int,
    origin_node: str,
    policy_ref: str,
    action: Action,
    outcome: dict[str, Any],
    prev: bytes,
    signer: str,
) -> bytes:
    """The bytes that get signed. Keys are written in one fixed order."""
    return packb(
        {
            "v": FORMAT_VERSION,
            "seq": seq,
            "trace": trace_id,
            "ts": timestamp,
            "node": origin_node,
            "policy": policy_ref,
            "action": str(action),
            "outcome": outcome,
            "prev": prev,
            "signer": signer,
        }
    )


def read_back(body: bytes) -> Any:
    """The outcome of a body this process just encoded, exactly as any reader will decode it
    (tuples become lists, nothing aliases the caller's objects). The bytes are our own, so
    the limits of :func:`unpackb` are not re-checked: that keeps it off the per-step cost."""
    try:
        raw = msgpack.unpackb(body, raw=False, strict_map_key=True, ext_hook=_refuse_ext)
    except CodecError:
        raise
    except Exception as exc:
        raise CodecError(f"an entry could not be read back: {type(exc).__name__}: {exc}") from None
    # The same whole-record check a verifier makes (cheap: ~2 us for a typical entry), so
    # nothing is signed that verification would later refuse.
    if len(body) > DEFAULT_LIMITS.max_bytes:
        raise CodecError(f"entry of {len(body)} bytes exceeds the limit of {DEFAULT_LIMITS.max_bytes}")
    check_value(raw, what="entry")
    return raw["outcome"]


def decode_body(body: bytes, signature: bytes, digest: bytes, limits: Limits = DEFAULT_LIMITS) -> Entry:
    """Decode a signed body into an :class:`Entry` (the signature is *not* checked here)."""
    raw = unpackb(body, limits)
    if not isinstance(raw, dict):
        raise CodecError("entry body is not a map")
    version = raw.get("v")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CodecError("entry body has no format version")
    if version > FORMAT_VERSION:
        raise CodecError(f"entry format version {version} is newer than this peo ({FORMAT_VERSION})")
    while version < FORMAT_VERSION:
        upcast = UPCASTERS.get(version)
        if upcast is None:
            raise CodecError(f"no upcaster from entry format version {version}")
        try:
            raw = upcast(raw)
        except CodecError:
            raise
        except Exception as exc:  # an old body the upcaster cannot read is a codec failure
            raise CodecError(f"cannot upcast an entry from version {version}: {type(exc).__name__}: {exc}") from None
        if not isinstance(raw, dict):
            raise CodecError(f"the upcaster from version {version} did not return a map")
        version += 1
        raw["v"] = version
    if set(raw) != set(_BODY_KEYS):
        extra = sorted(set(raw) ^ set(_BODY_KEYS))
        raise CodecError(f"entry body has unexpected or missing fields: {', '.join(extra)}")
    seq, trace, ts = raw["seq"], raw["trace"], raw["ts"]
    node, policy, action, outcome = raw["node"], raw["policy"], raw["action"], raw["outcome"]
    prev, signer = raw["prev"], raw["signer"]
    if not (isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0):
        raise CodecError("entry seq must be a non-negative integer")
    if not (isinstance(ts, int) and not isinstance(ts, bool)):
        raise CodecError("entry timestamp must be an integer")
    for name, value in (("trace", trace), ("node", node), ("policy", policy), ("signer", signer)):
        if not isinstance(value, str):
            raise CodecError(f"entry field {name!r} must be a string")
    if not isinstance(outcome, dict):
        raise CodecError("entry outcome must be a map")
    if not isinstance(prev, bytes) or len(prev) != 32:
        raise CodecError("entry prev must be 32 bytes")
    try:
        act = Action(action)
    except ValueError:
        raise CodecError(f"unknown action {action!r}") from None
    return Entry(
        seq=seq,
        trace_id=trace,
        timestamp=ts,
        origin_node=node,
        policy_ref=policy,
        action=act,
        outcome=outcome,
        prev=prev,
        signer=signer,
        signature=bytes(signature),
        body=bytes(body),
        hash=digest,
    )
