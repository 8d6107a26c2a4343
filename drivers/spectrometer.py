"""The simulated in-line UV-Vis spectrometer: one spectrum per droplet.

On ``acquire(condition, n)`` it acknowledges at once, waits until the reactor
stream shows the pump stable on ``condition`` (else it reports a ``fault``),
then publishes ``n`` :class:`~protocols.messages.Spectrum` messages, one per
droplet every ``droplet_interval_s``, each naming the acquire it answers
(``acquire_id``). Their replicate indices are the acquire's ``first``,
``first + 1``, ... when it gives one (the agent numbers the droplets, so a
restart here does not begin again at 0), else they continue per condition
across acquires (0, 1, 2, ...). Acquires are served one at a time, in order:
one flow cell.

The physics is the injected forward model's (:class:`SpectrumModel`, e.g.
``drivers.world:agnp_world``); this module adds what a real droplet stream
adds to it (:class:`DropletNoise`, :func:`droplet`). Per droplet, with c
running over the pump channels and lambda over the grid::

    q'_c      = q_c * exp(e_c),           e_c ~ N(0, flow_jitter^2)
    y(lambda) = a * m(lambda; q') + b + n(lambda)
    a ~ 1 + N(0, amplitude_jitter^2)
    b ~ N(baseline_mean, baseline_sd^2), clipped to baseline_range
    n ~ N(0, detector_sd^2), independent per point

where m is the model's mean absorbance. With probability ``outlier_rate`` the
droplet is an outlier: half of them an air bubble (a flat ``bubble_level``
plus detector noise), half a doublet (``a`` times ``doublet_factor``). Every
draw comes from a generator seeded by ``(seed, condition, replicate)``, so the
stream is deterministic whatever the timing.

>>> import numpy as np
>>> class Flat:
...     def spectrum(self, flows, wavelengths): return np.full(wavelengths.shape, 0.5)
>>> wl = Grid(380, 800, 1).wavelengths()
>>> values, kind = droplet(Flat(), {"agno3": 100.0}, wl, droplet_rng(0, "c1", 0), DropletNoise())
>>> values.shape, kind in ("droplet", "bubble", "doublet")
((421,), True)
"""

from __future__ import annotations

import asyncio
import math
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import structlog

from drivers.faults import ModelError
from drivers.pump import ReactorWatch
from drivers.runtime import Link, Verdict
from protocols.messages import MAX_REPLICATE, Acquire, Role, Spectrum

__all__ = [
    "DropletNoise",
    "Grid",
    "SimulatedSpectrometer",
    "SpectrumModel",
    "droplet",
    "droplet_rng",
]

log = structlog.get_logger("drivers.spectrometer")


@runtime_checkable
class SpectrumModel(Protocol):
    """A forward model's optics: noise-free mean absorbance at ``wavelengths`` (nm)."""

    def spectrum(self, flows: Mapping[str, float], wavelengths: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class Grid:
    """The wavelength grid, ``start`` to ``stop`` inclusive in steps of ``step`` nm.

    >>> len(Grid(380, 800, 1).wavelengths())
    421
    """

    start: float = 380.0
    stop: float = 800.0
    step: float = 1.0

    def __post_init__(self) -> None:
        if not (0 < self.start < self.stop and self.step > 0):
            raise ValueError(f"grid needs 0 < start < stop and step > 0, got {self}")
        if not 2 <= self.n_points <= 8192:
            raise ValueError(f"grid has {self.n_points} points; 2..8192 allowed")

    @property
    def n_points(self) -> int:
        return math.floor((self.stop - self.start) / self.step + 1e-9) + 1

    def wavelengths(self) -> np.ndarray:
        return self.start + self.step * np.arange(self.n_points, dtype=float)

    @classmethod
    def parse(cls, text: str) -> Grid:
        """``"START:STOP:STEP"`` -> Grid."""
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"grid must be START:STOP:STEP, got {text!r}")
        return cls(*(float(p) for p in parts))


