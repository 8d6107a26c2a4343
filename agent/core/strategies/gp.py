"""The Gaussian-process surrogate shared by the Bayesian-optimisation strategies.

:func:`fit_gp` fits a BoTorch ``SingleTaskGP`` to the observations:

* inputs are mapped to the *current* box of the space,
  ``u = (x - lower) / (upper - lower)``, so the box is ``[0, 1]^d`` (points
  measured before a widening simply map outside it);
* the outcome is ``f = -loss`` (BoTorch maximises, the lab minimises), standardised
  by ``Standardize(m=1)``;
* the kernel is Matern 5/2 with one lengthscale per input (ARD) and BoTorch's
  dimension-scaled log-normal lengthscale prior (Hvarfner et al. 2024), the
  default of ``SingleTaskGP`` with Matern in place of RBF;
* the noise is either learned (homoscedastic, log-normal prior) or "known": the
  replicate spread ``loss_sd`` (the standard deviation of the median) gives a
  fixed per-point variance ``loss_sd**2``;
* hyperparameters maximise the marginal likelihood (``fit_gpytorch_mll``,
  L-BFGS-B) in float64, always with exact Cholesky algebra (GPyTorch would
  otherwise switch to randomised iterative solvers above 800 points).

Anything that makes a fit meaningless (fewer than 2 points, a constant
outcome, non-finite input, a failed fit) raises
:class:`~agent.core.strategies.base.StrategyError` with the reason; the
campaign then falls back to the space-filling design.

The module also holds what the strategies share around the model: the
posterior with its algebra cached for fast repeated calls (:class:`CachedGP`),
the linear constraints in the unit box (:func:`unit_constraint_matrix`, and in
BoTorch's form :func:`unit_constraints`) and a pool of feasible quasi-random
points (:func:`feasible_pool`).

>>> import numpy as np
>>> from agent.core.space import Parameter, Space
>>> from agent.core.strategies.base import Observations
>>> space = Space((Parameter("a", 0, 1, 0, 1), Parameter("b", 0, 1, 0, 1)))
>>> x = np.random.default_rng(0).random((8, 2))
>>> data = Observations(x, (x**2).sum(1), np.full(8, np.nan))
>>> fit_gp(space, data, seed=0).train_u.shape
torch.Size([8, 2])
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import gpytorch
import numpy as np
import torch
from botorch.exceptions.errors import ModelFittingError
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.model import Model
from botorch.models.transforms.outcome import Standardize
from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
from botorch.posteriors.gpytorch import GPyTorchPosterior
from gpytorch.distributions import MultivariateNormal
from gpytorch.mlls import ExactMarginalLogLikelihood
from linear_operator.utils.errors import NanError, NotPSDError
from torch import Tensor

from agent.core.space import Space
from agent.core.strategies.base import Observations, StrategyError

__all__ = [
    "DTYPE",
    "CachedGP",
    "FittedGP",
    "NoiseModel",
    "feasible_pool",
    "fit_gp",
    "unit_constraint_matrix",
    "unit_constraints",
]

DTYPE = torch.float64
"""All model algebra is done in double precision."""

NoiseModel = Literal["learned", "known"]

# Exact algebra up to this many training points (GPyTorch's default is 800).
_MAX_CHOLESKY = 20_000
# Relative spread of the outcome below which it counts as constant.
_CONSTANT_RTOL = 1e-12
# Fixed noise variances are floored at this fraction of the outcome variance (an sd
# of 1 % of the outcome spread): a condition whose droplets agree exactly (MAD 0)
# must not pin the GP, and GPyTorch warns below 1e-6 in standardised units.
_KNOWN_NOISE_FLOOR = 1e-4
# Posterior variances (standardised units) are floored here.
_MIN_VAR = 1e-12


@dataclass(frozen=True)
class FittedGP:
    """A fitted surrogate and the data it saw, in the unit box of the space.

    Attributes:
        model: the fitted ``SingleTaskGP`` in eval mode; it predicts
            ``f = -loss`` in original units from unit-box inputs.
        train_u: training inputs in the unit box of the current space, (n, d).
        train_f: training outcomes ``-loss``, (n, 1).
        noise: the noise model that was actually used ("known" falls back to
            "learned" when any ``loss_sd`` is missing).
        fit_seconds: wall time of the fit (for the logs only; nothing decides on it).
    """

    model: SingleTaskGP
    train_u: Tensor
    train_f: Tensor
    noise: NoiseModel
    fit_seconds: float

    def notes(self) -> dict[str, object]:
        """JSON-able facts about the fit: lengthscales (unit box), noise, timings."""
        ls = self.model.covar_module.lengthscale.detach().reshape(-1)
        y_std = float(self.model.outcome_transform.stdvs.reshape(-1)[0])
        out: dict[str, object] = {
            "n_train": len(self.train_u),
            "lengthscales": [float(v) for v in ls],
            "noise_model": self.noise,
            "fit_seconds": round(self.fit_seconds, 4),
        }
        if self.noise == "learned":
            # the likelihood works on the standardised outcome; report loss units
            noise_var = float(self.model.likelihood.noise.detach().reshape(-1)[0])
            out["noise_sd"] = math.sqrt(noise_var) * y_std
        return out


def fit_gp(
    space: Space,
    data: Observations,
    *,
    noise: NoiseModel = "learned",
    seed: int = 0,
    maxiter: int | None = None,
    subset_above: int = 600,
    subset_size: int = 300,
    refine_maxiter: int = 15,
) -> FittedGP:
    """Fit the surrogate of ``-loss`` on ``data``, inputs normalised to the current box.

    Args:
        space: gives the current box ``[lower, upper]`` used to normalise inputs.
        data: observations; ``x`` (n, d) physical, ``loss`` (n,), ``loss_sd`` (n,).
        noise: "learned" (one noise level, fitted) or "known" (per-point fixed
            variance ``loss_sd**2``; falls back to "learned" if any is NaN).
        seed: seeds the random restarts of the fit (the global torch generator is
            left untouched).
        maxiter: cap on L-BFGS-B iterations of the marginal-likelihood fit
            (None: BoTorch's default).
        subset_above: with more points than this, the fit is warm-started from
            a fit on ``subset_size`` random points and then refined on all points
            for at most ``refine_maxiter`` iterations. An exact marginal-likelihood
            step costs O(n^3) (about 0.2 s at n = 1000 on two cores, against
            ~50 steps for a cold fit); the subset's optimum is already close.
        subset_size: size of that subset.
        refine_maxiter: iteration cap of the refinement on all points.

    Returns:
        The fitted model with its training data.

    Raises:
        StrategyError: fewer than 2 points, non-finite input, constant outcome,
            or a fit that failed.
    """
    x = np.asarray(data.x, dtype=float)
    loss = np.asarray(data.loss, dtype=float)
    n = len(loss)
    if n < 2:
        raise StrategyError(f"need at least 2 observations to fit a GP, got {n}")
    if x.shape != (n, space.dim):
        raise StrategyError(f"observations have shape {x.shape}, expected ({n}, {space.dim})")
    if not np.all(np.isfinite(x)):
        raise StrategyError("non-finite recipe in the observations")
    if not np.all(np.isfinite(loss)):
        bad = int(np.sum(~np.isfinite(loss)))
        raise StrategyError(f"{bad} non-finite loss value(s) in the observations")
    spread = float(np.ptp(loss))
    if spread <= _CONSTANT_RTOL * max(1.0, float(np.max(np.abs(loss)))):
        raise StrategyError(f"all {n} losses are equal ({loss[0]:g}): nothing to model")

    train_u = torch.as_tensor(space.to_unit(x), dtype=DTYPE)
    train_f = torch.as_tensor(-loss, dtype=DTYPE).unsqueeze(-1)
    used: NoiseModel = "learned"
    train_yvar = None
    if noise == "known":
        sd = np.asarray(data.loss_sd, dtype=float)
        if sd.shape == (n,) and np.all(np.isfinite(sd)):
            floor = _KNOWN_NOISE_FLOOR * float(np.var(loss))
            var = np.maximum(sd**2, floor)
            train_yvar = torch.as_tensor(var, dtype=DTYPE).unsqueeze(-1)
            used = "known"
    elif noise != "learned":
        raise ValueError(f"noise must be 'learned' or 'known', got {noise!r}")

    start = time.perf_counter()
    with torch.random.fork_rng(), gpytorch.settings.max_cholesky_size(_MAX_CHOLESKY):
        torch.manual_seed(seed)
        try:
            if n > subset_above:
                # warm start: hyperparameters of a random subset, then a short full fit
                pick = torch.randperm(n)[:subset_size]
                sub = _fit(
                    train_u[pick],
                    train_f[pick],
                    None if train_yvar is None else train_yvar[pick],
                    init=None,
                    maxiter=maxiter,
                )
                model = _fit(train_u, train_f, train_yvar, init=sub, maxiter=refine_maxiter)
            else:
                model = _fit(train_u, train_f, train_yvar, init=None, maxiter=maxiter)
        except (ModelFittingError, NotPSDError, NanError, RuntimeError, ValueError) as exc:
            raise StrategyError(f"GP fit failed: {type(exc).__name__}: {exc}") from exc
    seconds = time.perf_counter() - start

    params = [p.detach() for p in model.parameters()]
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise StrategyError("GP fit failed: non-finite hyperparameters")
    return FittedGP(model=model, train_u=train_u, train_f=train_f, noise=used, fit_seconds=seconds)


class CachedGP(Model):
    r"""The exact posterior of a fitted :class:`FittedGP`, with its algebra cached.

    Same numbers as ``fitted.model.posterior`` (to ~1e-9), at a fraction of the
    per-call cost (no lazy-tensor dispatch), which matters when an acquisition is
    evaluated thousands of times per batch. With ``u`` the unit-box input,
    ``c`` the constant mean, ``m, s`` the outcome standardisation, ``K`` the
    Matern 5/2 kernel of the training inputs and ``N`` the noise (standardised
    units)::

        alpha = (K + N)^-1 (y_std - c)
        mean(u) = m + s * (c + k(u)^T alpha)
        cov(u, u') = s^2 * (k(u, u') - k(u)^T (K + N)^-1 k(u'))

    with ``k(r) = (1 + sqrt5 r + 5 r^2 / 3) exp(-sqrt5 r)`` on lengthscale-scaled
    distances. The posterior is that of the latent ``f = -loss`` (no
    observation noise). Differentiable in ``u``.
    """

    def __init__(self, fitted: FittedGP) -> None:
        super().__init__()
        model = fitted.model
        self._train_u = fitted.train_u
        self._lengthscale = model.covar_module.lengthscale.detach().reshape(-1).clone()
        self._constant = float(model.mean_module.constant.detach().reshape(-1)[0])
        tf = model.outcome_transform
        self._y_mean = float(tf.means.reshape(-1)[0])
        self._y_std = float(tf.stdvs.reshape(-1)[0])
        noise = model.likelihood.noise.detach().reshape(-1)
        y_std_units = model.train_targets.detach().reshape(-1)
        k = _matern52(self._train_u, self._train_u, self._lengthscale)
        k = k + torch.diag(noise.expand(len(self._train_u)))
        self._chol = _cholesky(k)
        resid = (y_std_units - self._constant).unsqueeze(-1)
        self._alpha = torch.cholesky_solve(resid, self._chol)  # (n, 1)

    @property
    def num_outputs(self) -> int:
        return 1

    @property
    def batch_shape(self) -> torch.Size:
        return torch.Size()

    @property
    def train_u(self) -> Tensor:
        """Training inputs in the unit box, (n, d)."""
        return self._train_u

    @property
    def outcome_scale(self) -> float:
        """Standard deviation of the training outcomes (``s`` above)."""
        return self._y_std

    def mean_and_std(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and standard deviation of ``f`` at ``u`` (..., d) -> (...), (...)."""
        ks = _matern52(u, self._train_u, self._lengthscale)  # (..., n)
        mean = self._y_mean + self._y_std * (self._constant + (ks @ self._alpha).squeeze(-1))
        v = self._whiten(ks)
        var = (1.0 - v.pow(2).sum(-1)).clamp_min(_MIN_VAR)
        return mean, self._y_std * var.sqrt()

    def moments_with_grad(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""Mean and std of ``f`` at ``u`` (k, d) with their gradients, in closed form.

        With ``D_j = (u - t_j) / l^2`` and ``r_j`` the scaled distance to
        training input ``t_j``, ``grad k_j = -(5/3) (1 + sqrt5 r_j) exp(-sqrt5 r_j) D_j``;
        ``grad mean = s sum_j alpha_j grad k_j``,
        ``grad var = -2 s^2 sum_j w_j grad k_j`` with ``w = (K + N)^-1 k(u)``.
        No autograd (the inner loop of the refinement calls this thousands of times).

        Returns:
            mean (k,), std (k,), grad mean (k, d), grad std (k, d).
        """
        with torch.no_grad():
            diff = u.unsqueeze(-2) - self._train_u  # (k, n, d)
            scaled = diff / self._lengthscale.pow(2)
            r = math.sqrt(5.0) * (diff * scaled).sum(-1).clamp_min(1e-30).sqrt()  # (k, n)
            e = torch.exp(-r)
            ks = (1.0 + r + r.pow(2) / 3.0) * e
            dk = (-(5.0 / 3.0) * (1.0 + r) * e).unsqueeze(-1) * scaled  # (k, n, d)
            alpha = self._alpha.squeeze(-1)
            mean = self._y_mean + self._y_std * (self._constant + ks @ alpha)
            dmean = self._y_std * torch.einsum("kn,knd->kd", alpha.expand_as(ks), dk)
            v = torch.linalg.solve_triangular(self._chol, ks.transpose(0, 1), upper=False)
            w = torch.linalg.solve_triangular(self._chol.transpose(0, 1), v, upper=True)
            var = 1.0 - v.pow(2).sum(0)
            dvar = -2.0 * torch.einsum("nk,knd->kd", w, dk)
            small = var < _MIN_VAR
            var = var.clamp_min(_MIN_VAR)
            std = var.sqrt()
            dstd = torch.where(small.unsqueeze(-1), 0.0, dvar / (2.0 * std).unsqueeze(-1))
            return mean, self._y_std * std, dmean, self._y_std * dstd

    def _whiten(self, ks: Tensor) -> Tensor:
        """``L^-1 k`` for every row of ``ks`` (..., n), as one triangular solve."""
        n = ks.shape[-1]
        flat = ks.reshape(-1, n).transpose(0, 1)
        v = torch.linalg.solve_triangular(self._chol, flat, upper=False)
        return v.transpose(0, 1).reshape(ks.shape)

    def posterior(
        self,
        X: Tensor,
        output_indices: list[int] | None = None,
        observation_noise: bool | Tensor = False,
        posterior_transform: object | None = None,
    ) -> GPyTorchPosterior:
        """Joint posterior of ``f`` over the ``q`` points of each batch of ``X`` (..., q, d)."""
        if observation_noise is not False or posterior_transform is not None:
            raise NotImplementedError("CachedGP gives the latent posterior only")
        ks = _matern52(X, self._train_u, self._lengthscale)  # (..., q, n)
        mean = self._y_mean + self._y_std * (self._constant + (ks @ self._alpha).squeeze(-1))
        v = self._whiten(ks)  # (..., q, n)
        cov = _matern52(X, X, self._lengthscale) - v @ v.transpose(-1, -2)
        q = X.shape[-2]
        eye = torch.eye(q, dtype=X.dtype)
        cov = self._y_std**2 * (cov + _MIN_VAR * eye)
        return GPyTorchPosterior(MultivariateNormal(mean, cov, validate_args=False))


def unit_constraint_matrix(space: Space) -> tuple[np.ndarray, np.ndarray]:
    """The linear constraints ``A x <= b`` in the unit box: ``A_u u <= b_u``.

    With ``x = lower + u * width``: ``A_u = A * width`` (column-wise) and
    ``b_u = b - A @ lower``. Rows without a non-zero coefficient are dropped.
    Shapes (m, d), (m,).
    """
    a, b = space.constraint_matrix()
    lo, hi = space.bounds
    keep = np.any(a != 0, axis=1)
    return a[keep] * (hi - lo), (b - a @ lo)[keep]


def unit_constraints(space: Space) -> list[tuple[Tensor, Tensor, float]]:
    """The space's linear constraints in BoTorch's form, in the unit box.

    ``A_u u <= b_u`` (:func:`unit_constraint_matrix`) becomes BoTorch's
    ``(indices, coefficients, rhs)``, meaning ``sum coef * u[indices] >= rhs``,
    with ``coef = -A_u`` and ``rhs = -b_u``.

    >>> from agent.core.space import LinearConstraint, Parameter, Space
    >>> s = Space((Parameter("a", 0, 2, 0, 2), Parameter("b", 0, 2, 0, 2)),
    ...           (LinearConstraint({"a": 1, "b": 1}, 3),))
    >>> [(i.tolist(), c.tolist(), r) for i, c, r in unit_constraints(s)]
    [([0, 1], [-2.0, -2.0], -3.0)]
    """
    a_u, b_u = unit_constraint_matrix(space)
    out = []
    for row, rhs in zip(a_u, b_u, strict=True):
        idx = np.flatnonzero(row)
        out.append(
            (
                torch.as_tensor(idx, dtype=torch.long),
                torch.as_tensor(-row[idx], dtype=DTYPE),
                float(-rhs),
            )
        )
    return out


def feasible_pool(space: Space, size: int, seed: int, *, max_draws: int = 16) -> Tensor:
    """Up to ``size`` feasible points of the current box, in unit coordinates.

    Scrambled Sobol points of ``[0, 1]^d`` are kept when
    :meth:`Space.is_feasible` accepts them (box, hard limits, linear
    constraints, pump channels); draws repeat until ``size`` are kept or
    ``max_draws * size`` have been tried.

    Returns:
        (m, d) float64 tensor, ``1 <= m <= size``.

    Raises:
        StrategyError: no feasible point was found.
    """
    engine = torch.quasirandom.SobolEngine(space.dim, scramble=True, seed=seed)
    kept: list[Tensor] = []
    count = 0
    batch = max(size, 256)
    for _ in range(max_draws):
        u = engine.draw(batch, dtype=DTYPE)
        ok = space.is_feasible(space.from_unit(u.numpy()))
        if ok.any():
            kept.append(u[torch.as_tensor(ok)])
            count += int(ok.sum())
        if count >= size:
            break
    if count == 0:
        raise StrategyError(
            f"no feasible point among {max_draws * batch} samples of the box: "
            "the constraints leave (almost) nothing of it"
        )
    return torch.cat(kept)[:size]


def _matern52(a: Tensor, b: Tensor, lengthscale: Tensor) -> Tensor:
    """Matern 5/2 correlation of rows of ``a`` (..., p, d) and ``b`` (..., n, d) -> (..., p, n)."""
    a = a / lengthscale
    b = b / lengthscale
    sq = a.pow(2).sum(-1, keepdim=True) + b.pow(2).sum(-1).unsqueeze(-2)
    sq = sq - 2.0 * a @ b.transpose(-1, -2)
    r = math.sqrt(5.0) * sq.clamp_min(1e-30).sqrt()
    return (1.0 + r + r.pow(2) / 3.0) * torch.exp(-r)


def _cholesky(k: Tensor) -> Tensor:
    """Lower Cholesky factor, with growing jitter if ``k`` is numerically singular."""
    jitter = 0.0
    for _ in range(6):
        chol, info = torch.linalg.cholesky_ex(k + jitter * torch.eye(len(k), dtype=k.dtype))
        if int(info) == 0:
            return chol
        jitter = 1e-8 if jitter == 0.0 else jitter * 10.0
    raise StrategyError("GP covariance is not positive definite even with jitter")


def _fit(
    train_u: Tensor,
    train_f: Tensor,
    train_yvar: Tensor | None,
    *,
    init: SingleTaskGP | None,
    maxiter: int | None,
) -> SingleTaskGP:
    """One ``SingleTaskGP`` fit (Matern 5/2 ARD, standardised outcome), optionally
    starting from the hyperparameters of ``init``."""
    model = SingleTaskGP(
        train_u,
        train_f,
        train_Yvar=train_yvar,
        covar_module=get_covar_module_with_dim_scaled_prior(
            ard_num_dims=train_u.shape[-1], use_rbf_kernel=False
        ),
        outcome_transform=Standardize(m=1),
    )
    if init is not None:
        model.covar_module.lengthscale = init.covar_module.lengthscale.detach()
        model.mean_module.constant = init.mean_module.constant.detach()
        if train_yvar is None:
            model.likelihood.noise = init.likelihood.noise.detach()
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    kwargs = {} if maxiter is None else {"options": {"maxiter": maxiter}}
    fit_gpytorch_mll(mll, optimizer_kwargs=kwargs)
    model.eval()
    return model
