"""The agent's side of CURVE: server keys, the allow-list (ZAP), denials logged.

When ``[security]`` is configured, every socket the agent binds (commands
ROUTER, events SUB, status PUB) is a CURVE server with the agent's key pair,
and pyzmq's :class:`~zmq.auth.asyncio.AsyncioAuthenticator` answers the ZAP
requests of the process's context: a client whose public key is not in the
allow-list is refused before any of its messages reaches the socket.

Every refused attempt is a structlog record, throttled so that a peer
reconnecting every 100 ms does not flood the log (the first at once, then at
most one per ``repeat_s`` per peer with the count in between):

- ``auth_denied`` with ``stage="zap"``: the handshake reached ZAP and the
  key is not allowed (``stream``, ``peer`` address, ``mechanism``,
  ``client_key`` in Z85: a public key, ``reason``);
- ``auth_denied`` with ``stage="handshake"``: the handshake failed before
  ZAP, from a socket monitor on each bound socket: a client without CURVE
  (``zmtp_mechanism_mismatch``), a client with the wrong server key
  (``zmtp_cryptographic``), or a peer that hung up mid-handshake
  (``broken off by the peer (EPIPE)``). Which side notices a mechanism
  mismatch first is a race: when the client does, it hangs up and the agent
  sees only the broken-off handshake (so does a client refused by ZAP, after
  its ``stage="zap"`` record). The monitor knows the socket, not the peer's
  address;
- ``auth_denied`` with ``stage="message"``: a message got in under a key
  but names another sender (:class:`KeyBinding`; the runtime also rejects it
  as ``message_rejected``, code ``key_mismatch``).

Each allowed driver key has a name (its file's: ``pump.key`` is ``pump``); the
ZAP handler gives it as the connection's ZAP User-Id, which libzmq attaches to
every message of the connection (``frame.get("User-Id")``), and the agent lets
a message in only if its ``source`` is that name, and a hello only if its
``role`` is too (:func:`key_mismatch`).

See docs/security.md.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from protocols import messages as m
from protocols.security import CurveKeys

__all__ = [
    "STATUS_STREAM",
    "UNNAMED",
    "USER_ID",
    "KeyBinding",
    "ServerSecurity",
    "Throttle",
    "key_mismatch",
]

#: the ZAP domain of the status endpoint, where monitor keys are let in too
STATUS_STREAM = "status"
#: the message property (ZMTP metadata) that holds the ZAP User-Id: the key's name
USER_ID = "User-Id"
#: the User-Id of a key let in without a name (a monitor's): no name on the wire
#: matches it, so nothing such a key sends gets in
UNNAMED = "(unnamed key)"

log = structlog.get_logger("sdl_agent.security")

_HANDSHAKE_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
_PROTOCOL_ERRORS = {
    int(getattr(zmq, n)): n.removeprefix("PROTOCOL_ERROR_").lower()
    for n in dir(zmq)
    if n.startswith("PROTOCOL_ERROR_")
}


@dataclass(frozen=True)
class ServerSecurity:
    """The agent's key pair and the public keys it lets in.

    ``allowed`` keys get in on every endpoint; ``monitors`` only on the status
    endpoint (a ZAP domain per endpoint, ``STATUS_STREAM`` for status).
    ``names`` gives each allowed key the one name it may send as
    (:func:`key_mismatch`); a key without one sends nothing that gets in.
    """

    keys: CurveKeys
    allowed: frozenset[bytes] = field(repr=False)
    repeat_s: float = 10.0
    monitors: frozenset[bytes] = field(default=frozenset(), repr=False)
    names: Mapping[bytes, str] = field(default_factory=dict, repr=False)

    def secure(self, sock: zmq.Socket, stream: str) -> None:
        """Make ``sock`` a CURVE server whose ZAP domain is ``stream``; before ``bind``."""
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.keys.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keys.public)
        sock.setsockopt(zmq.ZAP_DOMAIN, stream.encode())

    def authenticator(
        self, ctx: zmq.asyncio.Context, streams: Iterable[str]
    ) -> AllowListAuthenticator:
        """A started ZAP handler for ``ctx`` that lets in only :attr:`allowed`."""
        auth = AllowListAuthenticator(ctx, Throttle(self.repeat_s), self.names)
        for stream in streams:
            keys = self.allowed | self.monitors if stream == STATUS_STREAM else self.allowed
            auth.configure_curve_callback(stream, credentials_provider=_AllowList(keys))
        auth.start()
        return auth

    def watch(self, sock: zmq.asyncio.Socket, stream: str) -> Coroutine[Any, Any, None]:
        """Log the handshakes that fail on ``sock`` before ZAP sees them (run it as a
        task, until cancelled); the monitor socket is attached at once, before ``bind``."""
        monitor = sock.get_monitor_socket(_HANDSHAKE_EVENTS)
        return self._watch(sock, monitor, stream)

    async def _watch(
        self, sock: zmq.asyncio.Socket, monitor: zmq.asyncio.Socket, stream: str
    ) -> None:
        throttle = Throttle(self.repeat_s)
        try:
            while True:
                event = await recv_monitor_message(monitor)
                reason = _PROTOCOL_ERRORS.get(event["value"], f"error {event['value']}")
                if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                    code = errno.errorcode.get(event["value"], str(event["value"]))
                    reason = f"broken off by the peer ({code})"
                _log_denied(
                    throttle,
                    (stream, reason),
                    stream=stream,
                    stage="handshake",
                    endpoint=_text(event["endpoint"]),
                    reason=reason,
                )
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)


class Throttle:
    """When a repeated record is due: the first at once, then one per ``every_s`` per key.

    >>> t = Throttle(10.0)
    >>> t.due("a", 0.0), t.due("a", 1.0), t.due("a", 2.0), t.due("a", 11.0)
    (0, None, None, 2)
    """

    def __init__(self, every_s: float, max_keys: int = 1024) -> None:
        self.every_s = every_s
        self.max_keys = max_keys
        self._last: dict[Any, tuple[float, int]] = {}

    def due(self, key: Any, now: float) -> int | None:
        """None to stay quiet; else the number of repeats not logged since the last one."""
        last = self._last.get(key)
        if last is not None and now - last[0] < self.every_s:
            self._last[key] = (last[0], last[1] + 1)
            return None
        if last is None and len(self._last) >= self.max_keys:
            self._last.clear()  # bounded memory: a flood of keys gets logged again
        self._last[key] = (now, 0)
        return 0 if last is None else last[1]


def _log_denied(throttle: Throttle, key: Any, **fields: Any) -> None:
    """Log ``auth_denied`` with ``fields`` and the repeats since the last record
    for ``key``, unless ``throttle`` says it is not due yet."""
    repeats = throttle.due(key, time.monotonic())
    if repeats is not None:
        log.warning("auth_denied", **fields, repeats=repeats)


class AllowListAuthenticator(AsyncioAuthenticator):
    """pyzmq's ZAP handler, which also logs every refusal as ``auth_denied`` and
    gives each key let in its name as the connection's User-Id."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        throttle: Throttle,
        names: Mapping[bytes, str] | None = None,
    ) -> None:
        super().__init__(ctx)
        self._throttle = throttle
        self._names = names or {}
        self._request: list[bytes] = []

    def curve_user_id(self, client_public_key: bytes) -> str:
        """The name of the key (``client_public_key`` raw, 32 bytes), or :data:`UNNAMED`."""
        return self._names.get(z85.encode(client_public_key), UNNAMED)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self._request = msg
        try:
            await super().handle_zap_message(msg)
        finally:
            self._request = []

    def _send_zap_reply(
        self,
        request_id: bytes,
        status_code: bytes,
        status_text: bytes,
        user_id: str = "anonymous",
    ) -> None:
        super()._send_zap_reply(request_id, status_code, status_text, user_id)
        if status_code == b"200":
            return
        # ZAP request: version, request id, domain, address, identity, mechanism, credentials
        msg = self._request
        stream = _text(msg[2]) if len(msg) > 2 else ""
        peer = _text(msg[3]) if len(msg) > 3 else ""
        mechanism = _text(msg[5]) if len(msg) > 5 else ""
        key = msg[6] if mechanism == "CURVE" and len(msg) == 7 and len(msg[6]) == 32 else b""
        client_key = z85.encode(key).decode() if key else ""
        _log_denied(
            self._throttle,
            (stream, peer, client_key),
            stream=stream,
            stage="zap",
            peer=peer,
            mechanism=mechanism,
            client_key=client_key,
            reason=_text(status_text),
        )


