"""Errors of the wire contract: one base, narrow subclasses, a reason each."""

from __future__ import annotations

__all__ = [
    "CodecError",
    "InvalidMessage",
    "MalformedFrames",
    "NonFiniteValue",
    "OversizedMessage",
    "ProtocolError",
    "TopicMismatch",
    "UnknownKind",
    "UnsupportedVersion",
    "WrongArrayLength",
]


class ProtocolError(Exception):
    """Base of every error raised by :mod:`protocols`."""


class CodecError(ProtocolError):
    """Frames could not be turned into a valid message; ``str(err)`` says why."""

    #: short machine-readable reason, used in logs and counters
    code = "invalid"


class MalformedFrames(CodecError):
    code = "malformed"


class OversizedMessage(CodecError):
    code = "oversized"


class UnknownKind(CodecError):
    code = "unknown_kind"


class UnsupportedVersion(CodecError):
    code = "unsupported_version"


class InvalidMessage(CodecError):
    code = "invalid"


class NonFiniteValue(CodecError):
    code = "non_finite"


class WrongArrayLength(CodecError):
    code = "wrong_length"


class TopicMismatch(CodecError):
    code = "topic_mismatch"
