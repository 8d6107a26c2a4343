"""Fixtures for the driver tests: a fake agent on real sockets, drivers as real processes.

The fake agent binds a ROUTER on a random port P and a SUB on P+1, as the real
agent does, and speaks raw frames through the codec. Drivers are started with
``python -m drivers ...`` and killed in teardown whatever happened. Every wait
has a timeout that fails the test.

Test modules use only the fixtures (they import nothing from this directory at
run time), so they work under any pytest ``--import-mode``. Driver processes
load the test forward model as ``toy_world:toy_world`` (this directory is put
on their PYTHONPATH).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

from protocols.codec import decode, encode
from protocols.errors import CodecError
from protocols.messages import Heartbeat, Hello, new_id
from protocols.sockets import configure

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TOY_MODEL = "toy_world:toy_world"
WAIT_S = 10.0  # longest any single expectation may take before the test fails


def free_port() -> int:
    """A TCP port free on loopback right now (for the reactor stream), below the
    ephemeral range so no outgoing connection takes it before the driver binds."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port on loopback in 20000..32000")


@dataclass
class FakeAgent:
    """The agent's side of the bus: ROUTER (commands) on P, SUB (events) on P+1.

    Like the real agent, it reads both sockets all the time (a reader task per
    socket): a bound SUB attaches a new publisher only while its owner is
    processing it, and drivers say hello only once the agent has subscribed.
    """

    router: zmq.asyncio.Socket
    sub: zmq.asyncio.Socket
    port: int
    campaign: str = ""
    seq: int = 0
    replies: list[tuple[bytes, Any]] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    _unread: list[tuple[bytes, Any]] = field(default_factory=list)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    _events: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)

    @property
    def base(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def message(self, kind: type, **fields: Any) -> Any:
        msg = kind(
            msg_id=new_id(),
            source="agent",
            seq=self.seq,
            ts=time.time(),
            campaign=self.campaign,
            **fields,
        )
        self.seq += 1
        return msg

    async def send(self, to: bytes, kind: type, **fields: Any) -> Any:
        msg = self.message(kind, **fields)
        await self.send_raw(to, encode(msg))
        return msg

    async def send_raw(self, to: bytes, frames: list[bytes]) -> None:
        await asyncio.wait_for(self.router.send_multipart([to, *frames]), WAIT_S)

    async def reply(
        self,
        where: Callable[[Any], bool] = lambda m: True,
        *,
        kind: str | None = None,
        source: bytes | None = None,
        timeout: float = WAIT_S,
    ) -> Any:
        """The earliest message from the ROUTER that matches and was not returned before.

        Messages that do not match stay for later calls (an ack from one driver
        is not lost while the test waits for another's); all are in ``replies``.
        """

        def find() -> int | None:
            for i, (ident, msg) in enumerate(self._unread):
                if msg is None or (source is not None and ident != source):
                    continue
                if (kind is None or msg.kind == kind) and where(msg):
                    return i
            return None

        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: find() is not None)
            i = find()
            assert i is not None
            return self._unread.pop(i)[1]

    async def event(
        self,
        where: Callable[[Any], bool] = lambda m: True,
        *,
        kind: str | None = None,
        timeout: float = WAIT_S,
    ) -> Any:
        """The next published message that matches, skipping the rest (a stream).

        All are kept in ``events``.
        """
        async with asyncio.timeout(timeout):
            while True:
                msg = await self._events.get()
                if msg is not None and (kind is None or msg.kind == kind) and where(msg):
                    return msg

    async def greet(self, name: bytes) -> Hello:
        """Wait for ``name``'s hello and answer it with a heartbeat (the link is up)."""
        hello = await self.reply(kind="hello", source=name)
        await self.send(name, Heartbeat)
        return hello

    async def read_router(self) -> None:
        while True:
            ident, *frames = await self.router.recv_multipart()
            item = (ident, _decode(frames))
            self.replies.append(item)
            async with self._arrived:
                self._unread.append(item)
                self._arrived.notify_all()

    async def read_sub(self) -> None:
        while True:
            msg = _decode(await self.sub.recv_multipart())
            if msg is not None:
                self.events.append(msg)
            self._events.put_nowait(msg)


def _decode(frames: list[bytes]) -> Any:
    try:
        return decode(frames)
    except CodecError:
        return None


@pytest.fixture
async def agent() -> AsyncIterator[FakeAgent]:
    ctx = zmq.asyncio.Context()
    router = sub = None
    readers: list[asyncio.Task[None]] = []
    try:
        for _ in range(50):
            router = configure(ctx.socket(zmq.ROUTER))
            router.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted driver takes its identity back
            port = router.bind_to_random_port("tcp://127.0.0.1", min_port=20000, max_port=59000)
            sub = configure(ctx.socket(zmq.SUB))
            try:
                sub.bind(f"tcp://127.0.0.1:{port + 1}")
            except zmq.ZMQError:
                router.close()
                sub.close()
                router = sub = None
                continue
            break
        assert router is not None and sub is not None, "no free pair of ports"
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        fake = FakeAgent(router=router, sub=sub, port=port)
        readers = [asyncio.create_task(fake.read_router()), asyncio.create_task(fake.read_sub())]
        yield fake
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for sock in (router, sub):
            if sock is not None:
                sock.close(linger=0)
        ctx.term()


@dataclass
class DriverProcess:
    """A driver started as ``python -m drivers ROLE ...``; stderr goes to ``log_path``."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    def records(self) -> list[dict[str, Any]]:
        """The JSON log records written so far."""
        out = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    async def wait(self, timeout: float = WAIT_S) -> int:
        """Wait for the process to exit; its exit code (fails the test on timeout)."""
        return await asyncio.wait_for(asyncio.to_thread(self.proc.wait, timeout), timeout + 1)

    async def terminate(self, timeout: float = WAIT_S) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return await self.wait(timeout)


StartDriver = Callable[..., DriverProcess]


@pytest.fixture(scope="session")
def toy_world() -> Any:
    """The test forward model's module (tests/drivers/toy_world.py), imported by path."""
    spec = importlib.util.spec_from_file_location("drivers_tests_toy_world", HERE / "toy_world.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def reactor() -> str:
    """A free loopback endpoint for the pump's reactor stream."""
    return f"tcp://127.0.0.1:{free_port()}"


@pytest.fixture
def start_driver(tmp_path: Path) -> Iterator[StartDriver]:
    """Start a driver process: ``start_driver("pump", "--connect", base, ...)``."""
    procs: list[DriverProcess] = []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HERE), env.get("PYTHONPATH", "")])

    def start(role: str, *args: str) -> DriverProcess:
        log_path = tmp_path / f"{role}-{len(procs)}.log"
        with log_path.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "drivers", role, *args],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        driver = DriverProcess(proc, log_path)
        procs.append(driver)
        return driver

    try:
        yield start
    finally:
        for driver in procs:
            if driver.proc.poll() is None:
                driver.proc.kill()
            driver.proc.wait(timeout=10)
