"""Fault injection: a driver that drops, duplicates, delays, reorders and corrupts
its own messages at given rates, and crashes at a given point.

For testing the agent's recovery only; a driver runs without it unless a
:class:`FaultPlan` is given (``python -m drivers ROLE --fault-drop 0.05 ...``
or ``--fault-file plan.json``, see ``docs/drivers.md``). The injector sits
between the driver runtime and its two sockets and works on *lists of frames*,
whatever they hold, so it neither knows nor cares how a message is encoded
(one frame or several):

- **out** (what the driver sends, on the DEALER and the PUB) and **in** (what
  it receives on the DEALER: the agent's commands and heartbeats) each have
  their own rates. Subscriptions arriving on the PUB and the simulation's
  reactor stream are never touched.
- per message, at most one fault, drawn in this order from a generator of its
  own per direction and socket (seeded by ``seed``, the direction and the
  socket, so the n-th message of a socket gets the same draw whatever the
  timing of the others): ``drop`` (gone), ``duplicate`` (the same frames twice),
  ``corrupt`` (see below), ``reorder`` (held back and passed on right after
  the next message of the same direction and socket), ``delay`` (held for a
  uniform ``0 .. max_delay_s``; the socket's later messages wait behind it, so a
  delay never reorders).
- ``corrupt`` in mode ``detectable`` (the default) either truncates one frame
  or puts a ``0xFF`` byte (never valid UTF-8, so never valid JSON) into a text
  frame: a receiver can always tell. Mode ``bitflip`` flips one random bit of
  one random frame: a flip inside a number may still decode to a valid message
  with another value, which nothing on the wire can detect without a MAC
  (CURVE) or a checksum. Count those before trusting a result.
- ``crash_at="spectrum:37"``: right after the 37th ``spectrum`` this process
  sent, it kills itself with SIGKILL (no cleanup, no last words but a log line).

Every fault is a log record ``fault_injected`` (``fault``, ``direction``,
``stream``, ``kind``) and is counted in :attr:`FaultInjector.counts`
(``"out.drop"``, ``"in.duplicate"``, ...); ``driver_stopped`` reports the counts.

>>> plan = FaultPlan.model_validate({"out": {"drop": 0.5}, "seed": 3, "crash_at": "spectrum:2"})
>>> plan.out.drop, plan.in_.drop, plan.crash_at
(0.5, 0.0, ('spectrum', 2))
>>> FaultPlan.model_validate({"out": {"drop": 1.5}})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
pydantic_core._pydantic_core.ValidationError: 1 validation error for FaultPlan...
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["FAULT_KINDS", "FaultInjector", "FaultPlan", "FaultRates", "corrupt", "draw"]

log = structlog.get_logger("drivers.inject")

#: the faults a message can get, in the order they are drawn
FAULT_KINDS: tuple[str, ...] = ("drop", "duplicate", "corrupt", "reorder", "delay")

_CRASH = re.compile(r"^([a-z_]{1,32}):([1-9][0-9]{0,8})$")

Rate = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Frames = list[bytes]
Sink = Callable[[Frames], Awaitable[None]]


class FaultRates(BaseModel):
    """Probabilities, per message, of each fault (their sum at most 1)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    drop: Rate = 0.0
    duplicate: Rate = 0.0
    corrupt: Rate = 0.0
    reorder: Rate = 0.0
    delay: Rate = 0.0

    @model_validator(mode="after")
    def _sum_at_most_one(self) -> FaultRates:
        total = sum(getattr(self, k) for k in FAULT_KINDS)
        if total > 1.0 + 1e-12:
            raise ValueError(f"the fault rates add up to {total:g}, more than 1")
        return self

    @property
    def any(self) -> bool:
        return any(getattr(self, k) > 0 for k in FAULT_KINDS)


