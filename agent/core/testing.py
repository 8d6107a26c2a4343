"""Test doubles for the pure core: a small campaign that needs no torch and no files.

Used by tests and doctests; never used at run time.
"""

from __future__ import annotations

import numpy as np

from agent.core.campaign import CampaignSettings
from agent.core.objective import AgnpLoss
from agent.core.replicates import Grid, ReplicateSettings
from agent.core.space import Channel, ChannelMap, LinearConstraint, Parameter, Space
from agent.core.stopping import MaxRounds
from agent.core.strategies.lhs import LatinHypercube

__all__ = ["TOY_GRID", "TOY_TARGET", "agnp_space", "toy_settings", "toy_spectrum"]

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
