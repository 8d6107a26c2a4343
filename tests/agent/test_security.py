"""The agent's side of CURVE: a key's name as its ZAP User-Id, and a message's
sender checked against it (agent/security.py). Real sockets on random ports."""

from __future__ import annotations

import asyncio
import time

import pytest
import zmq
import zmq.asyncio
from structlog.testing import capture_logs

from agent.security import UNNAMED, USER_ID, KeyBinding, ServerSecurity, key_mismatch
from protocols import messages as m
from protocols.security import CurveKeys

TIMEOUT_S = 10.0


def _env(source: str) -> dict[str, object]:
    return {"msg_id": m.new_id(), "source": source, "seq": 0, "ts": time.time()}


def _hello(source: str, role: str) -> m.Hello:
    return m.Hello(role=role, session="s1", **_env(source))


def _spectrum(source: str) -> m.Spectrum:
    return m.Spectrum(
        condition="r01-c01",
        replicate=0,
        wl_start=380.0,
        wl_step=1.0,
        n_points=2,
        values=[0.1, 0.2],
        **_env(source),
    )


@pytest.mark.parametrize(
    ("key", "msg", "why"),
    [
        ("pump", _hello("pump", "pump"), None),
        ("pump", m.SetpointAck(cmd_id="c1", accepted=True, **_env("pump")), None),
        ("spectrometer", _spectrum("spectrometer"), None),
        ("spectrometer", _spectrum("pump"), "the key of 'spectrometer' may not send as 'pump'"),
        ("spectrometer", _hello("pump", "pump"), "may not send as 'pump'"),
        (
            "spectrometer",
            _hello("spectrometer", "pump"),
            "the key of 'spectrometer' may not say hello as the 'pump' role",
        ),
        (
            "spectrometer",
            m.SetpointAck(cmd_id="c1", accepted=True, **_env("pump")),
            "may not send as 'pump'",
        ),
        ("xrd", m.Heartbeat(**_env("xrd")), None),
        (UNNAMED, m.Heartbeat(**_env("xrd")), "may not send as 'xrd'"),
    ],
)
def test_a_key_sends_only_as_its_name_and_says_hello_only_in_its_role(key, msg, why):
    got = key_mismatch(key, msg)
    assert got is None if why is None else why in (got or "")
    binding = KeyBinding(repeat_s=10.0)
    with capture_logs() as logs:
        for _ in range(3):  # the security record is throttled, the refusal is not
            assert binding.refusal(key, msg, "events") == got
    expected = (
        []
        if got is None
        else [
            {
                "event": "auth_denied",
                "log_level": "warning",
                "stream": "events",
                "stage": "message",
                "key_name": key,
                "kind": msg.kind,
                "source": msg.source,
                "reason": got,
                "repeats": 0,
            }
        ]
    )
    assert logs == expected


async def test_the_zap_user_id_of_a_connection_is_its_keys_name():
    """Through real CURVE handshakes: each named key's messages carry its name,
    on a ROUTER and a SUB; an allowed key without a name carries UNNAMED."""
    agent, pump, spare = CurveKeys.generate(), CurveKeys.generate(), CurveKeys.generate()
    security = ServerSecurity(
        agent, frozenset({pump.public, spare.public}), names={pump.public: "pump"}
    )
    ctx = zmq.asyncio.Context()
    sockets: list[zmq.asyncio.Socket] = []
    auth = security.authenticator(ctx, ["commands", "events"])
    try:
        for stream, server_kind, client_kind in (
            ("commands", zmq.ROUTER, zmq.DEALER),
            ("events", zmq.SUB, zmq.PUB),
        ):
            server = ctx.socket(server_kind)
            sockets.append(server)
            server.setsockopt(zmq.LINGER, 0)
            if server_kind == zmq.SUB:
                server.setsockopt(zmq.SUBSCRIBE, b"")
            security.secure(server, stream)
            port = server.bind_to_random_port("tcp://127.0.0.1")
            for keys, name in ((pump, "pump"), (spare, UNNAMED)):
                client = ctx.socket(client_kind)
                sockets.append(client)
                client.setsockopt(zmq.LINGER, 0)
                client.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
                client.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
                client.setsockopt(zmq.CURVE_SERVERKEY, agent.public)
                client.connect(f"tcp://127.0.0.1:{port}")
                frames = await asyncio.wait_for(_send_until_received(client, server), TIMEOUT_S)
                assert [f.get(USER_ID) for f in frames] == [name] * len(frames), stream
                client.close(linger=0)
    finally:
        for s in sockets:
            s.close(linger=0)
        auth.stop()
        ctx.term()


async def _send_until_received(
    client: zmq.asyncio.Socket, server: zmq.asyncio.Socket
) -> list[zmq.Frame]:
    """Send until the server has it (the handshake and, on PUB, the subscription take
    a moment); the caller's timeout bounds it."""
    while True:
        try:
            client.send_multipart([b"topic", b"body"], flags=zmq.NOBLOCK)
        except zmq.Again:  # a DEALER before its handshake ends
            pass
        if await server.poll(timeout=50):
            return await server.recv_multipart(copy=False)