@dataclass(frozen=True, slots=True)
class DropletNoise:
    """What one droplet adds to the model's mean spectrum (see the module docstring).

    Attributes:
        flow_jitter: SD of the log of each channel's flow, per droplet.
        amplitude_jitter: SD of the multiplicative amplitude, per droplet.
        baseline_mean: mean baseline offset (AU).
        baseline_sd: SD of the baseline offset, per droplet (AU).
        baseline_range: the baseline is clipped to this range (AU).
        detector_sd: detector noise per point (AU).
        outlier_rate: probability that a droplet is an outlier.
        bubble_level: absorbance of an air bubble (AU, flat).
        doublet_factor: amplitude factor of a doublet (two droplets in the cell).
    """

    flow_jitter: float = 0.04
    amplitude_jitter: float = 0.03
    baseline_mean: float = 0.05
    baseline_sd: float = 0.02
    baseline_range: tuple[float, float] = (-0.04, 0.16)
    detector_sd: float = 0.005
    outlier_rate: float = 0.03
    bubble_level: float = 0.02
    doublet_factor: float = 1.8

    def __post_init__(self) -> None:
        sds = (self.flow_jitter, self.amplitude_jitter, self.baseline_sd, self.detector_sd)
        if min(sds) < 0:
            raise ValueError("noise SDs must be >= 0")
        if not 0.0 <= self.outlier_rate <= 1.0:
            raise ValueError("outlier_rate must be in [0, 1]")
        if self.baseline_range[0] > self.baseline_range[1]:
            raise ValueError("baseline_range must be (low, high)")


def droplet_rng(seed: int, condition: str, replicate: int) -> np.random.Generator:
    """The generator of one droplet: a function of seed, condition and replicate only."""
    return np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(condition.encode()), replicate])


def droplet(
    model: SpectrumModel,
    flows: Mapping[str, float],
    wavelengths: np.ndarray,
    rng: np.random.Generator,
    noise: DropletNoise,
) -> tuple[np.ndarray, str]:
    """One droplet's measured spectrum and its kind (``droplet``, ``bubble``, ``doublet``).

    Raises:
        ModelError: the model raised, or returned the wrong shape or non-finite values.
    """
    names = sorted(flows)
    eps = rng.normal(0.0, noise.flow_jitter, len(names))
    jittered = {n: float(flows[n]) * math.exp(e) for n, e in zip(names, eps, strict=True)}
    amplitude = max(0.0, 1.0 + rng.normal(0.0, noise.amplitude_jitter))
    lo, hi = noise.baseline_range
    baseline = float(np.clip(rng.normal(noise.baseline_mean, noise.baseline_sd), lo, hi))
    outlier = rng.random() < noise.outlier_rate
    bubble = rng.random() < 0.5
    detector = rng.normal(0.0, noise.detector_sd, wavelengths.shape)
    if outlier and bubble:
        return noise.bubble_level + detector, "bubble"
    try:
        mean = np.asarray(model.spectrum(jittered, wavelengths), dtype=float)
    except Exception as exc:
        raise ModelError(f"the model's spectrum() raised {type(exc).__name__}: {exc}") from exc
    if mean.shape != wavelengths.shape:
        raise ModelError(f"the model returned shape {mean.shape}, expected {wavelengths.shape}")
    if outlier:
        amplitude *= noise.doublet_factor
    values = amplitude * mean + baseline + detector
    if not np.all(np.isfinite(values)):
        raise ModelError("the model returned non-finite absorbance")
    return values, "doublet" if outlier else "droplet"


