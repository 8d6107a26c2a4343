"""The asyncio shell around the campaign: sockets, timers, signals, the clock.

It holds no rules of its own: it turns wire messages into core events, feeds
them to :class:`~agent.core.campaign.Campaign`, and carries out the decisions
that come back (send a command, publish a status event, write a log record).

One coroutine owns one socket: ``_commands`` the ROUTER (driver hellos, acks,
heartbeats), ``_events`` the SUB (measurements), and the status PUB is written
only from the event loop's thread: by the code that executes decisions, and by
``_status_ticker``, which publishes a ``campaign_status`` snapshot every
``status_interval`` seconds (also sent at each round change; a
``condition_progress`` follows every replicate filed). Every socket has linger
set and is closed in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pydantic
import structlog
import zmq
import zmq.asyncio

from agent.core.campaign import Campaign, CampaignError
from agent.core.events import (
    AcquireAcked,
    Announce,
    Decision,
    DriverFault,
    DriverUp,
    Event,
    FlowStable,
    Note,
    PhaseLabelIn,
    ProposalFailed,
    ProposalReady,
    RequestProposal,
    SendAcquire,
    SendSafeState,
    SendSetpoint,
    SetpointAcked,
    SpectrumIn,
    Tick,
)
from agent.core.sequence import SequenceTracker
from agent.core.status import campaign_status, condition_progress, filed_with
from agent.core.strategies.base import StrategyError
from agent.journal import Journal, JournalError
from agent.security import STATUS_STREAM, UNNAMED, USER_ID, KeyBinding, ServerSecurity
from protocols import messages as m
from protocols.codec import DEFAULT_MAX_BYTES, decode, encode, spectrum_array
from protocols.errors import CodecError
from protocols.sockets import Endpoints, configure

__all__ = ["AgentRuntime", "Clock", "Counters", "MonotonicClock"]

log = structlog.get_logger("sdl_agent")

_DRIVER_KINDS = {"hello", "heartbeat", "setpoint_ack", "acquire_ack", "fault"}
_MEASUREMENT_KINDS = {"flow_readback", "spectrum", "phase_label", "heartbeat", "fault"}
#: at most this many queued measurement messages handled before yielding to the loop
_EVENTS_BATCH = 64
_NOBLOCK = int(zmq.NOBLOCK)
#: status events after which a fresh campaign_status goes out at once
_ROUND_CHANGES = {"proposal", "round_complete", "campaign_stopped"}


class Clock(Protocol):
    """Where the runtime reads time; injected so tests can drive it."""

    def now(self) -> float: ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()


@dataclass
class Counters:
    """What the runtime counted; exposed for tests, the monitor and benchmarks."""

    received: int = 0
    rejected: int = 0
    rejected_by_code: dict[str, int] = field(default_factory=dict)
    gaps: int = 0
    missing: int = 0
    sent: int = 0


class AgentRuntime:
    """Runs one campaign over the bus until it stops or is told to.

    Args:
        campaign: the core state machine.
        endpoints: where to bind (see :mod:`protocols.sockets`).
        clock: time source for the core (default: monotonic).
        heartbeat_interval: seconds between the agent's heartbeats to drivers.
        tick_interval: seconds between timer checks of the core.
        drain_s: after the campaign stops, how long to wait for the safe-state
            ack and late phase labels before closing.
        on_status: called with every status message published (the demo prints
            progress from it).
        status_interval: seconds between ``campaign_status`` snapshots.
        journal: where every step is written before it is acted on (None: nowhere).
        security: CURVE keys and allow-list; every bound socket is then a CURVE
            server (None: plain text; see :mod:`agent.security`).
    """

    def __init__(
        self,
        campaign: Campaign,
        endpoints: Endpoints,
        *,
        clock: Clock | None = None,
        heartbeat_interval: float = 0.5,
        tick_interval: float = 0.02,
        drain_s: float = 2.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        on_status: Callable[[m.Message], None] | None = None,
        context: zmq.asyncio.Context | None = None,
        journal: Journal | None = None,
        status_interval: float = 2.0,
        security: ServerSecurity | None = None,
    ) -> None:
        self.campaign = campaign
        self.journal = journal
        self.endpoints = endpoints
        self.clock = clock or MonotonicClock()
        self.heartbeat_interval = heartbeat_interval
        self.tick_interval = tick_interval
        self.drain_s = drain_s
        self.max_bytes = max_bytes
        self.on_status = on_status
        self.status_interval = status_interval
        self.security = security
        #: with CURVE, each message's sender is checked against its key's name
        self._binding = KeyBinding(security.repeat_s if security is not None else 10.0)
        self.counters = Counters()
        self.session = m.new_id()
        self._ctx = context or zmq.asyncio.Context.instance()
        self._seq = SequenceTracker()
        self._out_seq: dict[str, int] = {}
        self._identity: dict[str, bytes] = {}  # role -> ROUTER identity
        self._role_of: dict[str, str] = {}  # source -> role
        self._sessions: dict[str, str] = {}  # source -> session of its last hello
        self._stop_requested = asyncio.Event()
        self._stopped = asyncio.Event()
        self._router: zmq.asyncio.Socket | None = None
        self._sub: zmq.asyncio.Socket | None = None
        self._pub: zmq.asyncio.Socket | None = None
        self._pub_out: zmq.Socket | None = None  # the PUB without asyncio's futures
        self._router_plain: zmq.Socket | None = None  # the ROUTER's: see _router_out
        self.bound = asyncio.Event()
        self._changed = asyncio.Event()
        self._proposal_task: asyncio.Task[None] | None = None
        #: condition_progress views held until the end of the drained batch (their rows
        #: committed): the latest one of each condition
        self._held_views: dict[str, dict[str, Any]] = {}

    # ---------------------------------------------------------------- public

    def request_stop(self, reason: str = "operator request") -> None:
        """Ask the campaign to stop (idempotent); the pump is put in its safe state."""
        self._stop_reason = reason
        self._stop_requested.set()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until ``predicate()`` holds, re-checked after every message handled.

        Raises:
            TimeoutError: not within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    async def run(self, *, install_signals: bool = True) -> None:
        """Bind, run until the campaign stops (or a stop is requested), drain, close."""
        structlog.contextvars.bind_contextvars(campaign_id=self.campaign.settings.campaign_id)
        self._router = configure(self._ctx.socket(zmq.ROUTER), max_bytes=self.max_bytes)
        self._sub = configure(self._ctx.socket(zmq.SUB), max_bytes=self.max_bytes)
        self._pub = configure(self._ctx.socket(zmq.PUB), max_bytes=self.max_bytes)
        # sends are non-blocking: a plain socket over the same handle skips the futures
        self._pub_out = zmq.Socket(shadow=self._pub.underlying)
        self._router.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted driver takes its name back
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        sockets = {"commands": self._router, "events": self._sub, STATUS_STREAM: self._pub}
        auth = None
        guards: list[asyncio.Task[None]] = []
        if self.security is not None:  # CURVE servers; ZAP lets in only allowed keys
            auth = self.security.authenticator(self._ctx, sockets)
            for stream, sock in sockets.items():
                self.security.secure(sock, stream)
                guards.append(asyncio.create_task(self.security.watch(sock, stream)))
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.request_stop, f"signal {sig.name}")
        tasks: list[asyncio.Task[None]] = []
        try:
            self._router.bind(self.endpoints.commands)
            self._sub.bind(self.endpoints.events)
            self._pub.bind(self.endpoints.status)
            log.info(
                "agent_bound",
                curve=self.security is not None,
                server_key=self.security.keys.public.decode() if self.security else "",
                **self.endpoints.__dict__,
            )
            self.bound.set()
            if self.journal is not None:  # WAL checkpoints in a thread, not in a commit
                self.journal.start_checkpoints()
            self._act(None, self.campaign.start(self.clock.now()))
            tasks = [
                asyncio.create_task(self._commands(), name="commands"),
                asyncio.create_task(self._events(), name="events"),
                asyncio.create_task(self._ticker(), name="ticker"),
                asyncio.create_task(self._status_ticker(), name="status"),
            ]
            stop_wait = asyncio.create_task(self._stop_requested.wait())
            done_wait = asyncio.create_task(self._stopped.wait())
            await asyncio.wait([stop_wait, done_wait, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for t in tasks:  # a crashed socket task is a bug: surface it
                if t.done() and not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            if self._stop_requested.is_set() and not self.campaign.stopped:
                reason = getattr(self, "_stop_reason", "operator request")
                self._act(None, self.campaign.stop(self.clock.now(), reason, rule="operator"))
            await self._drain()
            stop_wait.cancel()
            done_wait.cancel()
        finally:
            for t in [*tasks, *guards]:
                t.cancel()
            for t in [*tasks, *guards]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            if install_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            if self.journal is not None:
                self._flush()
                self.journal.stop_checkpoints()
            self._pub_out = None
            for s in (self._router, self._sub, self._pub):
                if s is not None:
                    s.close(linger=0)
            if auth is not None:
                auth.stop()
            log.info(
                "agent_closed",
                received=self.counters.received,
                rejected=self.counters.rejected,
                gaps=self.counters.gaps,
                missing=self.counters.missing,
            )

    # ---------------------------------------------------------- socket owners

    async def _commands(self) -> None:
        assert self._router is not None
        secured = self.security is not None
        while True:
            parts = await self._router.recv_multipart(copy=False)
            user = _key_name(parts[0]) if secured else None
            frames = [p.bytes for p in parts]
            if len(frames) < 2:
                self._reject(None, "commands", "malformed", "no identity frame")
                continue
            identity, rest = frames[0], frames[1:]
            self._on_frames(rest, "commands", identity, user)

    async def _events(self) -> None:
        assert self._sub is not None
        # the same socket without asyncio's futures, for non-blocking receives only
        sub = zmq.Socket(shadow=self._sub.underlying)
        recv = sub.recv
        secured = self.security is not None
        while True:
            await self._sub.poll(flags=zmq.POLLIN)
            # what is queued, without an await each (bench/bus_ingest.py: one await per
            # message costs ~30 us); bounded, so timers still run
            for _ in range(_EVENTS_BATCH):
                # recv_multipart's loop, but a frame's ``more`` instead of a getsockopt
                # (RCVMORE) per frame; the frames are bytes all the same. The parts of
                # a message arrive together, so only its first can find none queued.
                try:
                    part = recv(_NOBLOCK, copy=False)
                except zmq.Again:
                    break
                user = _key_name(part) if secured else None
                frames = [part.bytes]
                while part.more:
                    part = recv(_NOBLOCK, copy=False)
                    frames.append(part.bytes)
                self._on_frames(frames, "events", None, user)
            # the batch's deferred steps in one transaction, before the next await
            self._flush()

    async def _ticker(self) -> None:
        next_beat = 0.0
        while not self._stopped.is_set():
            now = self.clock.now()
            if now >= next_beat:
                next_beat = now + self.heartbeat_interval
                for role in list(self._identity):
                    self._send(role, m.Heartbeat(**self._env(role)))
            tick = Tick(now)
            self._act(tick, self.campaign.handle(tick))
            await asyncio.sleep(self.tick_interval)

    async def _status_ticker(self) -> None:
        while True:
            self._publish_status()
            await asyncio.sleep(self.status_interval)

    # ------------------------------------------------------------ inbound

    def _on_frames(
        self, frames: list[bytes], stream: str, identity: bytes | None, user: str | None = None
    ) -> None:
        """One message; ``user`` is the name of the CURVE key it came with (None: plain text)."""
        self.counters.received += 1
        try:
            msg = decode(frames, max_bytes=self.max_bytes)
        except CodecError as exc:
            self._reject(identity, stream, exc.code, str(exc))
            return
        if user is not None and (why := self._binding.refusal(user, msg, stream)) is not None:
            self._reject(identity, stream, "key_mismatch", why, msg)
            return
        if identity is not None and msg.source.encode() != identity:
            self._reject(
                identity,
                stream,
                "identity_mismatch",
                f"source {msg.source!r} does not match its socket identity",
            )
            return
        allowed = _DRIVER_KINDS if stream == "commands" else _MEASUREMENT_KINDS
        if msg.kind not in allowed:
            self._reject(
                identity,
                stream,
                "unexpected_kind",
                f"the agent does not accept {msg.kind!r} on {stream}",
                msg,
            )
            return
        if isinstance(msg, m.Hello) and self._sessions.get(msg.source) != msg.session:
            # a new session numbers from 0 again; a hello of the same session (say,
            # a duplicate) keeps its place in the sequence
            self._seq.reset(f"{msg.source}/commands")
            self._seq.reset(f"{msg.source}/events")
            self._sessions[msg.source] = msg.session
        verdict = self._seq.observe(f"{msg.source}/{stream}", msg.seq)
        if not verdict.accepted:
            self._reject(
                identity, stream, "duplicate", f"seq {msg.seq} from {msg.source} already seen", msg
            )
            return
        if verdict.status == "late":
            log.info("sequence_late", source=msg.source, stream=stream, seq=msg.seq)
        if verdict.status == "gap":
            self.counters.gaps += 1
            self.counters.missing += verdict.missing
            log.warning(
                "sequence_gap",
                source=msg.source,
                stream=stream,
                seq=msg.seq,
                missing=verdict.missing,
            )
        now = self.clock.now()
        role = self._role_of.get(msg.source, msg.source)
        if identity is not None and not isinstance(msg, m.Hello) and not self.campaign.is_up(role):
            # A driver with no current hello (we restarted, or it was counted down):
            # greet it; it answers with its hello, which brings it (back) up. Not one
            # that reported a fatal fault: only a hello of a new session brings it back.
            if not self.campaign.is_faulted(role):
                self._greet(identity)
        if msg.source not in self._role_of and not isinstance(msg, m.Hello):
            why = f"{msg.kind!r} from {msg.source!r}, which has not said hello to this agent"
            self._reject(identity, stream, "no_hello", why, msg)
            return
        self.campaign.driver_seen(role, now)
        event = self._to_event(msg, identity, now)
        if event is not None:
            self._act(event, self.campaign.handle(event))

    def _to_event(self, msg: m.Message, identity: bytes | None, now: float) -> Event | None:
        if type(msg) is m.Spectrum:  # the hot kind first (the match tries its cases in order)
            return _spectrum_in(msg, now)
        match msg:
            case m.Hello():
                self._identity[msg.role] = msg.source.encode()
                self._role_of[msg.source] = msg.role
                log.info(
                    "driver_hello",
                    source=msg.source,
                    role=msg.role,
                    session=msg.session,
                    instrument=msg.instrument,
                )
                self._send(msg.role, m.Heartbeat(**self._env(msg.role)))  # "heard you"
                return DriverUp(msg.role, now, msg.session)
            case m.SetpointAck():
                return SetpointAcked(msg.cmd_id, msg.accepted, msg.reason, now)
            case m.AcquireAck():
                return AcquireAcked(msg.cmd_id, msg.accepted, msg.reason, now)
            case m.FlowReadback(stable=True):
                return FlowStable(msg.cmd_id, msg.condition, now)
            case m.Spectrum():
                return _spectrum_in(msg, now)
            case m.PhaseLabel():
                return PhaseLabelIn(msg.condition, msg.phase, msg.confidence, now, msg.source)
            case m.Fault():  # logged by the core (driver_fault), which decides what it means
                role = self._role_of.get(msg.source, msg.source)
                return DriverFault(role, msg.code, msg.severity, msg.detail, now)
        return None

    def _reject(
        self,
        identity: bytes | None,
        stream: str,
        code: str,
        reason: str,
        msg: m.Message | None = None,
    ) -> None:
        self.counters.rejected += 1
        self.counters.rejected_by_code[code] = self.counters.rejected_by_code.get(code, 0) + 1
        fields: dict[str, Any] = {"stream": stream, "code": code, "reason": reason}
        if identity is not None:
            fields["peer"] = identity[:64].decode("utf-8", "replace")
        if msg is not None:
            fields.update(kind=msg.kind, source=msg.source, seq=msg.seq)
        log.warning("message_rejected", **fields)
        if self.journal is not None:
            self.journal.rejection(time.time(), fields)

    # ------------------------------------------------------------ outbound

    def _act(
        self,
        event: Event | None,
        decisions: list[Decision],
        *,
        rng_state: dict[str, Any] | None = None,
    ) -> None:
        """The seam: journal the step (the event and what the core decided), then act.

        Group commit: a spectrum that leads to no decision has nothing to act on,
        so its rows are written into the open group (``Journal.commit(defer=True)``)
        and its ``condition_progress`` view is held, replacing the one held for the
        same condition (a monitor sees the latest counts of each condition once a
        drained batch); both go out at :meth:`_flush` (the end of a drained batch
        of measurements) or with the next step that does act, whose transaction
        commits the group before anything is sent. Waiters of :meth:`wait_until`
        are woken then too.
        """
        defer = not decisions and isinstance(event, SpectrumIn)
        if self.journal is not None:
            try:
                self.journal.commit(
                    self.campaign, event, decisions, time.time(), rng_state=rng_state, defer=defer
                )
            except JournalError as exc:
                log.error("journal_write_failed", reason=str(exc))
                raise
        if not defer and self._held_views:
            self._release_views()
        if isinstance(event, SpectrumIn) and filed_with(self.campaign, event.condition, decisions):
            # before the decisions: the replicate that completed a condition comes
            # before its condition_complete
            fields = condition_progress(self.campaign, event.condition, self.clock.now())
            if fields is not None:
                if defer:
                    self._held_views.pop(event.condition, None)
                    self._held_views[event.condition] = fields
                else:
                    self._publish_view("condition_progress", fields)
        if defer:
            return  # nothing to execute; waiters are woken at the end of the batch
        self._execute(decisions)

    def _flush(self) -> None:
        """Commit the journal's deferred steps, then publish the views held for them
        and wake the waiters of :meth:`wait_until`."""
        if self.journal is not None and self.journal.deferred:
            try:
                self.journal.flush()
            except JournalError as exc:
                log.error("journal_write_failed", reason=str(exc))
                raise
        self._release_views()
        self._notify()

    def _release_views(self) -> None:
        views, self._held_views = self._held_views, {}
        for fields in views.values():
            self._publish_view("condition_progress", fields)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _execute(self, decisions: list[Decision]) -> None:
        status_sent = False
        for d in decisions:
            match d:
                case RequestProposal():
                    self._proposal_task = asyncio.create_task(self._propose(d.round))
                case SendSetpoint():
                    self._send(
                        "pump",
                        m.Setpoint(
                            cmd_id=d.cmd_id,
                            condition=d.condition,
                            flows=d.flows,
                            **self._env("pump"),
                        ),
                    )
                    log.info(
                        "setpoint_sent",
                        **self._ctx_of(d.condition),
                        cmd_id=d.cmd_id,
                        attempt=d.attempt,
                        flows=d.flows,
                    )
                case SendAcquire():
                    self._send(
                        d.role,
                        m.Acquire(
                            cmd_id=d.cmd_id,
                            condition=d.condition,
                            n=d.n,
                            first=d.first,
                            **self._env(d.role),
                        ),
                    )
                    log.info(
                        "acquire_sent",
                        **self._ctx_of(d.condition),
                        role=d.role,
                        cmd_id=d.cmd_id,
                        n=d.n,
                        first=d.first,
                    )
                case SendSafeState():
                    self._send(
                        "pump",
                        m.SafeState(cmd_id=d.cmd_id, reason=d.reason, **self._env("pump")),
                    )
                    log.info("safe_state_sent", cmd_id=d.cmd_id, reason=d.reason)
                case Announce():
                    self._publish(d)
                    if d.kind in _ROUND_CHANGES and not status_sent:
                        # a snapshot of the campaign after this step, once, right
                        # after the round change (so before a campaign_stopped)
                        self._publish_status()
                        status_sent = True
                case Note():
                    fields = dict(d.fields)
                    cond = fields.pop("condition", None)
                    ctx = self._ctx_of(cond) if isinstance(cond, str) else {}
                    ctx.update(fields)
                    getattr(log, d.level)(d.event, **ctx)
        if self.campaign.stopped and not self._stopped.is_set():
            self._stopped.set()
        self._notify()

    async def _propose(self, round_no: int) -> None:
        """Fit and optimise in a worker thread so heartbeats and late labels keep flowing."""
        t0 = time.perf_counter()
        try:
            batch, notes = await asyncio.to_thread(self.campaign.propose_batch)
        except (StrategyError, CampaignError) as exc:
            failed = ProposalFailed(str(exc), self.clock.now())
            self._act(failed, self.campaign.handle(failed))
            return
        log.info("proposal_computed", round=round_no, seconds=round(time.perf_counter() - t0, 3))
        ready = ProposalReady(batch, notes, self.clock.now())
        self._act(ready, self.campaign.handle(ready), rng_state=self.campaign.rng_state)

    def _send(self, role: str, msg: m.Message) -> None:
        identity = self._identity.get(role)
        if identity is None or self._router is None:
            log.warning(
                "command_not_sent", role=role, kind=msg.kind, reason="no hello from this driver yet"
            )
            return
        try:
            self._router_out().send_multipart([identity, *encode(msg)], flags=zmq.NOBLOCK)
            self.counters.sent += 1
        except zmq.ZMQError as exc:  # peer gone or HWM: the core resends until acked
            log.warning("command_send_failed", role=role, kind=msg.kind, reason=str(exc))

    def _router_out(self) -> zmq.Socket:
        """The ROUTER without asyncio's futures, for the non-blocking sends (a
        future a send costs ~10 us); the asyncio socket itself once it is closed."""
        assert self._router is not None
        if self._router.closed:
            return self._router  # as before: never a shadow of a freed handle
        if self._router_plain is None or self._router_plain.underlying != self._router.underlying:
            self._router_plain = zmq.Socket(shadow=self._router.underlying)
        return self._router_plain

    def _greet(self, identity: bytes) -> None:
        if self._router is None:
            return
        peer = identity.decode("utf-8", "replace")
        hello = m.Hello(
            role="agent",
            session=self.session,
            instrument="sdl-agent",
            **self._env(self._role_of.get(peer, peer)),
        )
        with contextlib.suppress(zmq.ZMQError):
            self._router.send_multipart([identity, *encode(hello)], flags=zmq.NOBLOCK)

    def _publish(self, d: Announce) -> None:
        fields = dict(d.fields)
        if d.kind == "proposal":
            fields["conditions"] = [m.ProposedCondition(**c) for c in fields["conditions"]]
        msg = m.MESSAGE_ADAPTER.validate_python({"kind": d.kind, **fields, **self._env("status")})
        if self._pub_out is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._pub_out.send_multipart(encode(msg), flags=zmq.NOBLOCK)
        cond = fields.get("condition")
        record = self._ctx_of(cond) if isinstance(cond, str) else {}
        record.update((k, v) for k, v in fields.items() if k != "conditions")
        log.info(d.kind, **record)
        if self.on_status is not None:
            self.on_status(msg)

    def _publish_status(self) -> None:
        self._publish_view("campaign_status", campaign_status(self.campaign, self.clock.now()))

    def _publish_view(self, kind: str, fields: dict[str, Any]) -> None:
        """Publish a monitor's view (``campaign_status``, ``condition_progress``):
        not journalled and not logged (the events behind it are); a view that does
        not fit its message is logged and dropped, never fatal."""
        try:
            msg = m.MESSAGE_ADAPTER.validate_python({"kind": kind, **fields, **self._env("status")})
        except pydantic.ValidationError as exc:
            log.error("status_not_published", kind=kind, reason=str(exc)[:500])
            return
        if self._pub_out is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._pub_out.send_multipart(encode(msg), flags=zmq.NOBLOCK)
        if self.on_status is not None:
            self.on_status(msg)

    def _env(self, stream: str) -> dict[str, Any]:
        """Envelope fields. ``stream`` is ``status`` or the role a command goes to,
        so that each peer sees its own gap-free sequence."""
        seq = self._out_seq.get(stream, 0)
        self._out_seq[stream] = seq + 1
        return {
            "msg_id": m.new_id(),
            "source": "agent",
            "seq": seq,
            "ts": time.time(),
            "campaign": self.campaign.settings.campaign_id,
        }

    def _ctx_of(self, condition: str | None) -> dict[str, Any]:
        if condition is None:
            return {}
        rec = self.campaign.conditions.get(condition)
        return {"round": rec.round if rec else None, "condition": condition}

    async def _drain(self) -> None:
        """Give the safe-state ack and late labels up to ``drain_s`` to arrive.

        The safe state is resent (same id, backoff) until acked: closing the
        sockets with it unsent or unheard would leave the pump at its last setpoint.
        """
        with contextlib.suppress(TimeoutError):
            await self.wait_until(
                lambda: not self._waiting_for_labels() and not self.campaign.awaiting_safe_state(),
                self.drain_s,
            )
        if self.campaign.awaiting_safe_state():
            log.error(
                "safe_state_unacked",
                reason=f"the pump did not acknowledge the safe state within {self.drain_s} s",
            )

    def _waiting_for_labels(self) -> bool:
        role = self.campaign.settings.label_role
        if role is None or role not in self._identity:
            return False
        return any(
            not c.labels and c.state == "complete" for c in self.campaign.conditions.values()
        )


def _key_name(frame: zmq.Frame) -> str:
    """The name of the CURVE key a message came with: its ZAP User-Id."""
    try:
        return str(frame.get(USER_ID))
    except zmq.ZMQError:  # no User-Id: not let in by our ZAP handler, so nobody's
        return UNNAMED


def _spectrum_in(msg: m.Spectrum, now: float) -> SpectrumIn:
    values = spectrum_array(msg)  # read-only, over the values frame: no copy
    return SpectrumIn(
        msg.condition,
        msg.replicate,
        values,
        msg.wl_start,
        msg.wl_step,
        now,
        msg.source,
        msg.acquire_id,
    )
