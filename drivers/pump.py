"""The simulated syringe pump, and the reactor stream that feeds the simulated detectors.

:class:`SimulatedPump` takes setpoints (uL/min per channel), checks every flow
against its channel's hard limits, applies each ``cmd_id`` at most once (also
across restarts, with an applied-commands log), ramps linearly to the new
flows while publishing ``flow_readback(stable=false)`` and finishes with a
``flow_readback(stable=true)`` carrying the command's ``cmd_id`` and
``condition``. On ``safe_state``, on loss of the agent and at shutdown it goes
at once to its safe flows (zero by default).

The reactor stream (:class:`ReactorFeed`, :class:`ReactorWatch`) is simulation
plumbing, not part of the agent protocol: in the lab the liquid flows from the
pump to the detectors; here the pump binds an extra XPUB and publishes every
readback on it, and the simulated spectrometer and XRD subscribe to learn what
is flowing. A new subscriber gets the current state at once.

>>> validate_flows(channel_map(DEFAULT_CHANNELS), {"agno3": 100.0, "water": 50.0})["seed"]
0.0
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import structlog
import zmq
import zmq.asyncio

from drivers.faults import SetpointRefused
from drivers.runtime import Link, Verdict
from protocols.codec import decode, encode
from protocols.errors import CodecError
from protocols.messages import FlowReadback, Role, SafeState, Setpoint, new_id
from protocols.sockets import configure

__all__ = [
    "DEFAULT_CHANNELS",
    "REACTOR_PORT_OFFSET",
    "AppliedLog",
    "Channel",
    "ReactorFeed",
    "ReactorWatch",
    "SimulatedPump",
    "channel_map",
    "validate_flows",
]

log = structlog.get_logger("drivers.pump")

#: The reactor stream's default port is the agent's base (commands) port + this.
REACTOR_PORT_OFFSET = 3


# --- channels and hard limits ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Channel:
    """One pump channel and its hard limits (uL/min).

    A channel is either off (exactly 0) or within ``[min_flow, max_flow]``.
    """

    name: str
    min_flow: float = 0.0
    max_flow: float = 1000.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.min_flow <= self.max_flow) or not math.isfinite(self.max_flow):
            raise ValueError(
                f"channel {self.name!r}: need 0 <= min_flow <= max_flow, "
                f"got {self.min_flow}..{self.max_flow}"
            )

    def refusal(self, flow: float) -> str | None:
        """Why ``flow`` may not be set on this channel, or None if it may."""
        if flow == 0.0 or self.min_flow <= flow <= self.max_flow:
            return None
        return (
            f"channel {self.name}: {flow:g} uL/min is outside its hard limits "
            f"[{self.min_flow:g}, {self.max_flow:g}]"
        )


#: The channels of examples/agnp.toml's [pump] section.
DEFAULT_CHANNELS: tuple[Channel, ...] = (
    Channel("agno3", 0.0, 800.0),
    Channel("pva", 0.0, 800.0),
    Channel("tsc", 0.0, 800.0),
    Channel("seed", 0.0, 800.0),
    Channel("water", 0.0, 1000.0),
    Channel("oil", 0.0, 1000.0),
)


def channel_map(channels: Iterable[Channel]) -> dict[str, Channel]:
    """Channels by name; refuses duplicates."""
    out: dict[str, Channel] = {}
    for ch in channels:
        if ch.name in out:
            raise ValueError(f"channel {ch.name!r} is defined twice")
        out[ch.name] = ch
    return out


def validate_flows(channels: Mapping[str, Channel], flows: Mapping[str, float]) -> dict[str, float]:
    """The full flow vector for ``flows`` (missing channels 0), or a refusal.

    Raises:
        SetpointRefused: an unknown channel, or a flow outside its channel's limits
            (the message lists every offending channel).
    """
    unknown = sorted(set(flows) - set(channels))
    if unknown:
        raise SetpointRefused(
            f"unknown channel(s): {', '.join(unknown)} (known: {', '.join(channels)})"
        )
    full = {name: float(flows.get(name, 0.0)) for name in channels}
    problems = [r for name, ch in channels.items() if (r := ch.refusal(full[name])) is not None]
    if problems:
        raise SetpointRefused("; ".join(problems))
    return full


# --- the applied-commands log ---------------------------------------------------------


class AppliedLog:
    """Every applied ``cmd_id``, in memory and (optionally) as JSON lines on disk.

    One line per applied command, written and flushed before the pump moves::

        {"cmd_id": "...", "condition": "...", "flows": {...}, "ts": 1700000000.0}

    On :meth:`open` an existing file is read back so a restarted pump knows what
    it already applied. Unreadable lines (a torn last line) are skipped with a
    warning.
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._ids: set[str] = set()
        self._file: IO[str] | None = None

    def open(self) -> int:
        """Load the existing file and open it for appending; return the ids loaded."""
        if self.path is None:
            return 0
        if self.path.exists():
            with self.path.open("r", encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        cmd_id = json.loads(line)["cmd_id"]
                    except (ValueError, KeyError, TypeError):
                        log.warning("applied_log_line_skipped", path=str(self.path), line=lineno)
                        continue
                    self._ids.add(str(cmd_id))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        return len(self._ids)

    def __contains__(self, cmd_id: object) -> bool:
        return cmd_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def record(self, cmd_id: str, condition: str, flows: Mapping[str, float]) -> None:
        """Write (and fsync) one applied command; raises OSError if it cannot."""
        if self._file is not None:
            line = {
                "cmd_id": cmd_id,
                "condition": condition,
                "flows": dict(flows),
                "ts": time.time(),
            }
            self._file.write(json.dumps(line, separators=(",", ":")) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        self._ids.add(cmd_id)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# --- the reactor stream (simulation only) -----------------------------------------------


class ReactorFeed:
    """The pump's side of the reactor stream: an XPUB bound at ``endpoint``.

    Each readback is published as a :class:`~protocols.messages.FlowReadback`
    frame pair (the same codec as the bus, own ``seq`` counter). When a
    subscriber joins, the latest readback is sent again so it never waits for
    the next change.
    """

    def __init__(self, endpoint: str, *, source: str = "pump") -> None:
        self.endpoint = endpoint
        self.source = source
        self._sock: zmq.asyncio.Socket | None = None
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(1000)
        self._latest: dict[str, Any] | None = None
        self._seq = 0

    def bind(self, context: zmq.asyncio.Context) -> None:
        """Bind the XPUB; raises ``zmq.ZMQError`` if the endpoint is taken."""
        sock = configure(context.socket(zmq.XPUB))
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscriber's join, not only the first
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError:
            sock.close()
            raise
        self._sock = sock

    def put(self, **fields: Any) -> None:
        """Queue one readback (fields of :class:`FlowReadback` without the envelope)."""
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(fields)

    async def run(self) -> None:
        """Own the XPUB until cancelled: send queued readbacks, greet new subscribers."""
        sock = self._sock
        if sock is None:
            raise RuntimeError("ReactorFeed.bind() was not called")
        recv: asyncio.Future[list[bytes]] | None = None
        get: asyncio.Future[dict[str, Any]] | None = None
        try:
            while True:
                recv = recv or asyncio.ensure_future(sock.recv_multipart())
                get = get or asyncio.ensure_future(self._queue.get())
                done, _ = await asyncio.wait({recv, get}, return_when=asyncio.FIRST_COMPLETED)
                if get in done:
                    self._latest, get = get.result(), None
                    await self._send(sock, self._latest)
                if recv in done:
                    frames, recv = recv.result(), None
                    if frames and frames[0][:1] == b"\x01" and self._latest is not None:
                        await self._send(sock, self._latest)
        finally:
            for fut in (recv, get):
                if fut is not None:
                    fut.cancel()
            sock.close(linger=0)
            self._sock = None

    async def _send(self, sock: zmq.asyncio.Socket, fields: Mapping[str, Any]) -> None:
        msg = FlowReadback(
            msg_id=new_id(), source=self.source, seq=self._seq, ts=time.time(), **fields
        )
        await asyncio.wait_for(sock.send_multipart(encode(msg)), 1.0)
        self._seq += 1


class ReactorWatch:
    """A simulated detector's side of the reactor stream: what the pump delivers.

    Keeps the latest readback and, per condition, the flows of the last stable
    readback seen for it (bounded LRU).
    """

    def __init__(self, endpoint: str, *, memory: int = 10_000) -> None:
        self.endpoint = endpoint
        self.latest: FlowReadback | None = None
        self._memory = memory
        self._stable: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._changed = asyncio.Condition()

    def recorded(self, condition: str) -> dict[str, float] | None:
        """Flows of the last stable readback seen for ``condition``, if any."""
        flows = self._stable.get(condition)
        return dict(flows) if flows is not None else None

    def current(self, condition: str) -> dict[str, float] | None:
        """Flows now, if the pump is stable on ``condition``; else None."""
        now = self.latest
        if now is not None and now.stable and now.condition == condition:
            return dict(now.flows)
        return None

    async def wait_connected(self, timeout: float) -> bool:
        """Wait for the first readback (the pump greets every new subscriber with one)."""
        flows = await self._wait(lambda: dict(self.latest.flows) if self.latest else None, timeout)
        return flows is not None

    async def wait_current(self, condition: str, timeout: float) -> dict[str, float] | None:
        """Wait until the pump is stable on ``condition``; None after ``timeout`` s."""
        return await self._wait(lambda: self.current(condition), timeout)

    async def wait_recorded(self, condition: str, timeout: float) -> dict[str, float] | None:
        """The recorded flows of ``condition``, waiting up to ``timeout`` s for them."""
        return await self._wait(lambda: self.recorded(condition), timeout)

    async def run(self, context: zmq.asyncio.Context) -> None:
        """Own the SUB until cancelled."""
        sock = configure(context.socket(zmq.SUB))
        try:
            sock.setsockopt(zmq.SUBSCRIBE, b"flow_readback.")
            sock.connect(self.endpoint)
            while True:
                frames = await sock.recv_multipart()
                try:
                    msg = decode(frames)
                except CodecError as err:
                    log.warning(
                        "message_rejected", stream="reactor", code=err.code, reason=str(err)
                    )
                    continue
                if not isinstance(msg, FlowReadback):
                    continue
                self._update(msg)
                async with self._changed:
                    self._changed.notify_all()
        finally:
            sock.close(linger=0)

    def _update(self, msg: FlowReadback) -> None:
        self.latest = msg
        if msg.stable and msg.condition:
            self._stable[msg.condition] = dict(msg.flows)
            self._stable.move_to_end(msg.condition)
            while len(self._stable) > self._memory:
                self._stable.popitem(last=False)

    async def _wait(
        self, pick: Callable[[], dict[str, float] | None], timeout: float
    ) -> dict[str, float] | None:
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: pick() is not None)
                return pick()
        except TimeoutError:
            return None


# --- the pump ----------------------------------------------------------------------------


class SimulatedPump:
    """A multi-channel syringe pump with hard limits, linear ramps and at-most-once setpoints.

    Args:
        channels: the channels and their hard limits.
        safe_flows: flows of the safe state (missing channels 0; within the channels'
            limits, e.g. a purge recipe); all zero by default.
        ramp_s: simulated seconds to ramp to a new setpoint (times ``time_scale``).
        readback_interval_s: simulated seconds between readbacks while ramping.
        readback_period_s: wall seconds between re-publications of the current
            state while idle (0: never).
        time_scale: multiplies every simulated duration.
        applied_log: path of the applied-commands log (None: in memory only).
        reactor: endpoint to bind the reactor stream on (None: no stream).
    """

    role: Role = "pump"

    def __init__(
        self,
        channels: Iterable[Channel] = DEFAULT_CHANNELS,
        *,
        safe_flows: Mapping[str, float] | None = None,
        ramp_s: float = 2.0,
        readback_interval_s: float = 0.2,
        readback_period_s: float = 1.0,
        time_scale: float = 1.0,
        applied_log: Path | str | None = None,
        reactor: str | None = None,
    ) -> None:
        self.channels = channel_map(channels)
        if not self.channels:
            raise ValueError("a pump needs at least one channel")
        if min(ramp_s, readback_period_s, time_scale) < 0 or readback_interval_s <= 0:
            raise ValueError("durations must be >= 0 and the readback interval > 0")
        try:  # a purge recipe is held to the same hard limits as any setpoint
            self.safe_flows = validate_flows(self.channels, safe_flows or {})
        except SetpointRefused as exc:
            raise ValueError(f"safe flows: {exc}") from None
        self.ramp_s = ramp_s
        self.readback_interval_s = readback_interval_s
        self.readback_period_s = readback_period_s
        self.time_scale = time_scale
        self.applied = AppliedLog(applied_log)
        self.feed = ReactorFeed(reactor) if reactor else None
        self.instrument = (
            "simulated pump: "
            + ", ".join(f"{c.name} {c.min_flow:g}-{c.max_flow:g}" for c in self.channels.values())
            + " uL/min"
        )
        self.flows = dict(self.safe_flows)
        self.stable = True
        self.cmd_id = ""
        self.condition = ""
        self._link: Link | None = None
        self._ramp: asyncio.Task[None] | None = None

    # -- lifecycle --

    async def start(self, link: Link) -> None:
        self._link = link
        loaded = self.applied.open()
        if loaded:
            log.info("applied_log_loaded", path=str(self.applied.path), cmd_ids=loaded)
        if self.feed is not None:
            self.feed.source = link.name
            self.feed.bind(link.context)
            link.spawn(self.feed.run(), name="reactor-feed")
            log.info("reactor_bound", endpoint=self.feed.endpoint)
        link.spawn(self._keep_publishing(), name="readback-period")
        self._announce(stable=True)

    async def on_link_lost(self) -> None:
        self._go_safe("", reason="link to the agent lost")

    async def stop(self) -> None:
        self._go_safe("", reason="shutdown")
        self.applied.close()

    # -- commands --

    async def on_setpoint(self, msg: Setpoint) -> Verdict:
        if msg.cmd_id in self.applied:
            log.info("setpoint_already_applied", cmd_id=msg.cmd_id, condition=msg.condition)
            return Verdict.accept("already applied")
        try:
            target = validate_flows(self.channels, msg.flows)
        except SetpointRefused as exc:
            log.warning("setpoint_refused", cmd_id=msg.cmd_id, reason=str(exc))
            return Verdict.refuse(str(exc))
        try:
            self.applied.record(msg.cmd_id, msg.condition, target)
        except OSError as exc:
            log.error("applied_log_failed", cmd_id=msg.cmd_id, error=repr(exc))
            return Verdict.refuse(f"cannot record the command in the applied log: {exc}")
        self._cancel_ramp()
        self.cmd_id, self.condition, self.stable = msg.cmd_id, msg.condition, False
        log.info("setpoint_applied", cmd_id=msg.cmd_id, condition=msg.condition, flows=target)
        self._ramp = self._spawn(self._ramp_to(target), name=f"ramp:{msg.cmd_id}")
        return Verdict.accept()

    async def on_safe_state(self, msg: SafeState) -> Verdict:
        if msg.cmd_id in self.applied:
            return Verdict.accept("already applied")
        try:
            self.applied.record(msg.cmd_id, "", self.safe_flows)
        except OSError as exc:
            log.error("applied_log_failed", cmd_id=msg.cmd_id, error=repr(exc))
        self._go_safe(msg.cmd_id, reason=msg.reason or "commanded")
        return Verdict.accept()

    # -- behaviour --

    async def _ramp_to(self, target: Mapping[str, float]) -> None:
        duration = self.ramp_s * self.time_scale
        start = dict(self.flows)
        steps = math.ceil(self.ramp_s / self.readback_interval_s - 1e-9) if duration > 0 else 0
        self._announce(stable=False)
        for k in range(1, steps + 1):
            await asyncio.sleep(duration / steps)
            if k < steps:
                f = k / steps
                self.flows = {n: start[n] + f * (target[n] - start[n]) for n in self.channels}
                self._announce(stable=False)
        self.flows = dict(target)
        self.stable = True
        self._announce(stable=True)
        log.info("setpoint_reached", cmd_id=self.cmd_id, condition=self.condition)

    def _go_safe(self, cmd_id: str, *, reason: str) -> None:
        self._cancel_ramp()
        self.flows = dict(self.safe_flows)
        self.cmd_id, self.condition, self.stable = cmd_id, "", True
        log.info("safe_state", cmd_id=cmd_id, reason=reason, flows=self.flows)
        self._announce(stable=True)

    async def _keep_publishing(self) -> None:
        if self.readback_period_s <= 0:
            return
        while True:
            await asyncio.sleep(self.readback_period_s)
            if self.stable:
                self._announce(stable=True)

    def _announce(self, *, stable: bool) -> None:
        fields = {
            "cmd_id": self.cmd_id,
            "condition": self.condition,
            "flows": dict(self.flows),
            "stable": stable,
        }
        if self._link is not None:
            self._link.publish(FlowReadback, **fields)
        if self.feed is not None:
            self.feed.put(**fields)

    def _cancel_ramp(self) -> None:
        if self._ramp is not None and not self._ramp.done():
            self._ramp.cancel()
        self._ramp = None

    def _spawn(self, coro: Any, *, name: str) -> asyncio.Task[None]:
        assert self._link is not None, "start() was not called"
        return self._link.spawn(coro, name=name)
