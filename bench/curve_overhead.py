"""What CURVE costs on the wire: spectra per second over TCP loopback, plain vs CURVE.

A bare pyzmq pair, no agent: a PUB in a separate process sends ``N`` encoded
421-point ``spectrum`` messages (the codec's frames, ~10 kB) back to back to a
SUB in this process that only receives, first in plain text, then with the SUB a
CURVE server behind a ZAP allow-list (``agent.security.ServerSecurity``, as the
agent's events endpoint) and the PUB a CURVE client. Medians over ``--repeats``
runs of each. It bounds what encryption can take from the agent's ingest rate
(``bench/bus_ingest.py``), which spends far more per spectrum on decoding and
filing. Prints a table; writes nothing.

    python bench/curve_overhead.py            # 20000 spectra, 3 repeats
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import time

import zmq
import zmq.asyncio

from agent.security import ServerSecurity
from protocols import messages as m
from protocols.codec import encode
from protocols.security import CurveClient, CurveKeys
from protocols.sockets import configure


def _frames() -> list[bytes]:
    msg = m.Spectrum(
        msg_id=m.new_id(),
        source="spectrometer",
        seq=0,
        ts=time.time(),
        condition="r01-c01",
        replicate=0,
        wl_start=380.0,
        wl_step=1.0,
        n_points=421,
        values=[0.123456789] * 421,
    )
    return encode(msg)


def _publisher(endpoint: str, n: int, curve: CurveClient | None) -> None:
    ctx = zmq.Context()
    pub = configure(ctx.socket(zmq.PUB))
    pub.setsockopt(zmq.SNDHWM, 0)
    if curve is not None:
        curve.apply(pub)
    pub.connect(endpoint)
    frames = _frames()
    time.sleep(0.5)  # a bench, not a test: let the (CURVE) handshake finish first
    for _ in range(n):
        pub.send_multipart(frames)
    pub.close(linger=-1)
    ctx.term()


async def _once(n: int, secure: bool) -> float:
    ctx = zmq.asyncio.Context()
    sub = configure(ctx.socket(zmq.SUB))
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    auth, curve = None, None
    if secure:
        server, client = CurveKeys.generate(), CurveKeys.generate()
        security = ServerSecurity(server, frozenset({client.public}))
        auth = security.authenticator(ctx, ["events"])
        security.secure(sub, "events")
        curve = CurveClient(client, server.public)
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    proc = mp.get_context("spawn").Process(
        target=_publisher, args=(f"tcp://127.0.0.1:{port}", n, curve)
    )
    proc.start()
    await sub.recv_multipart()
    t0 = time.perf_counter()
    for _ in range(n - 1):
        await sub.recv_multipart()
    rate = (n - 1) / (time.perf_counter() - t0)
    proc.join(30)
    sub.close(linger=0)
    if auth is not None:
        auth.stop()
    ctx.term()
    return rate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spectra", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    rates: dict[str, list[float]] = {"plain": [], "curve": []}
    for _ in range(args.repeats):
        for kind in rates:
            rates[kind].append(asyncio.run(_once(args.spectra, kind == "curve")))
    kb = sum(len(f) for f in _frames()) / 1000
    print(f"{args.spectra} spectra of {kb:.1f} kB, median of {args.repeats}")
    print("| transport | spectra/s | MB/s |")
    print("|---|---|---|")
    for kind, r in rates.items():
        med = statistics.median(r)
        print(f"| {kind} | {med:,.0f} | {med * kb / 1000:.0f} |")
    ratio = statistics.median(rates["curve"]) / statistics.median(rates["plain"])
    print(f"CURVE / plain: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
