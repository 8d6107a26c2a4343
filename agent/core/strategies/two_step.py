r"""The two-step schedule: BO alone until the spectrum model is trusted, then BO + DNN.

The study (Mekki-Berrada et al. 2021) ran batch BO for its first rounds, then
split each round between BO and a neural network trained on every spectrum so
far. :class:`TwoStep` (``"two-step"``) does that each round, from the data alone:

1. **accuracy check**: with ``R`` the latest round measured, a spectrum model
   trained on every round before ``R`` predicts round ``R``'s recipes; its
   accuracy is the mean squared error (``model_mse``) and the mean cosine
   similarity (``model_cosine``) of its predicted and the measured median
   spectra of round ``R`` (:func:`~agent.core.strategies.spectrum_model.spectrum_agreement`);
2. **current model**: a model trained on every round;
3. **stability**: the mean cosine similarity (``model_stability``) of the
   spectra that the two models predict on ``probes`` fixed probe recipes
   (scrambled Sobol points of the current box, seed 0, the feasible ones):
   how much one more round changed the model;
4. **the split**: when the check passes (``model_cosine >= trust_cosine`` and,
   if set, ``model_mse <= trust_mse``), the batch is ``n - dnn_points`` BO
   points followed by ``dnn_points`` DNN points
   (:class:`~agent.core.strategies.dnn.DnnProposals`, kept apart from the BO
   points and the measured recipes); otherwise all ``n`` are BO points.

Every proposal is tagged with its maker (the BO strategy's name, e.g.
``"lp-ei"``, or ``"dnn"``). ``notes["metrics"]`` carries the BO strategy's
numbers plus ``model_mse``, ``model_cosine`` and ``model_stability`` (the keys
the stop rules :class:`~agent.core.stopping.ModelAccuracy` and
:class:`~agent.core.stopping.ModelStability` read); ``notes["schedule"]``
says "bo" or "bo+dnn" and why.

The check is made afresh each round rather than latched: a model that fails
on a new round (e.g. one in a newly widened part of the box) gets no points
that round. Nothing is remembered between rounds, so a resumed campaign
proposes exactly what an uninterrupted one would (two fits a round instead of
one; each takes about a second).

Fallbacks, each noted in ``notes["fallback"]`` (the campaign logs a
``strategy_fallback`` warning) with the round all BO: no spectra or spectra
off the campaign grid, a diverged fit (non-finite loss), a DNN batch that
cannot be completed.

>>> from agent.core.objective import AgnpLoss
>>> TwoStep(AgnpLoss(np.array([0.0, 1.0]), np.array([1.0, 2.0])), dnn_points=7).name
'two-step'
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from scipy.stats import qmc

from agent.core.space import Space
from agent.core.strategies.base import Batch, Observations, Strategy, StrategyError
from agent.core.strategies.dnn import DnnProposals, training_spectra
from agent.core.strategies.feasibility import fit_feasibility
from agent.core.strategies.spectrum_model import (
    FittedSpectrumModel,
    SpectrumEnsemble,
    spectrum_agreement,
)

__all__ = ["TwoStep"]


class TwoStep:
    """BO until the spectrum model predicts an unseen round well, then BO + DNN.

    Args:
        loss: the campaign's objective (spectrum -> loss).
        bo: the BO strategy (default: :class:`~agent.core.strategies.bo.LocalPenalizationEI`).
        dnn_points: DNN points per round once trusted (the rest are BO's).
        trust_cosine: the accuracy check's least mean cosine similarity.
        trust_mse: the check's largest mean squared error (None: not checked).
        model: the spectrum model's settings.
        dnn: the DNN proposer's settings (its ``loss`` is replaced by ``loss``).
        probes: probe recipes for the stability metric.
        min_train: fewest spectra before the latest round for the check to run.
    """

    name = "two-step"

    def __init__(
        self,
        loss: Any,
        *,
        bo: Strategy | None = None,
        dnn_points: int = 7,
        trust_cosine: float = 0.95,
        trust_mse: float | None = None,
        model: SpectrumEnsemble | None = None,
        dnn: DnnProposals | None = None,
        probes: int = 64,
        min_train: int = 10,
    ) -> None:
        if dnn_points < 0 or probes < 1 or min_train < 3:
            raise ValueError("need dnn_points >= 0, probes >= 1, min_train >= 3")
        if not (0 < trust_cosine <= 1) or (trust_mse is not None and trust_mse <= 0):
            raise ValueError("need 0 < trust_cosine <= 1 and trust_mse > 0")
        if bo is None:
            from agent.core.strategies.bo import LocalPenalizationEI

            bo = LocalPenalizationEI()
        self.loss = loss
        self.bo = bo
        self.dnn_points = dnn_points
        self.trust_cosine = trust_cosine
        self.trust_mse = trust_mse
        self.model = model or SpectrumEnsemble()
        self.dnn = dnn or DnnProposals(loss, model=self.model)
        self.dnn.loss = loss
        self.probes = probes
        self.min_train = min_train

    def propose(self, space: Space, data: Observations, n: int, rng: np.random.Generator) -> Batch:
        """Propose ``n`` recipes: BO only, or BO then DNN when the model is trusted.

        Raises:
            StrategyError: the BO strategy could not propose (the campaign falls
                back to its initial design); a failing model only costs the DNN share.
        """
        start = time.perf_counter()
        seed = int(rng.integers(0, 2**31 - 1))
        bo = self.bo.propose(space, data, n, rng)
        notes: dict[str, object] = dict(bo.notes)
        metrics: dict[str, float] = dict(bo.notes.get("metrics") or {})  # type: ignore[call-overload]
        try:
            fitted, check = self._check(space, data, seed)
        except StrategyError as exc:
            fitted, check = None, {"fallback": f"spectrum model unavailable: {exc}; all BO"}
        metrics.update(check.pop("metrics", {}))  # type: ignore[call-overload]
        notes.update(check)
        notes["metrics"] = metrics
        trusted = bool(check.get("trusted"))
        k = min(self.dnn_points, n) if trusted and fitted is not None else 0
        x, tags = bo.x, bo.strategy
        if k > 0:
            assert fitted is not None
            keep = n - k  # LP's greedy picks: the first n - k of n are those of a batch of n - k
            avoid = np.concatenate([data.x, bo.x[:keep]])
            try:
                feas = fit_feasibility(space, data, seed + 7)
                dnn = self.dnn.propose_from(fitted, space, avoid, k, seed + 2, feas)
            except StrategyError as exc:
                notes["fallback"] = f"DNN proposals failed: {exc}; all BO"
                notes["schedule"] = "bo"
            else:
                x = np.concatenate([bo.x[:keep], dnn.x])
                tags = (*bo.strategy[:keep], *dnn.strategy)
                notes.update(dnn.notes)
                notes["schedule"] = "bo+dnn"
        notes.setdefault("schedule", "bo")
        notes["split"] = {tag: tags.count(tag) for tag in dict.fromkeys(tags)}
        notes["two_step_seconds"] = round(time.perf_counter() - start, 4)
        return Batch(x=x, strategy=tuple(tags), notes=notes)

    def _check(
        self, space: Space, data: Observations, seed: int
    ) -> tuple[FittedSpectrumModel | None, dict[str, Any]]:
        """The current model (None while no check can run), the check's numbers and verdict."""
        spectra = training_spectra(data, len(self.loss.target))
        last = int(data.round.max()) if len(data) else 0
        seen, new = data.round < last, data.round == last
        if int(seen.sum()) < self.min_train or not bool(new.any()):
            return None, {
                "schedule": "bo",
                "trusted": False,
                "check": (
                    f"no unseen round to check on yet ({int(seen.sum())} spectra before "
                    f"round {last}, need {self.min_train})"
                ),
            }
        previous = self.model.fit(data.x[seen], spectra[seen], seed + 1)
        current = self.model.fit(data.x, spectra, seed)
        mse, cos = spectrum_agreement(previous.mean_spectra(data.x[new]), spectra[new])
        probes = _probes(space, self.probes)
        _, stability = spectrum_agreement(
            previous.mean_spectra(probes), current.mean_spectra(probes)
        )
        trusted = cos >= self.trust_cosine and (self.trust_mse is None or mse <= self.trust_mse)
        check = (
            f"model trained before round {last} predicts its {int(new.sum())} spectra: "
            f"cosine {cos:.4f} ({'>=' if cos >= self.trust_cosine else '<'} "
            f"{self.trust_cosine:g}), mse {mse:.3g}"
            + ("" if self.trust_mse is None else f" (limit {self.trust_mse:g})")
        )
        return current, {
            "model": current.notes,
            "trusted": trusted,
            "check": check,
            "metrics": {"model_mse": mse, "model_cosine": cos, "model_stability": stability},
        }


def _probes(space: Space, n: int) -> np.ndarray:
    """The fixed probe recipes: feasible scrambled Sobol points (seed 0) of the box."""
    u = qmc.Sobol(space.dim, scramble=True, seed=0).random(max(n, 2))
    x = space.from_unit(u)
    ok = space.is_feasible(x)
    return x[ok] if ok.any() else x[:1]
