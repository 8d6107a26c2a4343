"""Test doubles for the pure core: a small campaign that needs no torch and no files.

Used by tests and doctests; never used at run time.
"""

from __future__ import annotations

import numpy as np
import torch

from agent.core.campaign import Campaign, CampaignSettings
from agent.core.events import (
    AcquireAcked,
    Decision,
    DriverDown,
    DriverFault,
    DriverUp,
    Event,
    FlowStable,
    PhaseLabelIn,
    ProposalReady,
    RequestProposal,
    SendAcquire,
    SendSafeState,
    SendSetpoint,
    SetpointAcked,
    SpectrumIn,
    Tick,
)
from agent.core.objective import AgnpLoss
from agent.core.replicates import Grid, ReplicateSettings
from agent.core.space import Channel, ChannelMap, LinearConstraint, Parameter, Space
from agent.core.stopping import MaxRounds
from agent.core.strategies.lhs import LatinHypercube

__all__ = [
    "TOY_GRID",
    "TOY_TARGET",
    "HalfspaceFeasibility",
    "SilentDriverLab",
    "ToyLab",
    "agnp_space",
    "toy_settings",
    "toy_spectrum",
]

TOY_GRID = Grid(400.0, 10.0, 5)
TOY_TARGET = np.array([0.0, 0.4, 1.0, 0.4, 0.0])


def toy_settings(
    *,
    rounds: int = 3,
    batch_size: int = 4,
    replicates: ReplicateSettings | None = None,
    required_roles: tuple[str, ...] = ("pump", "spectrometer", "xrd"),
    **overrides: object,
) -> CampaignSettings:
    """A 2-parameter campaign (``a`` in [0, 1] of hard [0, 2], ``b`` in [0, 1]),
    no pump channels (setpoints carry no flows), LHS every round."""
    space = Space(
        parameters=(
            Parameter("a", 0.0, 1.0, 0.0, 2.0, expandable=True, resolution=0.001),
            Parameter("b", 0.0, 1.0, 0.0, 1.0, resolution=0.001),
        ),
    )
    kwargs: dict[str, object] = dict(
        campaign_id="toy",
        space=space,
        loss=AgnpLoss(TOY_TARGET, TOY_GRID.wavelengths),
        grid=TOY_GRID,
        replicates=replicates
        or ReplicateSettings(
            min_count=3, max_count=6, per_acquire=3, settle_window=1, timeout_s=10.0
        ),
        initial_strategy=LatinHypercube(),
        strategy=LatinHypercube(),
        stop_rule=MaxRounds(rounds),
        batch_size=batch_size,
        required_roles=required_roles,
        label_role="xrd" if "xrd" in required_roles else None,
        heartbeat_timeout_s=5.0,
        settle_timeout_s=5.0,
    )
    kwargs.update(overrides)
    return CampaignSettings(**kwargs)  # type: ignore[arg-type]


def toy_spectrum(recipe: dict[str, float]) -> np.ndarray:
    """A spectrum whose loss falls as ``a`` approaches 0.7 (peak 1.0)."""
    shift = abs(recipe["a"] - 0.7)
    return np.clip(TOY_TARGET + shift * np.array([0.8, 0.2, -0.3, 0.2, 0.8]), 0.0, None)


def agnp_space(*, constraint_upper: float | None = 90.0, agno3_max_flow: float = 800.0) -> Space:
    """The reference campaign's space, as in examples/agnp.toml (shares in %).

    ``constraint_upper`` is the bound of the share sum (None: no constraint);
    ``agno3_max_flow`` the AgNO3 channel's flow limit, to make that limit bind.
    """
    shares = ("q_agno3", "q_pva", "q_tsc", "q_seed")
    constraints = (
        (LinearConstraint(dict.fromkeys(shares, 1.0), constraint_upper),)
        if constraint_upper is not None
        else ()
    )
    return Space(
        parameters=(
            Parameter("q_agno3", 4.0, 20.0, 0.5, 80.0, expandable=True, resolution=0.1, unit="%"),
            Parameter("q_pva", 10.0, 40.0, 10.0, 40.0, resolution=0.1, unit="%"),
            Parameter("q_tsc", 4.0, 20.0, 0.5, 80.0, expandable=True, resolution=0.1, unit="%"),
            Parameter("q_seed", 4.0, 20.0, 0.5, 80.0, expandable=True, resolution=0.1, unit="%"),
            Parameter("q_tot", 200.0, 1000.0, 100.0, 1000.0, expandable=True, resolution=1.0),
        ),
        constraints=constraints,
        channels=ChannelMap(
            "q_tot",
            (
                Channel("agno3", share="q_agno3", max_flow=agno3_max_flow),
                Channel("pva", share="q_pva", max_flow=800.0),
                Channel("tsc", share="q_tsc", max_flow=800.0),
                Channel("seed", share="q_seed", max_flow=800.0),
                Channel("water", share="rest", max_flow=1000.0),
                Channel("oil", ratio=1.0, max_flow=1000.0),
            ),
        ),
    )


