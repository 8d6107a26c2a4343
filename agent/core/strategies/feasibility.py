r"""The feasibility model: where the required solid phase forms, as a probability.

A GP on a latent feasibility outcome, the way BoTorch's constrained
acquisitions treat an outcome constraint: each labelled recipe gives
``y = +1`` (the required phase, confident enough) or ``y = -1`` (anything
else); a :class:`~botorch.models.SingleTaskGP` is fitted to ``y`` over the
current box (inputs normalised to it, no outcome transform, a fixed label noise
variance of 0.2, a linear prior mean so that the measured trend carries past
the labels, e.g. into a newly widened box), and a recipe is feasible when the
latent ``g(x) > 0``::

    P(feasible | x) = Phi(mu(x) / sigma(x))        (probit of the latent posterior)

The acquisition is multiplied by it, in log space for LP-EI
(``log EI(x) + log P(x)``), and the DNN's predicted loss becomes the expected
loss when a wrong phase counts as the worst loss, 1::

    score(x) = P(x) * loss_hat(x) + (1 - P(x)) * 1

Candidates with ``P(x) < p_floor`` (0.05 by default) are never proposed.
Unlabelled recipes (no label yet, or none ever) are left out of the fit; every
recipe, feasible or not, still teaches the loss model. No model (a factor of
1) while no phase is required or the labels hold only one class.

>>> import numpy as np
>>> from agent.core.space import Parameter, Space
>>> from agent.core.strategies.base import Observations
>>> space = Space((Parameter("a", 0.0, 1.0, 0.0, 1.0), Parameter("b", 0.0, 1.0, 0.0, 1.0)))
>>> x = np.random.default_rng(0).random((20, 2))
>>> data = Observations(x, x[:, 0], np.full(20, np.nan), feasible=(x[:, 0] < 0.5) * 1.0)
>>> model = fit_feasibility(space, data, seed=0)
>>> p = model.prob(np.array([[0.1, 0.5], [0.9, 0.5]]))
>>> bool(p[0] > 0.8 and p[1] < 0.2)
True
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import gpytorch
import numpy as np
import torch
from botorch.exceptions.errors import ModelFittingError
from botorch.exceptions.warnings import InputDataWarning
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from gpytorch.means import LinearMean
from gpytorch.mlls import ExactMarginalLogLikelihood
from linear_operator.utils.errors import NanError, NotPSDError

from agent.core.space import Space
from agent.core.strategies.base import Observations, StrategyError

__all__ = ["FeasibilityModel", "fit_feasibility"]

DTYPE = torch.float64
_LABEL_NOISE: float | None = 0.2  # variance of a +-1 label (None: learned)
_LINEAR_MEAN = True  # a linear prior mean: the trend carries past the measured region
_MIN_SIGMA = 1e-6


@dataclass
class FeasibilityModel:
    """A fitted classifier of the required phase over the recipe space.

    Attributes:
        model: the GP of the latent outcome, inputs in ``space``'s unit box.
        space: the space whose box normalised the inputs.
        p_floor: candidates below this probability are excluded.
        n_feasible, n_infeasible: labelled recipes of each class it was fitted on.
    """

    model: SingleTaskGP
    space: Space
    p_floor: float
    n_feasible: int
    n_infeasible: int

    def latent(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and sd of the latent outcome at unit points ``u`` (..., d)."""
        flat = u.reshape(-1, u.shape[-1]).to(DTYPE)
        with torch.no_grad(), gpytorch.settings.fast_pred_var(False):
            post = self.model.posterior(flat)
            mean = post.mean.reshape(-1)
            sd = post.variance.reshape(-1).clamp_min(_MIN_SIGMA**2).sqrt()
        shape = u.shape[:-1]
        return mean.reshape(shape), sd.reshape(shape)

    def log_prob(self, u: torch.Tensor) -> torch.Tensor:
        """``log P(feasible)`` at unit points ``u`` (..., d) -> (...)."""
        mean, sd = self.latent(u)
        return torch.special.log_ndtr(mean / sd)

    def prob(self, x: np.ndarray) -> np.ndarray:
        """``P(feasible)`` at physical recipes ``x`` (n, d) -> (n,)."""
        u = torch.as_tensor(self.space.to_unit(np.asarray(x, float)), dtype=DTYPE)
        return self.log_prob(u).exp().numpy()

    def excluded(self, u: torch.Tensor) -> torch.Tensor:
        """Boolean mask of unit points whose probability is below ``p_floor``."""
        if self.p_floor <= 0.0:
            return torch.zeros(u.shape[:-1], dtype=torch.bool)
        return self.log_prob(u) < math.log(self.p_floor)

    def notes(self) -> dict[str, object]:
        return {
            "feasibility": {
                "n_feasible": self.n_feasible,
                "n_infeasible": self.n_infeasible,
                "p_floor": self.p_floor,
            }
        }


def fit_feasibility(space: Space, data: Observations, seed: int = 0) -> FeasibilityModel | None:
    """Fit the feasibility model on the labelled recipes of ``data``.

    Returns:
        The model, or None when ``data.feasible`` is None (no phase required)
        or the labels hold fewer than one recipe of each class.

    Raises:
        StrategyError: the fit failed.
    """
    if data.feasible is None or len(data) == 0:
        return None
    feas = np.asarray(data.feasible, dtype=float)
    known = np.isfinite(feas)
    n_ok = int(np.sum(feas[known] > 0.5))
    n_bad = int(np.sum(known)) - n_ok
    if n_ok == 0 or n_bad == 0:
        return None
    u = torch.as_tensor(space.to_unit(np.asarray(data.x, float)[known]), dtype=DTYPE)
    y = torch.as_tensor(np.where(feas[known] > 0.5, 1.0, -1.0), dtype=DTYPE).unsqueeze(-1)
    yvar = None if _LABEL_NOISE is None else torch.full_like(y, _LABEL_NOISE)
    with torch.random.fork_rng(), warnings.catch_warnings():
        torch.manual_seed(seed)
        # +-1 labels are on their own fixed scale: not standardised on purpose
        warnings.simplefilter("ignore", InputDataWarning)
        try:
            mean = LinearMean(u.shape[-1]).to(DTYPE) if _LINEAR_MEAN else None
            model = SingleTaskGP(u, y, yvar, outcome_transform=None, mean_module=mean)
            fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        except (ModelFittingError, NotPSDError, NanError, RuntimeError, ValueError) as exc:
            raise StrategyError(f"feasibility GP fit failed: {type(exc).__name__}: {exc}") from exc
    model.eval()
    return FeasibilityModel(model, space, float(data.p_floor), n_ok, n_bad)
