"""The driver runtime: everything a driver does on the wire, none of what it measures.

A driver process is one :class:`DriverRuntime` around one instrument object.
The runtime owns

- the asyncio loop's tasks and SIGINT/SIGTERM (clean shutdown, exit code 0);
- the two sockets: a DEALER to the agent's commands endpoint (identity = the
  driver's name) and an XPUB (a PUB that sees subscriptions) to its events
  endpoint, each owned by one coroutine and numbered by its own sequence
  counter (``seq`` from 0, +1 a message sent);
- hello / heartbeat: a :class:`~protocols.messages.Hello` every heartbeat
  interval until the agent says anything, then heartbeats; after
  ``heartbeat_timeout_s`` of silence it calls the instrument's
  ``on_link_lost`` and goes back to hellos. The first hello waits until the
  agent's SUB has subscribed to the driver's events, so nothing published
  after the agent has seen the hello is lost to the slow-joiner effect; a new
  subscription while linked (an agent restart) brings one hello at once, and
  so does a hello from the agent (it counted the driver down, or restarted);
- command de-duplication: the ack sent for each ``cmd_id`` is kept (bounded
  LRU); a duplicate gets the same answer again without the instrument being
  called;
- rejection of bad input: a ``message_rejected`` log record with ``code`` and
  ``reason``, counted in :attr:`DriverRuntime.rejected`; the driver keeps going.

An instrument only says what it does. It implements :class:`Instrument` and
any of the capabilities :class:`Settable`, :class:`HasSafeState`,
:class:`Acquirable`; command handlers return a :class:`Verdict` promptly and
leave long work (a ramp, a series of droplets) to a task started with
:meth:`Link.spawn`. Measurements go out with :meth:`Link.publish`.

>>> class Lamp:
...     role = "spectrometer"
...     instrument = "a lamp that accepts every acquire"
...     async def start(self, link): self.link = link
...     async def on_link_lost(self): pass
...     async def stop(self): pass
...     async def on_acquire(self, msg): return Verdict.accept()
>>> isinstance(Lamp(), Instrument) and isinstance(Lamp(), Acquirable)
True
>>> # asyncio.run(DriverRuntime(Lamp(), RuntimeSettings(connect="tcp://127.0.0.1:5560")).run())
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import structlog
import zmq
import zmq.asyncio
from pydantic import BaseModel, ValidationError

from drivers.inject import FaultInjector, FaultPlan
from protocols.codec import DEFAULT_MAX_BYTES, decode, encode
from protocols.errors import CodecError
from protocols.messages import (
    Acquire,
    AcquireAck,
    Fault,
    Heartbeat,
    Hello,
    Role,
    SafeState,
    Setpoint,
    SetpointAck,
    new_id,
)
from protocols.security import CurveClient
from protocols.sockets import DEFAULT_BASE, Endpoints, configure

__all__ = [
    "AckMemory",
    "Acquirable",
    "DriverRuntime",
    "HasSafeState",
    "Instrument",
    "Link",
    "RuntimeSettings",
    "Settable",
    "StoredAck",
    "Verdict",
    "run_driver",
]

log = structlog.get_logger("drivers.runtime")

_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


# --- what a driver returns and what it may call --------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """An instrument's answer to a command: accepted, or refused with a reason.

    >>> Verdict.refuse("agno3: 900 uL/min is above its hard limit 800").accepted
    False
    """

    accepted: bool
    reason: str = ""

    @classmethod
    def accept(cls, reason: str = "") -> Verdict:
        return cls(True, reason)

    @classmethod
    def refuse(cls, reason: str) -> Verdict:
        return cls(False, reason)


@runtime_checkable
class Link(Protocol):
    """What the runtime offers an instrument (implemented by :class:`DriverRuntime`)."""

    @property
    def name(self) -> str:
        """The driver's name on the wire (``source`` of its messages)."""
        ...

    @property
    def context(self) -> zmq.asyncio.Context:
        """The process's ZeroMQ context, for an instrument's own extra sockets."""
        ...

    def publish(self, kind: type[BaseModel], /, **fields: Any) -> None:
        """Queue a measurement for the PUB socket; the runtime fills the envelope.

        Raises:
            pydantic.ValidationError: the fields do not make a valid ``kind``.
        """
        ...

    def fault(self, code: str, detail: str = "", severity: str = "error") -> None:
        """Queue a :class:`~protocols.messages.Fault` for the agent (DEALER)."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        """Run ``coro`` as a task the runtime cancels at shutdown and watches for errors."""
        ...


@runtime_checkable
class Instrument(Protocol):
    """Every driver: its role, a description, and its lifecycle hooks."""

    role: Role
    instrument: str

    async def start(self, link: Link) -> None:
        """Called once, before any message is handled; open extra sockets, spawn tasks."""
        ...

    async def on_link_lost(self) -> None:
        """The agent went silent for ``heartbeat_timeout_s``; go to a safe state."""
        ...

    async def stop(self) -> None:
        """The process is shutting down; last chance to publish (best effort)."""
        ...


@runtime_checkable
class Settable(Protocol):
    """An instrument that takes :class:`~protocols.messages.Setpoint` (a pump)."""

    async def on_setpoint(self, msg: Setpoint) -> Verdict: ...


@runtime_checkable
class HasSafeState(Protocol):
    """An instrument that can be put into a safe state on command."""

    async def on_safe_state(self, msg: SafeState) -> Verdict: ...


@runtime_checkable
class Acquirable(Protocol):
    """An instrument that measures on :class:`~protocols.messages.Acquire`."""

    async def on_acquire(self, msg: Acquire) -> Verdict: ...


# --- settings and the ack memory ------------------------------------------------


@dataclass(frozen=True)
class RuntimeSettings:
    """How a driver process talks to the agent.

    Attributes:
        connect: the agent's base endpoint ``tcp://HOST:P`` (commands P, events P+1).
        name: the driver's name on the wire and its DEALER identity ("" = its role).
        heartbeat_s: seconds between hellos / heartbeats.
        heartbeat_timeout_s: silence from the agent after which the link is lost.
        command_timeout_s: longest an instrument's command handler may take.
        send_timeout_s: longest a message waits for the agent's connection (then dropped).
        ack_memory: how many answered ``cmd_id`` are remembered for duplicates.
        max_bytes: largest message accepted (all frames).
        shutdown_linger_ms: linger when closing sockets at shutdown, for the last messages.
        faults: faults to inject into this driver's own traffic (tests only; see
            :mod:`drivers.inject`); None injects nothing.
        curve: CURVE client keys (own pair, the agent's public key); None: plain text.
    """

    connect: str = DEFAULT_BASE
    name: str = ""
    heartbeat_s: float = 0.5
    heartbeat_timeout_s: float = 5.0
    command_timeout_s: float = 5.0
    send_timeout_s: float = 1.0
    ack_memory: int = 10_000
    max_bytes: int = DEFAULT_MAX_BYTES
    shutdown_linger_ms: int = 200
    faults: FaultPlan | None = None
    curve: CurveClient | None = None

    def __post_init__(self) -> None:
        if self.name and not _NAME.match(self.name):
            raise ValueError(f"driver name must match {_NAME.pattern}, got {self.name!r}")
        if self.heartbeat_s <= 0 or self.heartbeat_timeout_s <= 0:
            raise ValueError("heartbeat interval and timeout must be positive")
        if self.heartbeat_timeout_s <= self.heartbeat_s:
            raise ValueError("heartbeat timeout must be longer than the heartbeat interval")
        if self.command_timeout_s <= 0 or self.send_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if self.ack_memory < 1:
            raise ValueError("ack_memory must be at least 1")
        Endpoints.from_base(self.connect)  # raises ValueError on a bad endpoint


@dataclass(frozen=True, slots=True)
class StoredAck:
    """The ack sent for one ``cmd_id``; re-sent verbatim (new envelope) on a duplicate."""

    kind: type[SetpointAck] | type[AcquireAck]
    cmd_id: str
    accepted: bool
    reason: str


class AckMemory:
    """Bounded LRU of the acks sent, by ``cmd_id``.

    >>> mem = AckMemory(capacity=2)
    >>> for c in ("a", "b", "c"):
    ...     mem.put(StoredAck(SetpointAck, c, True, ""))
    >>> "a" in mem, "c" in mem, len(mem)
    (False, True, 2)
    """

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._acks: OrderedDict[str, StoredAck] = OrderedDict()

    def get(self, cmd_id: str) -> StoredAck | None:
        ack = self._acks.get(cmd_id)
        if ack is not None:
            self._acks.move_to_end(cmd_id)
        return ack

    def put(self, ack: StoredAck) -> None:
        self._acks[ack.cmd_id] = ack
        self._acks.move_to_end(ack.cmd_id)
        while len(self._acks) > self.capacity:
            self._acks.popitem(last=False)

    def __contains__(self, cmd_id: object) -> bool:
        return cmd_id in self._acks

    def __len__(self) -> int:
        return len(self._acks)


# --- the runtime -----------------------------------------------------------------


_QUEUE_MAX = 10_000
_HOOK_TIMEOUT_S = 5.0
_DRAIN_TIMEOUT_S = 0.5


class DriverRuntime:
    """Runs one instrument as a driver process on the agent's bus.

    Implements :class:`Link` for the instrument. Use :meth:`run` (or
    :func:`run_driver`); :meth:`request_stop` ends it from inside the loop.

    Attributes:
        session: fresh id per process start, sent in every hello.
        campaign: the campaign id last seen from the agent ("" before any).
        rejected: count of rejected inbound messages by reason code.
        duplicates: count of duplicate commands answered from the ack memory.
    """

    def __init__(
        self,
        instrument: Instrument,
        settings: RuntimeSettings | None = None,
        *,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        if not isinstance(instrument, Instrument):
            raise TypeError(f"{instrument!r} does not implement drivers.runtime.Instrument")
        self.instrument = instrument
        self.settings = settings or RuntimeSettings()
        self._name = self.settings.name or instrument.role
        self._ctx = context or zmq.asyncio.Context()
        self._own_ctx = context is None
        self.session = new_id()
        self.campaign = ""
        self.rejected: Counter[str] = Counter()
        self.duplicates = 0
        self._acks = AckMemory(self.settings.ack_memory)
        self._outbox: asyncio.Queue[BaseModel] = asyncio.Queue(_QUEUE_MAX)
        self._events: asyncio.Queue[BaseModel] = asyncio.Queue(_QUEUE_MAX)
        self._dealer_seq = 0
        self._pub_seq = 0
        self._linked = False
        self._last_heard = 0.0
        self._beat_pending = False
        self._subscribed = False
        # a new session always begins with a hello, even when the agent spoke first
        # (a restart within the agent's heartbeat timeout: it must see the new session)
        self._greet = True
        self._stop = asyncio.Event()
        self._spawned: set[asyncio.Task[None]] = set()
        plan = self.settings.faults
        self.faults = FaultInjector(plan) if plan is not None and plan.active else None

    # -- Link --------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def context(self) -> zmq.asyncio.Context:
        return self._ctx

    @property
    def linked(self) -> bool:
        """True while the agent has been heard from within the heartbeat timeout."""
        return self._linked

    def publish(self, kind: type[BaseModel], /, **fields: Any) -> None:
        self._queue(self._events, kind(**self._envelope(), **fields), "publish_dropped")

    def fault(self, code: str, detail: str = "", severity: str = "error") -> None:
        log.warning("fault_reported", code=code, detail=detail, severity=severity)
        self._to_agent(Fault, code=code, detail=detail[:2000], severity=severity)

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._spawned.add(task)
        task.add_done_callback(self._task_done)
        return task

    def request_stop(self) -> None:
        """Ask :meth:`run` to shut down cleanly."""
        self._stop.set()

    # -- the process ---------------------------------------------------------------

    async def run(self) -> int:
        """Connect, serve until SIGINT/SIGTERM or :meth:`request_stop`; return an exit code.

        Returns:
            0 after a clean shutdown, 2 if the instrument failed to start,
            1 if one of the runtime's own loops failed.
        """
        loop = asyncio.get_running_loop()
        endpoints = Endpoints.from_base(self.settings.connect)
        signals = self._install_signal_handlers(loop)
        dealer: zmq.asyncio.Socket | None = None
        pub: zmq.asyncio.Socket | None = None
        core: list[asyncio.Task[None]] = []
        code = 0
        structlog.contextvars.bind_contextvars(source=self._name, role=self.instrument.role)
        try:
            dealer = configure(self._ctx.socket(zmq.DEALER), max_bytes=self.settings.max_bytes)
            dealer.setsockopt(zmq.IDENTITY, self._name.encode("ascii"))
            dealer.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing for an agent that is not there
            if self.settings.curve is not None:
                self.settings.curve.apply(dealer)
            dealer.connect(endpoints.commands)
            pub = configure(self._ctx.socket(zmq.XPUB), max_bytes=self.settings.max_bytes)
            pub.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every subscription, repeats too
            if self.settings.curve is not None:
                self.settings.curve.apply(pub)
            pub.connect(endpoints.events)
            log.info(
                "driver_started",
                session=self.session,
                instrument=self.instrument.instrument,
                commands=endpoints.commands,
                events=endpoints.events,
                curve=self.settings.curve is not None,
            )
            try:
                await asyncio.wait_for(self.instrument.start(self), _HOOK_TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("driver_start_failed", error=repr(exc), exc_info=True)
                code = 2
                return code
            core = [
                loop.create_task(self._command_loop(dealer), name="commands"),
                loop.create_task(self._event_loop(pub), name="events"),
                loop.create_task(self._liveness_loop(), name="liveness"),
            ]
            stop = loop.create_task(self._stop.wait(), name="stop")
            done, _ = await asyncio.wait([*core, stop], return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            for task in done:
                if task is not stop and not task.cancelled() and task.exception() is not None:
                    log.error(
                        "runtime_loop_failed", loop=task.get_name(), error=repr(task.exception())
                    )
                    code = 1
            await self._call_hook(self.instrument.stop(), "stop")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._events.join(), _DRAIN_TIMEOUT_S)
        finally:
            await _cancel_all([*core, *self._spawned])
            for sock in (dealer, pub):
                if sock is not None:
                    sock.close(linger=self.settings.shutdown_linger_ms)
            for sig in signals:
                loop.remove_signal_handler(sig)
            if self._own_ctx:
                # destroy, not term: it also closes any socket an instrument left open
                self._ctx.destroy(linger=self.settings.shutdown_linger_ms)
            log.info(
                "driver_stopped",
                exit_code=code,
                rejected=dict(self.rejected),
                duplicates=self.duplicates,
                **({"faults": dict(self.faults.counts)} if self.faults is not None else {}),
            )
        return code

    # -- the DEALER: commands in, hellos/heartbeats/acks/faults out ------------------

    async def _command_loop(self, sock: zmq.asyncio.Socket) -> None:
        receive = self._on_frames
        if self.faults is not None:
            injector = self.faults

            async def receive(frames: list[bytes]) -> None:
                await injector.receive(frames, self._on_frames, stream="commands")

        await _own_socket(sock, self._outbox, lambda m: self._send(sock, m), receive)

    async def _send(self, sock: zmq.asyncio.Socket, msg: BaseModel) -> None:
        liveness = isinstance(msg, Hello | Heartbeat)
        try:
            stamped = msg.model_copy(update={"seq": self._dealer_seq})
            await asyncio.wait_for(
                self._wire(sock, encode(stamped), "commands", msg), self.settings.send_timeout_s
            )
            self._dealer_seq += 1
        except TimeoutError:
            (log.debug if liveness else log.warning)(
                "send_dropped", kind=getattr(msg, "kind", "?"), reason="agent not connected"
            )
        finally:
            if liveness:
                self._beat_pending = False

    async def _on_frames(self, frames: list[bytes]) -> None:
        try:
            msg = decode(frames, max_bytes=self.settings.max_bytes)
        except CodecError as err:
            self._reject(err.code, str(err), frames=len(frames))
            return
        self._heard(msg)
        if isinstance(msg, Heartbeat):
            return
        if isinstance(msg, Hello):  # the agent does not know us (docs/protocol.md, 7.5)
            log.info("agent_greeted", session=msg.session)
            self._to_agent(
                Hello,
                role=self.instrument.role,
                session=self.session,
                instrument=self.instrument.instrument[:2000],
            )
            return
        if isinstance(msg, Setpoint | SafeState | Acquire):
            await self._on_command(msg)
            return
        self._reject(
            "unexpected_kind", f"a driver does not take {msg.kind!r} messages", kind=msg.kind
        )

    async def _on_command(self, msg: Setpoint | SafeState | Acquire) -> None:
        ack_kind = AcquireAck if isinstance(msg, Acquire) else SetpointAck
        stored = self._acks.get(msg.cmd_id)
        if stored is not None:
            self.duplicates += 1
            log.info(
                "duplicate_command", kind=msg.kind, cmd_id=msg.cmd_id, accepted=stored.accepted
            )
            self._send_ack(stored)
            return
        handler = self._handler_for(msg)
        if handler is None:
            reason = f"{self.instrument.role} {self._name!r} does not handle {msg.kind!r}"
            self._reject("unhandled_kind", reason, kind=msg.kind, cmd_id=msg.cmd_id)
            verdict = Verdict.refuse(reason)
        else:
            verdict = await self._decide(handler, msg)
        stored = StoredAck(ack_kind, msg.cmd_id, verdict.accepted, verdict.reason[:2000])
        self._acks.put(stored)
        log.info(
            "command_answered",
            kind=msg.kind,
            cmd_id=msg.cmd_id,
            condition=getattr(msg, "condition", ""),
            accepted=verdict.accepted,
            reason=verdict.reason,
        )
        self._send_ack(stored)

    def _handler_for(
        self, msg: Setpoint | SafeState | Acquire
    ) -> Callable[[Any], Awaitable[Any]] | None:
        inst = self.instrument
        if isinstance(msg, Setpoint) and isinstance(inst, Settable):
            return inst.on_setpoint
        if isinstance(msg, SafeState) and isinstance(inst, HasSafeState):
            return inst.on_safe_state
        if isinstance(msg, Acquire) and isinstance(inst, Acquirable):
            return inst.on_acquire
        return None

    async def _decide(self, handler: Callable[[Any], Awaitable[Any]], msg: Any) -> Verdict:
        try:
            verdict = await asyncio.wait_for(handler(msg), self.settings.command_timeout_s)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            log.error("command_timed_out", kind=msg.kind, cmd_id=msg.cmd_id)
            return Verdict.refuse(
                f"the driver did not decide within {self.settings.command_timeout_s} s"
            )
        except Exception as exc:
            log.error("command_failed", kind=msg.kind, cmd_id=msg.cmd_id, exc_info=True)
            return Verdict.refuse(f"driver error: {type(exc).__name__}: {exc}")
        if not isinstance(verdict, Verdict):
            log.error("command_failed", kind=msg.kind, cmd_id=msg.cmd_id, returned=repr(verdict))
            return Verdict.refuse("driver error: the handler returned no verdict")
        return verdict

    def _send_ack(self, ack: StoredAck) -> None:
        self._to_agent(ack.kind, cmd_id=ack.cmd_id, accepted=ack.accepted, reason=ack.reason)

    def _to_agent(self, kind: type[BaseModel], /, **fields: Any) -> None:
        self._queue(self._outbox, kind(**self._envelope(), **fields), "send_dropped")

    # -- the PUB: measurements out ------------------------------------------------------

    async def _event_loop(self, sock: zmq.asyncio.Socket) -> None:
        async def publish(msg: BaseModel) -> None:
            try:
                await self._publish_now(sock, msg)
            finally:
                self._events.task_done()

        async def subscription(frames: list[bytes]) -> None:
            self._on_subscription(frames)

        await _own_socket(sock, self._events, publish, subscription)

    async def _publish_now(self, sock: zmq.asyncio.Socket, msg: BaseModel) -> None:
        try:
            stamped = msg.model_copy(update={"seq": self._pub_seq})
            await asyncio.wait_for(
                self._wire(sock, encode(stamped), "events", msg), self.settings.send_timeout_s
            )
            self._pub_seq += 1
        except TimeoutError:
            log.warning("publish_dropped", kind=getattr(msg, "kind", "?"), reason="timeout")

    def _on_subscription(self, frames: list[bytes]) -> None:
        # XPUB: b"\x01<topic>" subscribe, b"\x00<topic>" unsubscribe
        if len(frames) != 1 or frames[0][:1] != b"\x01":
            return
        if not self._subscribed:
            log.info("events_subscribed", topic=frames[0][1:65].decode("ascii", "replace"))
        self._subscribed = True
        if self._linked:
            # a fresh subscriber while linked: the agent may have restarted; say hello now
            self._greet = True

    # -- liveness -----------------------------------------------------------------------

    async def _liveness_loop(self) -> None:
        started = time.monotonic()
        warned = False
        while True:
            if (
                not self._subscribed
                and not warned
                and time.monotonic() - started > self.settings.heartbeat_timeout_s
            ):
                warned = True
                log.warning(
                    "events_not_subscribed",
                    reason="no SUB has subscribed to this driver's events yet; hellos wait for "
                    "one (is the agent up and bound on the events port?)",
                )
            if (
                self._linked
                and time.monotonic() - self._last_heard > self.settings.heartbeat_timeout_s
            ):
                self._linked = False
                log.warning("link_lost", silent_s=round(time.monotonic() - self._last_heard, 3))
                await self._call_hook(self.instrument.on_link_lost(), "on_link_lost")
            if not self._beat_pending and self._subscribed:
                self._beat_pending = True
                if self._linked and not self._greet:
                    self._to_agent(Heartbeat, state="ok")
                else:
                    self._greet = False
                    self._to_agent(
                        Hello,
                        role=self.instrument.role,
                        session=self.session,
                        instrument=self.instrument.instrument[:2000],
                    )
            await asyncio.sleep(self.settings.heartbeat_s)

    def _heard(self, msg: Any) -> None:
        self._last_heard = time.monotonic()
        if msg.campaign and msg.campaign != self.campaign:
            self.campaign = msg.campaign
            structlog.contextvars.bind_contextvars(campaign=msg.campaign)
            log.info("campaign_joined", campaign=msg.campaign)
        if not self._linked:
            self._linked = True
            log.info("link_up", first_kind=msg.kind)

    # -- helpers ------------------------------------------------------------------------

    async def _wire(
        self, sock: zmq.asyncio.Socket, frames: list[bytes], stream: str, msg: BaseModel
    ) -> None:
        """Send ``frames`` on ``sock``; through the fault injector when there is one."""
        if self.faults is None:
            await sock.send_multipart(frames)
            return
        await self.faults.send(
            frames, sock.send_multipart, stream=stream, kind=getattr(msg, "kind", "?")
        )

    def _envelope(self) -> dict[str, Any]:
        return {
            "msg_id": new_id(),
            "source": self._name,
            "seq": 0,  # stamped by the socket's owner when sent
            "ts": time.time(),
            "campaign": self.campaign,
        }

    def _queue(self, queue: asyncio.Queue[BaseModel], msg: BaseModel, event: str) -> None:
        try:
            queue.put_nowait(msg)
        except asyncio.QueueFull:
            log.warning(event, kind=getattr(msg, "kind", "?"), reason="queue full")
            if isinstance(msg, Hello | Heartbeat):
                self._beat_pending = False

    def _reject(self, code: str, reason: str, **fields: Any) -> None:
        self.rejected[code] += 1
        log.warning("message_rejected", code=code, reason=reason, **fields)

    async def _call_hook(self, hook: Coroutine[Any, Any, None], name: str) -> None:
        try:
            await asyncio.wait_for(hook, _HOOK_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.error("instrument_hook_failed", hook=name, exc_info=True)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._spawned.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("task_failed", task=task.get_name(), error=repr(exc), exc_info=exc)
        with contextlib.suppress(ValidationError):
            self.fault("task_failed", f"{task.get_name()}: {exc!r}")

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> list[signal.Signals]:
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                continue
            installed.append(sig)
        return installed

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("signal_received", signal=sig.name)
        self._stop.set()


def run_driver(instrument: Instrument, settings: RuntimeSettings) -> int:
    """Run ``instrument`` as a driver process until a signal; return the exit code."""

    async def _main() -> int:
        return await DriverRuntime(instrument, settings).run()

    return asyncio.run(_main())


async def _own_socket(
    sock: zmq.asyncio.Socket,
    outbox: asyncio.Queue[BaseModel],
    send: Callable[[BaseModel], Awaitable[None]],
    receive: Callable[[list[bytes]], Awaitable[None]],
) -> None:
    """The one coroutine that owns ``sock``: sends what ``outbox`` yields, hands on what arrives."""
    recv: asyncio.Future[list[bytes]] | None = None
    get: asyncio.Future[BaseModel] | None = None
    try:
        while True:
            if recv is None:
                recv = asyncio.ensure_future(sock.recv_multipart())
            if get is None:
                get = asyncio.ensure_future(outbox.get())
            done, _ = await asyncio.wait({recv, get}, return_when=asyncio.FIRST_COMPLETED)
            if get in done:
                msg, get = get.result(), None
                await send(msg)
            if recv in done:
                frames, recv = recv.result(), None
                await receive(frames)
    finally:
        for fut in (recv, get):
            if fut is not None:
                fut.cancel()


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=_HOOK_TIMEOUT_S)