class ToyLab:
    """Perfect instruments that answer a campaign's commands at once, on a fake clock.

    Each step goes core -> :meth:`record` -> act, the order of the live runtime
    (which journals at :meth:`record`'s place); a proposal request is carried out
    at once, as the shell's worker thread would. Every decision lands in
    :attr:`log`. Subclasses override :meth:`record` (e.g. to journal) and
    :meth:`spectrum` (another world).

    Args:
        campaign: the campaign to serve.
        noise: standard deviation of the white noise on each toy spectrum.
        seed: seeds that noise.
        dt: fake seconds per command served.
        idle_tick: when nothing is left to answer and the campaign has not
            stopped, advance the clock this much and feed a :class:`Tick` (the
            drivers still heard from), so that timers fire; None (the default)
            stops serving instead.
    """

    roles = ("pump", "spectrometer", "xrd")

    def __init__(
        self,
        campaign: Campaign,
        *,
        noise: float = 0.0,
        seed: int = 0,
        dt: float = 0.01,
        idle_tick: float | None = None,
    ) -> None:
        self.c = campaign
        self.now = 0.0
        self.dt = dt
        self.idle_tick = idle_tick
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.log: list[Decision] = []
        self.replicate_k: dict[str, int] = {}

    def record(self, event: Event | None, decisions: list[Decision], **kw: object) -> None:
        """Called with each event and the decisions it led to, before they are acted on."""

    def spectrum(self, condition: str) -> np.ndarray:
        """One droplet's spectrum for ``condition`` (on the toy grid)."""
        recipe = self.c.conditions[condition].recipe
        return toy_spectrum(recipe) + self.noise * self.rng.standard_normal(TOY_GRID.n)

    def delivered(self, condition: str, replicate: int) -> bool:
        """Whether droplet ``replicate`` of ``condition`` reaches the campaign (False:
        measured, numbered, and lost on the way)."""
        return True

    def label(self, condition: str) -> tuple[str, float] | None:
        """The XRD's label for ``condition`` at once, or None to withhold it (a late label)."""
        return "Ag-fcc", 0.9

    def step(self, event: Event | None, decisions: list[Decision], **kw: object) -> list[Decision]:
        self.record(event, decisions, **kw)
        self.log += decisions
        out: list[Decision] = []
        for d in decisions:
            out.append(d)
            if isinstance(d, RequestProposal):
                batch, notes = self.c.propose_batch()
                ev = ProposalReady(batch, notes, self.now)
                out += self.step(ev, self.c.handle(ev), rng_state=self.c.rng_state)
        return out

    def feed(self, event: Event) -> list[Decision]:
        return self.step(event, self.c.handle(event))

    def bring_up(self) -> list[Decision]:
        """Start the campaign and bring every driver up; returns the decisions to serve."""
        out = self.step(None, self.c.start(self.now))
        for role in self.roles:
            out += self.feed(DriverUp(role, self.now))
        return out

    def serve(self, decisions: list[Decision], max_steps: int = 20_000) -> None:
        """Answer ``decisions`` and everything they lead to (at most ``max_steps``)."""
        queue = list(decisions)
        grid = self.c.settings.grid
        steps = 0
        while steps < max_steps:
            steps += 1
            if not queue:
                if self.idle_tick is None or self.c.stopped:
                    break
                self.now += self.idle_tick
                for role in self.roles:
                    self.c.driver_seen(role, self.now)
                queue += self.feed(Tick(self.now))
                continue
            d = queue.pop(0)
            self.now += self.dt
            if isinstance(d, SendSetpoint):
                queue += self.feed(SetpointAcked(d.cmd_id, True, "", self.now))
                queue += self.feed(FlowStable(d.cmd_id, d.condition, self.now))
            elif isinstance(d, SendAcquire) and d.role == "spectrometer":
                queue += self.feed(AcquireAcked(d.cmd_id, True, "", self.now))
                for i in range(d.n):  # numbered from the acquire's first, as a driver does
                    k = self.replicate_k.get(d.condition, 0) if d.first is None else d.first + i
                    self.replicate_k[d.condition] = k + 1
                    values = self.spectrum(d.condition)
                    if not self.delivered(d.condition, k):
                        continue
                    queue += self.feed(
                        SpectrumIn(
                            d.condition,
                            k,
                            values,
                            grid.start,
                            grid.step,
                            self.now,
                            acquire_id=d.cmd_id,
                        )
                    )
            elif isinstance(d, SendAcquire):
                queue += self.feed(AcquireAcked(d.cmd_id, True, "", self.now))
                label = self.label(d.condition)
                if label is not None:
                    queue += self.feed(PhaseLabelIn(d.condition, *label, self.now))
            elif isinstance(d, SendSafeState):
                queue += self.feed(SetpointAcked(d.cmd_id, True, "", self.now))

    def run(self, max_steps: int = 20_000) -> None:
        """Bring up and serve until nothing is left to do."""
        self.serve(self.bring_up(), max_steps)


