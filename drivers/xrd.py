"""The simulated XRD phase labeller: a slow verdict per condition.

On ``acquire(condition)`` it acknowledges at once and takes the flows recorded
for that condition from the reactor stream (the last stable readback seen for
it; if none yet, it waits up to ``acquire_timeout_s``, then reports a
``fault``). After ``latency_s`` it publishes one
:class:`~protocols.messages.PhaseLabel` with the forward model's
``phase(flows)``; the model's confidence is jittered by
``N(0, confidence_jitter^2)`` and clipped to [0, 1]. Labels for several
conditions can be in flight at once and arrive late by design. ``n`` of the
acquire is ignored: one label per acquire.

The jitter is drawn from a generator seeded by ``(seed, condition, k)`` with k
the count of labels already made for that condition, so labels are
deterministic whatever the timing.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import Counter
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np
import structlog

from drivers.pump import ReactorWatch
from drivers.runtime import Link, Verdict
from protocols.messages import Acquire, PhaseLabel, Role

__all__ = ["PhaseModel", "SimulatedXrd"]

log = structlog.get_logger("drivers.xrd")


@runtime_checkable
class PhaseModel(Protocol):
    """A forward model's crystallography: ``(phase, confidence)`` for some flows."""

    def phase(self, flows: Mapping[str, float]) -> tuple[str, float]: ...


class SimulatedXrd:
    """A phase labeller with a long latency, its physics from ``model``.

    Args:
        model: the forward model (its ``phase`` is used).
        reactor: endpoint of the pump's reactor stream (connected).
        latency_s: simulated seconds from acquire to label.
        acquire_timeout_s: simulated seconds to wait for the condition's flows.
        time_scale: multiplies every simulated duration.
        confidence_jitter: SD added to the model's confidence.
        reactor_wait_s: wall seconds :meth:`start` waits for the reactor stream's
            first readback (so the hello follows it), then goes on without it.
        seed: seeds the jitter.
        max_in_flight: acquires beyond this many unfinished ones are refused.

    An acquire asks for one label: ``n`` other than 1 is refused with a reason.
    """

    role: Role = "xrd"

    def __init__(
        self,
        model: PhaseModel,
        *,
        reactor: str,
        latency_s: float = 10.0,
        acquire_timeout_s: float = 30.0,
        time_scale: float = 1.0,
        confidence_jitter: float = 0.03,
        seed: int = 0,
        reactor_wait_s: float = 2.0,
        max_in_flight: int = 1000,
    ) -> None:
        if not isinstance(model, PhaseModel):
            raise TypeError(f"{model!r} has no phase(flows) method")
        if min(latency_s, acquire_timeout_s, time_scale, confidence_jitter) < 0:
            raise ValueError("durations, time_scale and confidence_jitter must be >= 0")
        self.model = model
        self.watch = ReactorWatch(reactor)
        self.latency_s = latency_s
        self.acquire_timeout_s = acquire_timeout_s
        self.time_scale = time_scale
        self.confidence_jitter = confidence_jitter
        self.seed = seed
        self.reactor_wait_s = reactor_wait_s
        self.max_in_flight = max_in_flight
        self.instrument = (
            f"simulated XRD phase labeller: latency {latency_s:g} s, "
            f"model {type(model).__module__}.{type(model).__qualname__}"
        )
        self._in_flight = 0
        self._labels: Counter[str] = Counter()
        self._link: Link | None = None

    async def start(self, link: Link) -> None:
        self._link = link
        link.spawn(self.watch.run(link.context), name="reactor-watch")
        # say hello only once the pump's state is known, if the pump is there at all
        if not await self.watch.wait_connected(self.reactor_wait_s):
            log.warning(
                "reactor_silent", endpoint=self.watch.endpoint, waited_s=self.reactor_wait_s
            )

    async def on_link_lost(self) -> None:
        pass  # labels in flight still arrive; the agent may take them late

    async def stop(self) -> None:
        pass

    async def on_acquire(self, msg: Acquire) -> Verdict:
        if msg.n != 1:  # one label per acquire: more would be a silent short delivery
            return Verdict.refuse(f"n={msg.n}: this XRD gives one phase label per acquire (n=1)")
        if self._in_flight >= self.max_in_flight:
            return Verdict.refuse(f"busy: {self._in_flight} labels already in flight")
        assert self._link is not None, "start() was not called"
        self._in_flight += 1
        self._link.spawn(self._label(msg), name=f"label:{msg.cmd_id}")
        return Verdict.accept()

    async def _label(self, msg: Acquire) -> None:
        link = self._link
        assert link is not None
        try:
            timeout = self.acquire_timeout_s * self.time_scale
            flows = await self.watch.wait_recorded(msg.condition, timeout)
            if flows is None:
                link.fault(
                    "condition_unknown",
                    f"acquire {msg.cmd_id}: no stable flows seen for condition "
                    f"{msg.condition!r} within {timeout:.3g} s",
                    severity="warning",
                )
                return
            await asyncio.sleep(self.latency_s * self.time_scale)
            k = self._labels[msg.condition]
            self._labels[msg.condition] += 1
            try:
                phase, confidence = self.model.phase(flows)
                rng = np.random.default_rng(
                    [self.seed & 0xFFFFFFFF, zlib.crc32(msg.condition.encode()), k]
                )
                jittered = float(
                    np.clip(confidence + rng.normal(0.0, self.confidence_jitter), 0, 1)
                )
                link.publish(PhaseLabel, condition=msg.condition, phase=phase, confidence=jittered)
            except Exception as exc:  # the model is foreign code; its failure is a fault
                link.fault("model_error", f"condition {msg.condition!r}: {exc}"[:2000])
                return
            log.info("phase_labelled", condition=msg.condition, phase=phase, confidence=jittered)
        finally:
            self._in_flight -= 1
