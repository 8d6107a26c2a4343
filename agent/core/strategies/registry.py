"""Strategies and the expansion rule by the names the campaign file uses."""

from __future__ import annotations

from typing import Any

from agent.core.strategies.base import Strategy

__all__ = ["STRATEGY_NAMES", "make_expansion", "make_strategy"]

STRATEGY_NAMES = ("lhs", "lp-ei", "qlognei", "ucb", "two-step")


def make_strategy(
    kind: str,
    *,
    beta: float = 2.0,
    noise: str = "learned",
    loss: Any = None,
    two_step: dict[str, Any] | None = None,
) -> Strategy:
    """The strategy called ``kind`` (one of :data:`STRATEGY_NAMES`).

    ``beta`` is UCB's exploration weight; ``noise`` the GP noise model of the
    BO strategies ("learned", or "known": the replicate spread ``loss_sd``).
    ``"two-step"`` needs the campaign's objective ``loss`` (it scores predicted
    spectra) and takes its settings from ``two_step``: ``bo`` (the BO
    strategy's name), ``dnn_points``, ``trust_cosine``, ``trust_mse``,
    ``members``, ``optimism``, ``min_distance``.

    Raises:
        ValueError: unknown name, or "two-step" without a loss.
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
    if kind == "two-step":
        return _two_step(loss, beta=beta, noise=noise, **(two_step or {}))
    raise ValueError(f"unknown strategy {kind!r}; choose one of {', '.join(STRATEGY_NAMES)}")


def make_expansion(*, enabled: bool = True, **settings: Any) -> Any:
    """The boundary-expansion rule with ``settings``, or None when disabled."""
    if not enabled:
        return None
    from agent.core.expansion import BoundaryExpansion

    return BoundaryExpansion(**settings)


def _two_step(
    loss: Any,
    *,
    beta: float,
    noise: str,
    bo: str = "lp-ei",
    dnn_points: int = 7,
    trust_cosine: float = 0.95,
    trust_mse: float | None = None,
    members: int = 5,
    optimism: float = 0.0,
    min_distance: float = 0.1,
) -> Strategy:
    if loss is None:
        raise ValueError(
            "strategy two-step needs the campaign's loss (it scores predicted spectra)"
        )
    if bo not in ("lp-ei", "qlognei", "ucb"):
        raise ValueError(f"two-step's bo must be lp-ei, qlognei or ucb, got {bo!r}")
    from agent.core.strategies.dnn import DnnProposals
    from agent.core.strategies.spectrum_model import SpectrumEnsemble
    from agent.core.strategies.two_step import TwoStep

    model = SpectrumEnsemble(members=members)
    return TwoStep(
        loss,
        bo=make_strategy(bo, beta=beta, noise=noise),
        dnn_points=dnn_points,
        trust_cosine=trust_cosine,
        trust_mse=trust_mse,
        model=model,
        dnn=DnnProposals(loss, model=model, optimism=optimism, min_distance=min_distance),
    )
