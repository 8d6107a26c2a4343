"""Frames <-> messages.

Every message travels as two ZeroMQ frames, a spectrum as three::

    frame 0  topic   ASCII  "<kind>.<source>"     e.g. b"spectrum.spectrometer"
    frame 1  body    UTF-8 JSON object, the message's fields (see messages.py)
    frame 2  values  spectrum only: n_points little-endian float64 (8 * n_points bytes)

(over ROUTER/DEALER the routing identity frame comes first and is stripped by
the socket owner before :func:`decode`). The topic lets a SUB socket filter by
kind prefix. A spectrum's values are raw doubles rather than JSON numbers
(schema version 3): no text to parse, read with one ``np.frombuffer``, and the
floats arrive bit for bit. :func:`decode` returns a message or raises a
:class:`CodecError` subclass that says why; nothing else escapes.

>>> from protocols.messages import Heartbeat
>>> frames = encode(Heartbeat(msg_id="1", source="pump", seq=0, ts=0.0))
>>> frames[0]
b'heartbeat.pump'
>>> decode(frames).kind
'heartbeat'
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
from pydantic import ValidationError

from protocols.errors import (
    CodecError,
    InvalidMessage,
    MalformedFrames,
    NonFiniteValue,
    OversizedMessage,
    TopicMismatch,
    UnknownKind,
    UnsupportedVersion,
    WrongArrayLength,
)
from protocols.messages import MESSAGE_ADAPTER, SCHEMA_VERSION, VALUES_DTYPE, Message, Spectrum

__all__ = ["DEFAULT_MAX_BYTES", "decode", "encode", "spectrum_array", "topic_of"]

#: Largest message accepted, all frames together (a 8192-point spectrum is 64 kB
#: of values).
DEFAULT_MAX_BYTES = 1 << 20


def topic_of(msg: Message) -> bytes:
    """The topic frame of ``msg``: ``b"<kind>.<source>"``."""
    return f"{msg.kind}.{msg.source}".encode("ascii")


def encode(msg: Message) -> list[bytes]:
    """Serialise ``msg`` to its frames: topic and body, and a spectrum's values."""
    if isinstance(msg, Spectrum):
        body = msg.__pydantic_serializer__.to_json(msg, exclude=_VALUES)
        return [topic_of(msg), body, msg.values]
    return [topic_of(msg), msg.__pydantic_serializer__.to_json(msg)]


def spectrum_array(msg: Spectrum) -> np.ndarray:
    """A spectrum's values as a read-only float64 array (a view of its bytes, no copy)."""
    return np.frombuffer(msg.values, dtype=VALUES_DTYPE)


def decode(frames: Sequence[bytes], *, max_bytes: int = DEFAULT_MAX_BYTES) -> Message:
    """Parse and validate the frames of one message (two; a spectrum three).

    Raises:
        CodecError: one of its subclasses, whose ``str`` is the reason.
    """
    try:
        count = len(frames)
    except TypeError:
        raise MalformedFrames(f"frames must be a sequence, got {type(frames).__name__}") from None
    if count not in (2, 3):
        raise MalformedFrames(
            f"expected 2 frames (topic, body), or 3 for a spectrum (+ values), got {count}"
        )
    for f in frames:  # a tuple, not ``bytes | ...``: that union is a new object each time
        if not isinstance(f, _FRAME_TYPES):
            raise MalformedFrames("frames must be bytes")
    topic, body = bytes(frames[0]), bytes(frames[1])
    values = frames[2] if count == 3 else None
    size = len(topic) + len(body) + (0 if values is None else len(values))
    if size > max_bytes:
        raise OversizedMessage(f"message of {size} bytes exceeds the limit of {max_bytes}")
    try:
        msg = MESSAGE_ADAPTER.validate_json(body, strict=True, context={"values": values})
    except ValidationError as exc:
        raise _classify(exc, body) from None
    except (ValueError, TypeError) as exc:  # pragma: no cover - defensive
        raise MalformedFrames(f"body is not a message: {exc}") from None
    if values is not None and not isinstance(msg, Spectrum):
        raise MalformedFrames(f"expected 2 frames (topic, body) for a {msg.kind}, got 3")
    if topic != topic_of(msg):
        raise TopicMismatch(f"topic {topic[:80]!r} does not match body ({topic_of(msg)!r})")
    return msg


_VALUES = {"values"}
_FRAME_TYPES = (bytes, bytearray, memoryview)


def _classify(exc: ValidationError, body: bytes) -> CodecError:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0] if errors else {"type": "unknown", "loc": (), "msg": str(exc)}
    etype = first["type"]
    if etype == "json_invalid":
        return MalformedFrames(f"body is not valid JSON: {first['msg']}")
    if etype in ("model_type", "model_attributes_type", "dict_type"):
        return MalformedFrames("body is not a JSON object")
    if etype in ("union_tag_not_found", "union_tag_invalid"):
        # A message of another schema version may have a kind or no kind this side
        # does not know: say so rather than blame the kind.
        version = _peek(body, "v")
        if version is not _ABSENT and not _is_our_version(version):
            return _unsupported(version)
        if etype == "union_tag_not_found":
            return InvalidMessage("body has no 'kind' field")
        return UnknownKind(f"unknown message kind {_peek(body, 'kind')!r}")
    if any(_is_version_loc(e["loc"]) for e in errors):
        return _unsupported(_peek(body, "v"))
    if etype == "values_frame_missing":
        return MalformedFrames(
            f"expected 3 frames for a spectrum (topic, body, values): {first['msg']}"
        )
    if etype == "finite_number" or any(e["type"] == "finite_number" for e in errors):
        bad = next(e for e in errors if e["type"] == "finite_number")
        loc = [*bad["loc"], *([bad["ctx"]["index"]] if "index" in bad.get("ctx", {}) else [])]
        return NonFiniteValue(f"non-finite number at {'.'.join(map(str, loc))}")
    if any(e["type"] == "wrong_length" for e in errors):
        return WrongArrayLength(next(e["msg"] for e in errors if e["type"] == "wrong_length"))
    detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:3])
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return InvalidMessage(f"invalid message: {detail}{more}")


_ABSENT = object()


def _unsupported(version: object) -> UnsupportedVersion:
    shown = None if version is _ABSENT else version
    return UnsupportedVersion(
        f"schema version {shown!r} is not supported (this side speaks {SCHEMA_VERSION})"
    )


def _is_our_version(version: object) -> bool:
    return type(version) is int and version == SCHEMA_VERSION


def _is_version_loc(loc: tuple[int | str, ...]) -> bool:
    # The envelope's ``v`` is ``("v",)`` or ``(<kind>, "v")`` once the union picked a
    # member; deeper locations (a flow channel called "v") are not the version.
    return loc == ("v",) or (len(loc) == 2 and loc[1] == "v")


def _peek(body: bytes, key: str) -> object:
    """``body[key]`` if ``body`` is a JSON object holding ``key``, else ``_ABSENT``."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return _ABSENT
    return obj.get(key, _ABSENT) if isinstance(obj, dict) else _ABSENT