class FaultPlan(BaseModel):
    """What to inject, from flags or a JSON file (``{"out": {...}, "in": {...}, ...}``).

    Attributes:
        out: rates on what the driver sends.
        in_: rates on what it receives (``"in"`` in a file).
        max_delay_s: longest delay, wall seconds.
        corrupt_mode: ``detectable`` (truncate / invalid byte) or ``bitflip``.
        seed: seed of the draws (one generator per direction and socket).
        crash_at: ``(kind, n)`` from ``"KIND:N"``: SIGKILL itself after the n-th
            message of that kind sent; None never.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    out: FaultRates = FaultRates()
    in_: FaultRates = Field(default=FaultRates(), alias="in")
    max_delay_s: Annotated[float, Field(ge=0.0, le=10.0, allow_inf_nan=False)] = 0.05
    corrupt_mode: Literal["detectable", "bitflip"] = "detectable"
    seed: int = 0
    crash_at: tuple[str, int] | None = None

    @field_validator("crash_at", mode="before")
    @classmethod
    def _parse_crash(cls, v: object) -> object:
        if isinstance(v, str):
            match = _CRASH.match(v)
            if match is None:
                raise ValueError(f"crash_at must be KIND:N (e.g. spectrum:37), got {v!r}")
            return (match.group(1), int(match.group(2)))
        return v

    @classmethod
    def from_file(cls, path: str | Path) -> FaultPlan:
        """Read a plan from a JSON file.

        Raises:
            OSError: the file cannot be read.
            pydantic.ValidationError: it is not a valid plan (says where and why).
        """
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))

    @property
    def active(self) -> bool:
        return self.out.any or self.in_.any or self.crash_at is not None


class FaultInjector:
    """Applies a :class:`FaultPlan` to the frames one driver process sends and receives.

    The socket owners call :meth:`send` and :meth:`receive` with the frames and
    the function that really sends or handles them; both may hold a message
    back (reorder) or wait (delay), which is what a fault is. One injector per
    process; ``stream`` names the socket (``commands``, ``events``).

    Args:
        plan: what to inject.
        kill: called for the crash point (default: SIGKILL this process).
    """

    def __init__(self, plan: FaultPlan, *, kill: Callable[[], None] | None = None) -> None:
        self.plan = plan
        self.counts: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self._rngs: dict[tuple[str, str], random.Random] = {}
        self._held: dict[tuple[str, str], tuple[Frames, Sink]] = {}
        self._kill = kill or _sigkill_self

    async def send(self, frames: Frames, sink: Sink, *, stream: str, kind: str) -> None:
        """Send ``frames`` through ``sink``, with this plan's faults on the way out."""
        await self._apply(self.plan.out, "out", stream, kind, frames, sink)
        self.sent[kind] += 1
        crash = self.plan.crash_at
        if crash is not None and crash == (kind, self.sent[kind]):
            self._note("crash", "out", stream, kind, at=f"{kind}:{self.sent[kind]}")
            self._kill()

    async def receive(self, frames: Frames, handler: Sink, *, stream: str) -> None:
        """Hand ``frames`` to ``handler``, with this plan's faults on the way in."""
        await self._apply(self.plan.in_, "in", stream, _kind_of(frames), frames, handler)

    # --- private -------------------------------------------------------------------

    async def _apply(
        self, rates: FaultRates, direction: str, stream: str, kind: str, frames: Frames, sink: Sink
    ) -> None:
        key = (direction, stream)
        rng = self._rng(key)
        fault = draw(rates, rng)
        held = self._held.pop(key, None)
        if fault is not None:
            self._note(fault, direction, stream, kind)
        match fault:
            case "drop":
                pass
            case "duplicate":
                await sink(frames)
                await sink(list(frames))
            case "corrupt":
                await sink(corrupt(frames, self.plan.corrupt_mode, rng))
            case "reorder" if held is None:
                self._held[key] = (frames, sink)
                return
            case "reorder":  # already holding one: this one goes first, then both held
                await sink(frames)
            case "delay":
                await asyncio.sleep(rng.uniform(0.0, self.plan.max_delay_s))
                await sink(frames)
            case _:
                await sink(frames)
        if held is not None:
            await held[1](held[0])

    def _rng(self, key: tuple[str, str]) -> random.Random:
        rng = self._rngs.get(key)
        if rng is None:
            rng = self._rngs[key] = random.Random(f"{self.plan.seed}/{key[0]}/{key[1]}")
        return rng

    def _note(self, fault: str, direction: str, stream: str, kind: str, **extra: object) -> None:
        self.counts[f"{direction}.{fault}"] += 1
        log.info(
            "fault_injected", fault=fault, direction=direction, stream=stream, kind=kind, **extra
        )


def draw(rates: FaultRates, rng: random.Random) -> str | None:
    """The fault of one message (None: none), one uniform draw against the rates
    in :data:`FAULT_KINDS` order."""
    if not rates.any:
        return None
    x = rng.random()
    for kind in FAULT_KINDS:
        p = getattr(rates, kind)
        if x < p:
            return kind
        x -= p
    return None


def corrupt(frames: Frames, mode: str, rng: random.Random) -> Frames:
    """``frames`` with one frame damaged: ``detectable`` puts a ``0xFF`` byte into a
    text frame (never valid UTF-8, so never valid JSON) or truncates the frame
    (a JSON object cut short never parses; a topic cut short no longer matches
    the body); ``bitflip`` flips one random bit, which may still decode."""
    out = list(frames)
    i = rng.randrange(len(out))
    frame = bytearray(out[i])
    if mode == "bitflip":
        if frame:
            pos = rng.randrange(len(frame))
            frame[pos] ^= 1 << rng.randrange(8)
        else:
            frame = bytearray(b"\x01")
    elif frame and _is_text(bytes(frame)) and rng.random() < 0.5:
        frame[rng.randrange(len(frame))] = 0xFF
    else:  # truncate, never to the same length
        frame = frame[: rng.randrange(len(frame))] if frame else bytearray(b"\xff")
    out[i] = bytes(frame)
    return out


def _kind_of(frames: Frames) -> str:
    """The message kind from the topic frame ``<kind>.<source>`` ("?" if none)."""
    if not frames:
        return "?"
    return frames[0][:64].split(b".", 1)[0].decode("ascii", "replace") or "?"


def _is_text(frame: bytes) -> bool:
    try:
        frame.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _sigkill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