class KeyBinding:
    """Refuses, and logs, a message whose sender is not the name of its key.

    ``refusal`` is called for every message that arrived over CURVE, with the
    connection's User-Id; the ``auth_denied`` records (``stage="message"``) are
    throttled per (stream, key name, claimed source) like the handshake's.
    """

    def __init__(self, repeat_s: float = 10.0) -> None:
        self._throttle = Throttle(repeat_s)

    def refusal(self, name: str, msg: m.Message, stream: str) -> str | None:
        """None if the key named ``name`` may send ``msg``; else why not (logged)."""
        why = key_mismatch(name, msg)
        if why is None:
            return None
        _log_denied(
            self._throttle,
            (stream, name, msg.source),
            stream=stream,
            stage="message",
            key_name=name,
            kind=msg.kind,
            source=msg.source,
            reason=why,
        )
        return why


def key_mismatch(name: str, msg: m.Message) -> str | None:
    """Why a key named ``name`` may not send ``msg``, or None if it may.

    A key sends only as its name: ``source`` must be the name, and a hello
    must claim it as its ``role`` too (the agent sends each role's commands to
    the driver whose hello claimed it).

    >>> hello = m.Hello(msg_id="1", source="pump", seq=0, ts=0.0, role="pump", session="s")
    >>> key_mismatch("pump", hello) is None
    True
    >>> key_mismatch("spectrometer", hello)
    "the key of 'spectrometer' may not send as 'pump'"
    """
    if msg.source != name:
        return f"the key of {name!r} may not send as {msg.source!r}"
    if type(msg) is m.Hello and msg.role != name:
        return f"the key of {name!r} may not say hello as the {msg.role!r} role"
    return None


class _AllowList:
    """A ZAP credentials provider: is this Z85 public key in the set?"""

    def __init__(self, allowed: frozenset[bytes]) -> None:
        self._allowed = allowed

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self._allowed


def _text(raw: bytes | str) -> str:
    if isinstance(raw, str):
        return raw[:200]
    return raw[:200].decode("utf-8", "replace")
