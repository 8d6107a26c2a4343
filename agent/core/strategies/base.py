"""What every strategy sees and returns: the ask/tell boundary of the optimisers.

A strategy is a configurable object whose :meth:`Strategy.propose` takes the
current :class:`~agent.core.space.Space`, the :class:`Observations` so far,
how many points to propose and a seeded generator, and returns a
:class:`Batch` in physical units. Plain numpy at the boundary; tensors stay
inside. Constructors take settings only (no sockets, no clients).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from agent.core.space import Space

__all__ = ["Batch", "Observations", "Strategy", "StrategyError"]


class StrategyError(Exception):
    """A strategy could not propose (the caller falls back and logs why)."""


@dataclass(frozen=True)
class Observations:
    """Everything measured so far, in physical units.

    Attributes:
        x: recipes, shape (n, d), ordered as ``space.names``.
        loss: median loss per recipe, shape (n,).
        loss_sd: replicate spread of the loss per recipe (NaN when unknown), (n,).
        spectra: median spectrum per recipe, shape (n, n_wavelengths), or None
            when no spectra are known (scalar black-box benchmarks).
        round: the round each recipe was measured in, shape (n,).
        feasible: per recipe 1.0 (the required phase), 0.0 (another phase) or
            NaN (no label yet), shape (n,); None when no phase is required
            (no feasibility model).
        p_floor: candidates the feasibility model gives less than this
            probability are never proposed.
    """

    x: np.ndarray
    loss: np.ndarray
    loss_sd: np.ndarray
    spectra: np.ndarray | None = None
    round: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    feasible: np.ndarray | None = None
    p_floor: float = 0.05

    @classmethod
    def empty(cls, dim: int) -> Observations:
        return cls(
            x=np.zeros((0, dim)),
            loss=np.zeros(0),
            loss_sd=np.zeros(0),
            spectra=None,
            round=np.zeros(0, dtype=int),
        )

    def __len__(self) -> int:
        return len(self.loss)


@dataclass(frozen=True)
class Batch:
    """Proposed recipes (n, d) in physical units, each tagged with its maker.

    ``notes`` carries what the strategy wants logged (e.g. a fallback reason,
    GP lengthscales); plain JSON-able values only.
    """

    x: np.ndarray
    strategy: tuple[str, ...]
    notes: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.strategy) != len(self.x):
            raise ValueError("one strategy tag per proposed recipe")


@runtime_checkable
class Strategy(Protocol):
    """Anything that proposes a batch of recipes.

    A strategy that never reads ``data.spectra`` may say so with a class
    attribute ``reads_spectra = False``: the campaign then does not stack every
    median spectrum measured so far for it (a copy of the whole history's
    spectra at every round). Without the attribute it is given them.
    """

    name: str

    def propose(self, space: Space, data: Observations, n: int, rng: np.random.Generator) -> Batch:
        """Propose ``n`` feasible recipes inside ``space``'s current box."""
        ...
