"""Stop rules: small objects that look at the campaign's progress and return a
:class:`StopReason` or ``None``.

Rules compose with :class:`AnyOf` / :class:`AllOf`. Each rule is a pure
function of a :class:`Progress` snapshot (plus, for windowed rules, the history
it keeps itself).

>>> rule = AnyOf((MaxRounds(3), TargetLoss(0.1)))
>>> rule(Progress(rounds=3, conditions=45, best_loss=0.4)).rule
'max_rounds'
>>> rule(Progress(rounds=1, conditions=15, best_loss=0.5)) is None
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = [
    "AllOf",
    "AnyOf",
    "MaxConditions",
    "MaxRounds",
    "Progress",
    "StopReason",
    "StopRule",
    "TargetLoss",
]


@dataclass(frozen=True)
class Progress:
    """What stop rules see: counts so far and the best median loss per round.

    Attributes:
        rounds: completed rounds.
        conditions: completed (not failed) conditions.
        best_loss: best median loss so far (None before any result).
        best_by_round: best median loss after each completed round.
        elapsed_s: campaign time since start.
    """

    rounds: int
    conditions: int
    best_loss: float | None
    best_by_round: tuple[float, ...] = ()
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class StopReason:
    """Which rule fired, a sentence, and the numbers behind it."""

    rule: str
    reason: str
    numbers: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class StopRule(Protocol):
    def __call__(self, progress: Progress) -> StopReason | None: ...


@dataclass(frozen=True)
class MaxRounds:
    """Stop after ``n`` completed rounds: fires when ``rounds >= n``."""

    n: int

    def __call__(self, progress: Progress) -> StopReason | None:
        if progress.rounds >= self.n:
            return StopReason(
                "max_rounds",
                f"round budget spent: {progress.rounds} of {self.n} rounds",
                {"rounds": progress.rounds, "max_rounds": self.n},
            )
        return None


@dataclass(frozen=True)
class MaxConditions:
    """Stop after ``n`` completed conditions: fires when ``conditions >= n``."""

    n: int

    def __call__(self, progress: Progress) -> StopReason | None:
        if progress.conditions >= self.n:
            return StopReason(
                "max_conditions",
                f"condition budget spent: {progress.conditions} of {self.n}",
                {"conditions": progress.conditions, "max_conditions": self.n},
            )
        return None


@dataclass(frozen=True)
class TargetLoss:
    """Stop once the best median loss is at or below ``level``."""

    level: float

    def __call__(self, progress: Progress) -> StopReason | None:
        if progress.best_loss is not None and progress.best_loss <= self.level:
            return StopReason(
                "target_loss",
                f"best median loss {progress.best_loss:.4f} <= target {self.level:.4f}",
                {"best_loss": progress.best_loss, "target": self.level},
            )
        return None


@dataclass(frozen=True)
class AnyOf:
    """Fires with the first member rule that fires."""

    rules: Sequence[StopRule]

    def __call__(self, progress: Progress) -> StopReason | None:
        for rule in self.rules:
            reason = rule(progress)
            if reason is not None:
                return reason
        return None


@dataclass(frozen=True)
class AllOf:
    """Fires when every member rule fires; the reasons are joined."""

    rules: Sequence[StopRule]

    def __call__(self, progress: Progress) -> StopReason | None:
        reasons = [rule(progress) for rule in self.rules]
        if not reasons or any(r is None for r in reasons):
            return None
        fired = [r for r in reasons if r is not None]
        numbers: dict[str, float] = {}
        for r in fired:
            numbers.update(r.numbers)
        return StopReason(
            "all_of." + ".".join(r.rule for r in fired),
            " and ".join(r.reason for r in fired),
            numbers,
        )
