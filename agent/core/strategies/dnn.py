r"""Proposals from the spectrum model: recipes whose *predicted spectrum* scores best.

The spectrum model (:mod:`agent.core.strategies.spectrum_model`) predicts a
recipe's whole spectrum; the campaign's own objective (the same
:class:`~agent.core.objective.AgnpLoss` object that scores measured spectra,
on its torch path) turns each member's prediction into a loss. A recipe's
score is the ensemble's mean predicted loss minus an optional optimism bonus::

    score(x) = mean_j loss(f_j(x)) - optimism * sd_j loss(f_j(x))

A batch of ``n`` is built in three steps:

1. candidates: ``candidates`` scrambled Sobol points of the current box
   (``scipy.stats.qmc``), kept when :meth:`Space.is_feasible` accepts them
   (box, hard limits, linear constraints, pump channels);
2. refinement: the ``refine_starts`` best candidates descend ``score`` by
   Adam through the network (in the unit box, clamped to it) for
   ``refine_steps`` steps; each start keeps its best *feasible* iterate;
3. selection: greedily by score, skipping a point within the pump's
   resolution (every coordinate) of a measured recipe, of a recipe to avoid
   (e.g. the BO points of the same round) or of a chosen one (the separation
   rule of BO), and one closer than ``min_distance`` (Euclidean, unit box) to a
   chosen one, so that the batch is not 15 copies of one predicted optimum;
   the distance is halved when too few points are left.

``optimism`` defaults to 0: in the two-step schedule BO explores and the
network exploits (as the study's DNN did, scoring a grid by predicted loss);
the spread is logged with every proposal (``notes["dnn_spread"]``) all the same.

>>> from agent.core.objective import AgnpLoss
>>> DnnProposals(AgnpLoss(np.array([0.0, 1.0]), np.array([1.0, 2.0]))).name
'dnn'
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from scipy.stats import qmc

from agent.core.space import Space
from agent.core.strategies.base import Batch, Observations, StrategyError
from agent.core.strategies.feasibility import FeasibilityModel, fit_feasibility
from agent.core.strategies.spectrum_model import (
    FittedSpectrumModel,
    SpectrumEnsemble,
    one_torch_thread,
)

__all__ = ["DnnProposals", "predicted_loss", "training_spectra"]


class DnnProposals:
    """Batches of recipes by the spectrum model's predicted loss.

    Args:
        loss: the campaign's objective (spectrum -> loss; torch-capable).
        model: the spectrum model's settings (default :class:`SpectrumEnsemble`).
        candidates: Sobol candidates drawn in the box.
        refine_starts: best candidates refined by gradient descent.
        refine_steps: Adam steps per refinement.
        step: Adam's learning rate, in unit-box coordinates.
        optimism: weight of the ensemble's spread as a bonus (0: none).
        min_distance: least Euclidean distance (unit box) between batch points.
    """

    name = "dnn"

    def __init__(
        self,
        loss: Any,
        *,
        model: SpectrumEnsemble | None = None,
        candidates: int = 4096,
        refine_starts: int = 32,
        refine_steps: int = 40,
        step: float = 0.02,
        optimism: float = 0.0,
        min_distance: float = 0.1,
    ) -> None:
        if candidates < 1 or refine_starts < 0 or refine_steps < 0 or step <= 0:
            raise ValueError("need candidates >= 1, refine_starts/steps >= 0, step > 0")
        if optimism < 0 or min_distance < 0:
            raise ValueError("optimism and min_distance must be >= 0")
        self.loss = loss
        self.model = model or SpectrumEnsemble()
        self.candidates = candidates
        self.refine_starts = refine_starts
        self.refine_steps = refine_steps
        self.step = step
        self.optimism = optimism
        self.min_distance = min_distance

    def propose(self, space: Space, data: Observations, n: int, rng: np.random.Generator) -> Batch:
        """Fit the spectrum model on ``data`` and propose ``n`` recipes.

        Raises:
            StrategyError: no usable spectra (see :func:`training_spectra`), a
                failed or diverged fit, or too few feasible candidates.
        """
        seed = int(rng.integers(0, 2**31 - 1))
        spectra = training_spectra(data, len(self.loss.target))
        fitted = self.model.fit(data.x, spectra, seed)
        feas = fit_feasibility(space, data, seed + 7)
        return self.propose_from(fitted, space, data.x, n, seed, feas)

    def propose_from(
        self,
        fitted: FittedSpectrumModel,
        space: Space,
        avoid: np.ndarray,
        n: int,
        seed: int,
        feas: FeasibilityModel | None = None,
    ) -> Batch:
        """Propose ``n`` recipes with a fitted model, none within the pump's
        resolution of a row of ``avoid`` (physical, (k, d)).

        With a feasibility model ``P`` the score is ``P score + (1 - P) * 1``
        (a wrong phase counts as the worst loss) and candidates below its
        ``p_floor`` are never picked (see :mod:`~agent.core.strategies.feasibility`)."""
        start = time.perf_counter()
        if n <= 0:
            return Batch(x=np.zeros((0, space.dim)), strategy=())
        sobol = qmc.Sobol(space.dim, scramble=True, seed=seed)
        u = sobol.random(self.candidates)
        u = u[space.is_feasible(space.from_unit(u))]
        if len(u) == 0:
            raise StrategyError(f"no feasible point among {self.candidates} Sobol candidates")
        with one_torch_thread():
            mean, sd = self._score_parts(fitted, space, torch.as_tensor(u))
            score = mean - self.optimism * sd
            u_ref, refined = self._refine(fitted, space, u, score)
            m_ref, s_ref = self._score_parts(fitted, space, torch.as_tensor(u_ref))
        if len(u_ref):
            u = np.concatenate([u, u_ref])
            mean, sd = np.concatenate([mean, m_ref]), np.concatenate([sd, s_ref])
            score = mean - self.optimism * sd
        p_feasible = None
        if feas is not None:
            with torch.no_grad():
                p_feasible = feas.log_prob(torch.as_tensor(u)).exp().numpy()
            score = p_feasible * score + (1.0 - p_feasible) * _WORST_LOSS
            score = np.where(p_feasible < feas.p_floor, np.inf, score)
        chosen = _select(space, u, score, np.asarray(avoid, float), n, self.min_distance)
        if len(chosen) < n:
            raise StrategyError(
                f"only {len(chosen)} of {n} candidates are separated from the measured recipes"
            )
        idx = np.array(chosen)
        x = space.from_unit(u[idx])
        notes: dict[str, object] = {
            "dnn_predicted_loss": [round(float(v), 5) for v in mean[idx]],
            "dnn_spread": [round(float(v), 5) for v in sd[idx]],
            "dnn_candidates": len(u),
            "dnn_refined_picked": int(np.sum(idx >= len(u) - refined)),
            "dnn_optimism": self.optimism,
            "dnn_propose_seconds": round(time.perf_counter() - start, 4),
        }
        if p_feasible is not None:
            notes["dnn_p_feasible"] = [round(float(v), 4) for v in p_feasible[idx]]
        return Batch(x=x, strategy=(self.name,) * n, notes=notes)

    def _score_parts(
        self, fitted: FittedSpectrumModel, space: Space, u: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and spread (sd over members) of the predicted loss of unit points ``u``."""
        if len(u) == 0:
            return np.zeros(0), np.zeros(0)
        with torch.no_grad():
            losses = predicted_loss(fitted, self.loss, _physical(space, u))
        return losses.mean(0).double().numpy(), losses.std(0).double().numpy()

    def _refine(
        self, fitted: FittedSpectrumModel, space: Space, u: np.ndarray, score: np.ndarray
    ) -> tuple[np.ndarray, int]:
        """Best feasible iterate of each refined start (unit box) and their count."""
        k = min(self.refine_starts, len(u))
        if k == 0 or self.refine_steps == 0:
            return np.zeros((0, space.dim)), 0
        starts = u[np.argsort(score)[:k]]
        z = torch.tensor(starts, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([z], lr=self.step)
        iterates, values = [], []
        for _ in range(self.refine_steps):
            opt.zero_grad()
            losses = predicted_loss(fitted, self.loss, _physical(space, z))
            value = losses.mean(0) - self.optimism * losses.std(0)
            if not bool(torch.isfinite(value).all()):
                break
            iterates.append(z.detach().clone().numpy())
            values.append(value.detach().double().numpy())
            value.sum().backward()
            opt.step()
            with torch.no_grad():
                z.clamp_(0.0, 1.0)
        if not iterates:
            return np.zeros((0, space.dim)), 0
        its = np.stack(iterates, axis=1)  # (k, steps, d)
        vals = np.stack(values, axis=1)  # (k, steps)
        ok = space.is_feasible(space.from_unit(its.reshape(-1, space.dim))).reshape(vals.shape)
        vals = np.where(ok, vals, np.inf)
        best = np.argmin(vals, axis=1)
        keep = np.isfinite(vals[np.arange(k), best])
        out = its[np.arange(k), best][keep]
        return out, len(out)


def predicted_loss(fitted: FittedSpectrumModel, loss: Any, x: torch.Tensor) -> torch.Tensor:
    """Each member's predicted loss of physical recipes ``x`` (n, d) -> (members, n),
    by the campaign's objective on its torch path (differentiable in ``x``)."""
    return loss(fitted.forward(x))


def training_spectra(data: Observations, n_wavelengths: int) -> np.ndarray:
    """The median spectra of ``data``, checked against the campaign's grid.

    Raises:
        StrategyError: no spectra (a scalar-only campaign), or spectra with
            another number of points than the grid (they are never mixed).
    """
    if data.spectra is None:
        raise StrategyError("no spectra in the observations: the spectrum model needs them")
    spectra = np.asarray(data.spectra, dtype=float)
    if spectra.ndim != 2 or spectra.shape[1] != n_wavelengths:
        raise StrategyError(
            f"spectra of shape {spectra.shape} do not lie on the campaign grid of "
            f"{n_wavelengths} points; refused rather than mixed"
        )
    if len(spectra) != len(data):
        raise StrategyError(f"{len(spectra)} spectra for {len(data)} recipes")
    return spectra


# --- private helpers ---------------------------------------------------------------


def _physical(space: Space, u: torch.Tensor) -> torch.Tensor:
    lo, hi = (torch.as_tensor(b, dtype=u.dtype) for b in space.bounds)
    return lo + u * (hi - lo)


_WORST_LOSS = 1.0  # the loss of a recipe that makes the wrong phase


def _select(
    space: Space, u: np.ndarray, score: np.ndarray, avoid: np.ndarray, n: int, min_distance: float
) -> list[int]:
    """Greedy picks by ``score`` (lowest first) under the separation rules."""
    order = np.argsort(score, kind="stable")
    order = order[np.isfinite(score[order])]  # excluded candidates (e.g. a wrong phase)
    x = space.from_unit(u)
    res = space.resolution
    if len(avoid) and np.all(res > 0):
        clash = np.zeros(len(x), dtype=bool)
        for i in range(0, len(x), 1024):
            diff = np.abs(x[i : i + 1024, None, :] - avoid[None, :, :])
            clash[i : i + 1024] = np.any(np.all(diff < res, axis=-1), axis=-1)
        order = order[~clash[order]]
    chosen: list[int] = []
    distance = min_distance
    while len(chosen) < n:
        for i in order:
            if len(chosen) >= n:
                break
            if chosen:
                if int(i) in chosen:
                    continue
                picked_u, picked_x = u[chosen], x[chosen]
                if np.any(np.all(np.abs(picked_x - x[i]) < res, axis=1)):
                    continue
                if np.min(np.linalg.norm(picked_u - u[i], axis=1)) < distance:
                    continue
            chosen.append(int(i))
        if distance == 0:
            break
        distance = distance / 2 if distance > min_distance / 16 else 0.0
    return chosen
