"""Socket conventions: endpoint derivation, loopback detection, real ZeroMQ pairs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
import zmq
import zmq.asyncio

from protocols.codec import DEFAULT_MAX_BYTES, decode, encode
from protocols.messages import Heartbeat, Message, Spectrum
from protocols.schema import example_messages
from protocols.sockets import DEFAULT_BASE, LINGER_MS, Endpoints, configure, is_loopback

TIMEOUT_S = 5.0
#: how long one receive waits before the sender publishes again (slow joiner)
POLL_S = 0.02

# --- Endpoints.from_base ---------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        (
            "tcp://127.0.0.1:6000",
            ("tcp://127.0.0.1:6000", "tcp://127.0.0.1:6001", "tcp://127.0.0.1:6002"),
        ),
        (
            "tcp://localhost:5560",
            ("tcp://localhost:5560", "tcp://localhost:5561", "tcp://localhost:5562"),
        ),
        ("tcp://[::1]:7000", ("tcp://[::1]:7000", "tcp://[::1]:7001", "tcp://[::1]:7002")),
        (
            "tcp://[fe80::1]:7000",
            ("tcp://[fe80::1]:7000", "tcp://[fe80::1]:7001", "tcp://[fe80::1]:7002"),
        ),
        ("tcp://*:5560", ("tcp://*:5560", "tcp://*:5561", "tcp://*:5562")),
        (
            "tcp://lab-pc.local:1",
            ("tcp://lab-pc.local:1", "tcp://lab-pc.local:2", "tcp://lab-pc.local:3"),
        ),
        (
            "tcp://10.0.0.5:65533",
            ("tcp://10.0.0.5:65533", "tcp://10.0.0.5:65534", "tcp://10.0.0.5:65535"),
        ),
    ],
)
def test_endpoints_from_base(base: str, expected: tuple[str, str, str]) -> None:
    endpoints = Endpoints.from_base(base)
    assert (endpoints.commands, endpoints.events, endpoints.status) == expected


def test_default_base_derives() -> None:
    assert Endpoints.from_base(DEFAULT_BASE).commands == DEFAULT_BASE


@pytest.mark.parametrize(
    ("base", "reason"),
    [
        ("", "tcp://HOST:PORT"),
        ("garbage", "tcp://HOST:PORT"),
        ("127.0.0.1:5560", "tcp://HOST:PORT"),
        ("ipc:///tmp/agent", "tcp://HOST:PORT"),
        ("udp://127.0.0.1:5560", "tcp://HOST:PORT"),
        ("tcp://127.0.0.1", "tcp://HOST:PORT"),
        ("tcp://:5560", "tcp://HOST:PORT"),
        ("tcp://127.0.0.1:port", "tcp://HOST:PORT"),
        ("tcp://127.0.0.1:99999", "tcp://HOST:PORT"),
        ("tcp://127.0.0.1:5560/extra", "tcp://HOST:PORT"),
        ("tcp://127.0.0.1:0", "port must be in 1..65533"),
        ("tcp://127.0.0.1:65534", "the agent also uses the next two"),
    ],
)
def test_endpoints_from_bad_base(base: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace(".", r"\.")) as info:
        Endpoints.from_base(base)
    assert repr(base) in str(info.value)


def test_endpoints_are_frozen() -> None:
    endpoints = Endpoints.from_base(DEFAULT_BASE)
    with pytest.raises(AttributeError):
        endpoints.events = "tcp://10.0.0.1:1"  # type: ignore[misc]


# --- is_loopback ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [
        ("tcp://127.0.0.1:5560", True),
        ("tcp://127.1.2.3:5560", True),
        ("tcp://localhost:5560", True),
        ("tcp://LocalHost:5560", True),
        ("tcp://[::1]:5560", True),
        ("tcp://[::ffff:127.0.0.1]:5560", True),
        ("ipc:///tmp/sdl-agent.sock", True),
        ("inproc://events", True),
        ("tcp://10.0.0.5:5560", False),
        ("tcp://192.168.1.20:5560", False),
        ("tcp://0.0.0.0:5560", False),
        ("tcp://*:5560", False),
        ("tcp://[::]:5560", False),
        ("tcp://[fe80::1]:5560", False),
        ("tcp://lab-pc.local:5560", False),
        ("tcp://127.attacker.example:5560", False),
        ("tcp://localhost.attacker.example:5560", False),
        ("tcp://eth0:5560", False),
        ("udp://127.0.0.1:5560", False),
        ("", False),
    ],
)
def test_is_loopback(endpoint: str, loopback: bool) -> None:
    assert is_loopback(endpoint) is loopback


# --- real ZeroMQ sockets -------------------------------------------------------------


@pytest.fixture
def ctx() -> Iterator[zmq.asyncio.Context]:
    context = zmq.asyncio.Context()
    try:
        yield context
    finally:
        context.destroy(linger=0)


def heartbeat(seq: int, state: str) -> Heartbeat:
    return Heartbeat(msg_id=f"hb{seq}", source="pump", seq=seq, ts=1.0, state=state)


def full_spectrum(seq: int) -> Spectrum:
    n = 8192
    return Spectrum(
        msg_id=f"sp{seq}",
        source="pump",
        seq=seq,
        ts=1.0,
        condition="r1-01",
        replicate=0,
        wl_start=200.0,
        wl_step=0.1,
        n_points=n,
        values=[0.123456789] * n,
    )


async def publish_until_received(
    pub: zmq.asyncio.Socket,
    sub: zmq.asyncio.Socket,
    make: Callable[[int], Message],
    first_seq: int,
    received: list[Message],
) -> Message:
    """Publish ``make(seq)`` with rising ``seq`` until one of them arrives.

    PUB drops what it sends before the subscription has reached it (the slow
    joiner), so a single send would race; everything received on the way is
    appended to ``received``. Bounded by the caller's timeout.
    """
    sent: set[int] = set()
    seq = first_seq
    while True:
        msg = make(seq)
        await pub.send_multipart(encode(msg))
        sent.add(seq)
        seq += 1
        try:
            frames = await asyncio.wait_for(sub.recv_multipart(), POLL_S)
        except TimeoutError:
            continue
        got = decode(frames)
        received.append(got)
        if got.seq in sent:
            return got


def test_configure_sets_linger_and_max_size(ctx: zmq.asyncio.Context) -> None:
    sock = ctx.socket(zmq.SUB)
    try:
        assert configure(sock) is sock
        assert sock.getsockopt(zmq.LINGER) == LINGER_MS
        assert sock.getsockopt(zmq.MAXMSGSIZE) == DEFAULT_MAX_BYTES
        configure(sock, max_bytes=1234)
        assert sock.getsockopt(zmq.MAXMSGSIZE) == 1234
    finally:
        sock.close()


async def test_pub_sub_carries_a_valid_message(ctx: zmq.asyncio.Context) -> None:
    sub = configure(ctx.socket(zmq.SUB))
    pub = configure(ctx.socket(zmq.PUB))
    try:
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        port = sub.bind_to_random_port("tcp://127.0.0.1")  # the agent binds its SUB
        pub.connect(f"tcp://127.0.0.1:{port}")  # drivers connect
        received: list[Message] = []
        async with asyncio.timeout(TIMEOUT_S):
            got = await publish_until_received(
                pub, sub, lambda seq: heartbeat(seq, "warmup"), 0, received
            )
            assert got == heartbeat(got.seq, "warmup")
            spectrum = example_messages()["spectrum"]
            await pub.send_multipart(encode(spectrum))
            while (frames := await sub.recv_multipart())[0] != b"spectrum.spectrometer":
                assert decode(frames).kind == "heartbeat"  # late warm-up copies
            assert decode(frames) == spectrum
    finally:
        pub.close()
        sub.close()


async def test_sub_filters_by_topic_prefix(ctx: zmq.asyncio.Context) -> None:
    sub = configure(ctx.socket(zmq.SUB))
    pub = configure(ctx.socket(zmq.PUB))
    try:
        sub.setsockopt(zmq.SUBSCRIBE, b"heartbeat.")
        port = sub.bind_to_random_port("tcp://127.0.0.1")
        pub.connect(f"tcp://127.0.0.1:{port}")
        async with asyncio.timeout(TIMEOUT_S):
            await publish_until_received(pub, sub, lambda seq: heartbeat(seq, "a"), 0, [])
            await pub.send_multipart(encode(example_messages()["spectrum"]))
            last = heartbeat(10_000, "last")
            await pub.send_multipart(encode(last))
            while (got := decode(await sub.recv_multipart())) != last:
                assert got.kind == "heartbeat"
    finally:
        pub.close()
        sub.close()


@pytest.mark.parametrize(
    ("max_bytes", "delivered"),
    [(4096, False), (DEFAULT_MAX_BYTES, True)],
    ids=["over-limit-dropped", "under-limit-delivered"],
)
async def test_zeromq_drops_a_message_over_the_max_size(
    ctx: zmq.asyncio.Context, max_bytes: int, delivered: bool
) -> None:
    """ZeroMQ checks MAXMSGSIZE per frame and drops the sender's connection.

    The driver's PUB reconnects by itself, so the next small message still
    arrives; the oversized one never does.
    """
    sub = configure(ctx.socket(zmq.SUB), max_bytes=max_bytes)
    pub = configure(ctx.socket(zmq.PUB))
    try:
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        port = sub.bind_to_random_port("tcp://127.0.0.1")
        pub.connect(f"tcp://127.0.0.1:{port}")
        big = full_spectrum(seq=1_000)
        assert len(encode(big)[2]) > 4096  # the values frame: 8 bytes a point
        received: list[Message] = []
        async with asyncio.timeout(TIMEOUT_S):
            await publish_until_received(
                pub, sub, lambda seq: heartbeat(seq, "warmup"), 0, received
            )
            await pub.send_multipart(encode(big))
            after = await publish_until_received(
                pub, sub, lambda seq: heartbeat(seq, "after"), 2_000, received
            )
        assert after.kind == "heartbeat"
        assert after.state == "after"
        assert (big in received) is delivered
        assert all(m.kind == "heartbeat" for m in received if m != big)
    finally:
        pub.close()
        sub.close()


async def test_router_dealer_routes_by_source_identity(ctx: zmq.asyncio.Context) -> None:
    router = configure(ctx.socket(zmq.ROUTER))  # the agent's commands socket
    dealer = configure(ctx.socket(zmq.DEALER))  # a driver
    try:
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.setsockopt(zmq.IDENTITY, b"pump")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        examples = example_messages()
        async with asyncio.timeout(TIMEOUT_S):
            await dealer.send_multipart(encode(examples["hello"]))
            identity, *frames = await router.recv_multipart()
            assert identity == b"pump"
            hello = decode(frames)
            assert hello == examples["hello"]
            assert identity.decode() == hello.source
            await router.send_multipart([identity, *encode(examples["setpoint"])])
            assert decode(await dealer.recv_multipart()) == examples["setpoint"]
    finally:
        dealer.close()
        router.close()
