"""Strategies and the expansion rule by the names the campaign file uses."""

from __future__ import annotations

from typing import Any

from agent.core.strategies.base import Strategy

__all__ = ["STRATEGY_NAMES", "make_expansion", "make_strategy"]

STRATEGY_NAMES = ("lhs", "lp-ei", "qlognei", "ucb")


def make_strategy(kind: str, *, beta: float = 2.0, noise: str = "learned") -> Strategy:
    """The strategy called ``kind`` (one of :data:`STRATEGY_NAMES`).

    ``beta`` is UCB's exploration weight; ``noise`` the GP noise model of the
    BO strategies ("learned", or "known": the replicate spread ``loss_sd``).

    Raises:
        ValueError: unknown name.
    """
    if kind == "lhs":
        from agent.core.strategies.lhs import LatinHypercube

        return LatinHypercube()
    if kind == "lp-ei":
        from agent.core.strategies.bo import LocalPenalizationEI

        return LocalPenalizationEI(noise=noise)  # type: ignore[arg-type]
    if kind == "qlognei":
        from agent.core.strategies.bo import QLogNEI

        return QLogNEI(noise=noise)  # type: ignore[arg-type]
    if kind == "ucb":
        from agent.core.strategies.bo import UpperConfidenceBound

        return UpperConfidenceBound(beta=beta, noise=noise)
    raise ValueError(f"unknown strategy {kind!r}; choose one of {', '.join(STRATEGY_NAMES)}")


def make_expansion(*, enabled: bool = True, **settings: Any) -> Any:
    """The boundary-expansion rule with ``settings``, or None when disabled."""
    if not enabled:
        return None
    from agent.core.expansion import BoundaryExpansion

    return BoundaryExpansion(**settings)