class SilentDriverLab(ToyLab):
    """A :class:`ToyLab` in which one driver drops out once, and comes back.

    When the spectrometer acknowledges its first acquire of ``condition``,
    ``role`` is counted down (a :class:`DriverDown`, as after a heartbeat
    timeout) or, with ``fault`` given, reports that fatal fault (a
    :class:`DriverFault`); nothing it sends arrives until it is back. It is back
    (a hello from a new session) once the pump has acknowledged the safe state
    the pause brought, or at once if the pause brought none.
    """

    def __init__(
        self,
        campaign: Campaign,
        *,
        role: str = "spectrometer",
        condition: str = "r01-c02",
        fault: str | None = None,
        **kw: object,
    ) -> None:
        super().__init__(campaign, **kw)  # type: ignore[arg-type]
        self.role, self.condition, self.fault = role, condition, fault
        self.silent = False
        self.dropped_out_at: float | None = None

    def feed(self, event: Event) -> list[Decision]:
        safe_acked = isinstance(event, SetpointAcked) and event.cmd_id.endswith(".safe")
        if self.silent and self._from_role(event) and not safe_acked:
            return []  # (a faulted pump still answers its safe state)
        out = super().feed(event)
        trigger = (
            isinstance(event, AcquireAcked)
            and event.cmd_id.startswith(f"{self.c.settings.campaign_id}.{self.condition}.")
            and ".spectrometer." in event.cmd_id
        )
        if trigger and self.dropped_out_at is None:
            self.silent, self.dropped_out_at = True, self.now
            gone: Event = (
                DriverDown(self.role, self.now)
                if self.fault is None
                else DriverFault(self.role, self.fault, "fatal", "planted", self.now)
            )
            down = super().feed(gone)
            out += down
            if not any(isinstance(d, SendSafeState) for d in down):
                out += self._back()
        elif self.silent and safe_acked:
            out += self._back()
        return out

    def _back(self) -> list[Decision]:
        self.silent = False
        return super().feed(DriverUp(self.role, self.now, "back"))

    def _from_role(self, event: Event) -> bool:
        if isinstance(event, SpectrumIn | PhaseLabelIn):
            return event.source == self.role
        if isinstance(event, AcquireAcked):
            return f".{self.role}." in event.cmd_id
        return self.role == "pump" and isinstance(event, SetpointAcked | FlowStable)


class HalfspaceFeasibility:
    """A stand-in feasibility model: ``P = 1`` where ``x[col] <= limit``, else ``p_out``.

    Duck-types :class:`~agent.core.strategies.feasibility.FeasibilityModel`
    (``log_prob``, ``excluded``, ``p_floor``, ``notes``) so that tests can plant a
    known factor in an acquisition.
    """

    def __init__(
        self, space: Space, col: int, limit: float, *, p_out: float = 1e-3, p_floor: float = 0.05
    ) -> None:
        self.space, self.col, self.limit = space, col, limit
        self.p_out, self.p_floor = p_out, p_floor

    def log_prob(self, u: torch.Tensor) -> torch.Tensor:
        x = self.space.from_unit(u.detach().reshape(-1, u.shape[-1]).numpy())
        inside = torch.as_tensor(x[:, self.col] <= self.limit).reshape(u.shape[:-1])
        out = torch.full(u.shape[:-1], float(np.log(self.p_out)), dtype=torch.float64)
        return out.masked_fill(inside, 0.0)

    def excluded(self, u: torch.Tensor) -> torch.Tensor:
        return (
            self.log_prob(u) < float(np.log(self.p_floor))
            if self.p_floor > 0
            else (torch.zeros(u.shape[:-1], dtype=torch.bool))
        )

    def notes(self) -> dict[str, object]:
        return {"feasibility": "halfspace"}
