"""What a journal gives back to rebuild a campaign: the facts that define its state.

:meth:`Campaign.restore <agent.core.campaign.Campaign.restore>` takes these, in
the order they happened, and rebuilds the campaign an uninterrupted run would
hold at that point. They are a small subset of what the shell journals (every
event and decision is written, for audit and export); only these change what
the campaign does next. Small immutable value classes; plain Python and numpy.

>>> import numpy as np
>>> RoundProposed(1, np.zeros((1, 2)), ("lhs",), {}, None).round
1
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "ConditionOutcome",
    "ConditionRetried",
    "Fact",
    "PhaseLabelled",
    "RoundProposed",
    "SetpointAnswered",
    "SetpointSent",
]


@dataclass(frozen=True)
class RoundProposed:
    """A round's batch as it was accepted (never recomputed on restore).

    ``rng_state`` is the campaign generator's state just after the batch was
    proposed (``numpy.random.Generator.bit_generator.state``), so that the next
    proposal after a restore equals the one an uninterrupted run would make.
    """

    round: int
    x: np.ndarray
    strategy: tuple[str, ...]
    notes: dict[str, object]
    rng_state: dict[str, Any] | None


@dataclass(frozen=True)
class SetpointSent:
    """The first sending of a setpoint command (resends are not facts)."""

    condition: str
    cmd_id: str
    attempt: int


@dataclass(frozen=True)
class SetpointAnswered:
    """The pump acknowledged (or refused) a setpoint."""

    cmd_id: str
    accepted: bool


@dataclass(frozen=True)
class ConditionRetried:
    """An attempt of ``condition`` stalled and was retried (counts against the budget)."""

    condition: str


@dataclass(frozen=True)
class PhaseLabelled:
    condition: str
    phase: str
    confidence: float


@dataclass(frozen=True)
class ConditionOutcome:
    """A condition finished: ``status`` is ``complete`` or ``failed``."""

    condition: str
    status: str
    median_loss: float | None = None
    loss_sd: float | None = None
    median_sd: float | None = None
    median_spectrum: np.ndarray | None = field(default=None, repr=False)
    n_used: int = 0
    n_rejected: int = 0
    failure: str = ""


Fact = (
    RoundProposed
    | SetpointSent
    | SetpointAnswered
    | ConditionRetried
    | PhaseLabelled
    | ConditionOutcome
)
