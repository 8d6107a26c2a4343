"""The wire contract between the agent and the instrument drivers."""

from __future__ import annotations

from protocols.codec import DEFAULT_MAX_BYTES, decode, encode, topic_of
from protocols.errors import CodecError, ProtocolError
from protocols.messages import MESSAGE_ADAPTER, SCHEMA_VERSION, Message, new_id

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MESSAGE_ADAPTER",
    "SCHEMA_VERSION",
    "CodecError",
    "Message",
    "ProtocolError",
    "decode",
    "encode",
    "new_id",
    "topic_of",
]
