"""Test doubles for the pure core: a small campaign that needs no torch and no files.

Used by tests and doctests; never used at run time.
"""

from __future__ import annotations

import numpy as np

from agent.core.campaign import CampaignSettings
from agent.core.objective import AgnpLoss
from agent.core.replicates import Grid, ReplicateSettings
from agent.core.space import Parameter, Space
from agent.core.stopping import MaxRounds
from agent.core.strategies.lhs import LatinHypercube

__all__ = ["TOY_GRID", "TOY_TARGET", "toy_settings", "toy_spectrum"]

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