class SimulatedSpectrometer:
    """A UV-Vis detector on the droplet stream, its physics from ``model``.

    Args:
        model: the forward model (its ``spectrum`` is used).
        reactor: endpoint of the pump's reactor stream (connected).
        grid: the wavelength grid.
        droplet_interval_s: simulated seconds between droplets.
        acquire_timeout_s: simulated seconds to wait for a stable condition.
        time_scale: multiplies every simulated duration.
        noise: the droplet noise model.
        reactor_wait_s: wall seconds :meth:`start` waits for the reactor stream's
            first readback (so the hello follows it), then goes on without it.
        seed: seeds every droplet's generator.
        max_pending: acquires queued beyond this are refused.
        max_droplets: the most droplets one acquire may ask for (``n``); more is
            refused with a reason, whatever the agent sends (the wire allows 1000).
    """

    role: Role = "spectrometer"

    def __init__(
        self,
        model: SpectrumModel,
        *,
        reactor: str,
        grid: Grid | None = None,
        droplet_interval_s: float = 0.2,
        acquire_timeout_s: float = 30.0,
        time_scale: float = 1.0,
        noise: DropletNoise | None = None,
        seed: int = 0,
        reactor_wait_s: float = 2.0,
        max_pending: int = 100,
        max_droplets: int = 100,
    ) -> None:
        if not isinstance(model, SpectrumModel):
            raise TypeError(f"{model!r} has no spectrum(flows, wavelengths) method")
        if min(droplet_interval_s, acquire_timeout_s, time_scale) < 0:
            raise ValueError("durations and time_scale must be >= 0")
        if max_droplets < 1:
            raise ValueError(f"max_droplets must be >= 1, got {max_droplets}")
        self.model = model
        self.max_droplets = max_droplets
        self.watch = ReactorWatch(reactor)
        self.grid = grid or Grid()
        self.wavelengths = self.grid.wavelengths()
        self.droplet_interval_s = droplet_interval_s
        self.acquire_timeout_s = acquire_timeout_s
        self.time_scale = time_scale
        self.noise = noise or DropletNoise()
        self.seed = seed
        self.reactor_wait_s = reactor_wait_s
        self.instrument = (
            f"simulated UV-Vis spectrometer: {self.grid.start:g}-{self.grid.stop:g} nm "
            f"step {self.grid.step:g} ({self.grid.n_points} points), "
            f"model {type(model).__module__}.{type(model).__qualname__}"
        )
        self._pending: asyncio.Queue[Acquire] = asyncio.Queue(max_pending)
        self._replicates: OrderedDict[str, int] = OrderedDict()
        self._link: Link | None = None

    async def start(self, link: Link) -> None:
        self._link = link
        link.spawn(self.watch.run(link.context), name="reactor-watch")
        # say hello only once the pump's state is known, if the pump is there at all
        if not await self.watch.wait_connected(self.reactor_wait_s):
            log.warning(
                "reactor_silent", endpoint=self.watch.endpoint, waited_s=self.reactor_wait_s
            )
        link.spawn(self._serve(), name="acquisitions")

    async def on_link_lost(self) -> None:
        pass  # nothing to make safe; queued acquires finish or time out

    async def stop(self) -> None:
        pass

    async def on_acquire(self, msg: Acquire) -> Verdict:
        if msg.n > self.max_droplets:
            return Verdict.refuse(
                f"n={msg.n} droplets is above this spectrometer's limit of "
                f"{self.max_droplets} per acquire"
            )
        if msg.first is not None and msg.first + msg.n - 1 > MAX_REPLICATE:
            return Verdict.refuse(
                f"replicates {msg.first}..{msg.first + msg.n - 1} go past the highest "
                f"index a spectrum may carry, {MAX_REPLICATE}"
            )
        try:
            self._pending.put_nowait(msg)
        except asyncio.QueueFull:
            return Verdict.refuse(f"busy: {self._pending.qsize()} acquires already queued")
        return Verdict.accept()

    async def _serve(self) -> None:
        while True:
            msg = await self._pending.get()
            await self._acquire(msg)

    async def _acquire(self, msg: Acquire) -> None:
        link = self._link
        assert link is not None
        timeout = self.acquire_timeout_s * self.time_scale
        flows = await self.watch.wait_current(msg.condition, timeout)
        if flows is None:
            link.fault(
                "condition_not_stable",
                f"acquire {msg.cmd_id}: the pump was not stable on condition "
                f"{msg.condition!r} within {timeout:.3g} s",
                severity="warning",
            )
            return
        log.info(
            "acquire_started", cmd_id=msg.cmd_id, condition=msg.condition, n=msg.n, first=msg.first
        )
        for i in range(msg.n):
            await asyncio.sleep(self.droplet_interval_s * self.time_scale)
            k = self._next_replicate(msg.condition) if msg.first is None else msg.first + i
            rng = droplet_rng(self.seed, msg.condition, k)
            try:
                values, kind = await asyncio.to_thread(
                    droplet, self.model, flows, self.wavelengths, rng, self.noise
                )
            except ModelError as exc:
                link.fault("model_error", f"condition {msg.condition!r} replicate {k}: {exc}")
                continue
            if kind != "droplet":
                log.debug("outlier_droplet", condition=msg.condition, replicate=k, outlier=kind)
            link.publish(
                Spectrum,
                condition=msg.condition,
                replicate=k,
                wl_start=self.grid.start,
                wl_step=self.grid.step,
                n_points=self.grid.n_points,
                acquire_id=msg.cmd_id,
                values=values,
            )

    def _next_replicate(self, condition: str) -> int:
        k = self._replicates.get(condition, 0)
        self._replicates[condition] = k + 1
        self._replicates.move_to_end(condition)
        while len(self._replicates) > 10_000:
            self._replicates.popitem(last=False)
        return k
