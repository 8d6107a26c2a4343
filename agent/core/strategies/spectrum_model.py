r"""The spectrum model: an ensemble of small MLPs from a recipe to its whole spectrum.

The study's second step (Mekki-Berrada et al. 2021) trained a neural network
on every spectrum measured so far to predict the spectrum of any recipe. Here:

* inputs: the recipe in physical units, standardised by the training data's
  mean and standard deviation (so points measured before a widening of the
  box keep their place);
* outputs: the scores of the measured spectra on their first ``k`` principal
  components (PCA by SVD of the centred training spectra; ``k`` the fewest
  that explain ``explained`` of the variance, at most ``max_components``).
  A spectrum is ``mean + scores @ components``; the components are
  orthonormal, so the mean squared error of the scores is that of the
  spectra (minus the fixed residual of the discarded components);
* members: ``members`` MLPs ``d -> hidden -> ... -> k`` with SiLU activations
  (smooth, so that proposals can be refined by gradients through the network;
  the study used ReLU), trained at once as one batched network (weights of
  shape ``(members, in, out)``), full batch, Adam, mean squared error;
* early stopping: each member holds out its own random ``holdout`` fraction of
  the points, and keeps the weights of its lowest held-out error; training
  stops when no member improved for ``patience`` epochs, or at ``max_epochs``;
* one torch thread during training (:func:`one_torch_thread`);
* divergence: a non-finite loss (or prediction) discards the whole fit with
  :class:`ModelDiverged` and the reason (which member, which epoch); the
  caller falls back (the two-step strategy proposes by BO alone).

The ensemble's spread (standard deviation over members) is its uncertainty.

>>> import numpy as np
>>> x = np.random.default_rng(0).random((30, 2))
>>> wl = np.linspace(0.0, 1.0, 50)
>>> spectra = np.exp(-((wl - 0.3 - 0.4 * x[:, :1]) ** 2) / 0.02)
>>> model = SpectrumEnsemble(members=3, max_epochs=200).fit(x, spectra, seed=0)
>>> model.predict(x[:4]).shape   # (members, points, wavelengths)
(3, 4, 50)
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from agent.core.strategies.base import StrategyError

__all__ = [
    "FittedSpectrumModel",
    "ModelDiverged",
    "SpectrumEnsemble",
    "one_torch_thread",
    "spectrum_agreement",
]

_DTYPE = torch.float32
# A training input column with a standard deviation below this is left unscaled.
_MIN_SCALE = 1e-12


class ModelDiverged(StrategyError):
    """The spectrum model's training diverged (non-finite loss); the fit was discarded."""


@dataclass(frozen=True)
class FittedSpectrumModel:
    """A trained ensemble: physical recipes in, spectra out.

    Attributes:
        x_mean, x_scale: input standardisation, (d,).
        spectrum_mean: mean training spectrum, (m,).
        components: PCA basis, (k, m), orthonormal rows.
        score_scale: the scores were divided by this before training.
        weights, biases: per layer, (members, in, out) and (members, 1, out).
        notes: JSON-able facts about the fit (epochs, held-out errors, timing).
    """

    x_mean: Tensor
    x_scale: Tensor
    spectrum_mean: Tensor
    components: Tensor
    score_scale: float
    weights: tuple[Tensor, ...]
    biases: tuple[Tensor, ...]
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def members(self) -> int:
        return int(self.weights[0].shape[0])

    def forward(self, x: Tensor) -> Tensor:
        """Predicted spectra of physical recipes ``x`` (n, d) -> (members, n, m);
        differentiable in ``x``."""
        z = (x.to(_DTYPE) - self.x_mean) / self.x_scale
        scores = _mlp(z.expand(self.members, *z.shape), self.weights, self.biases)
        return self.spectrum_mean + (scores * self.score_scale) @ self.components

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Numpy version of :meth:`forward`: (n, d) -> (members, n, m)."""
        with torch.no_grad():
            return self.forward(torch.as_tensor(np.atleast_2d(x))).double().numpy()

    def mean_spectra(self, x: np.ndarray) -> np.ndarray:
        """The ensemble's mean prediction, (n, d) -> (n, m)."""
        return self.predict(x).mean(axis=0)


class SpectrumEnsemble:
    """Settings of the spectrum model; :meth:`fit` trains one.

    Args:
        members: MLPs in the ensemble (>= 2: the spread is the uncertainty).
        hidden: widths of the hidden layers.
        explained: fraction of the spectra's variance the PCA basis keeps.
        max_components: at most this many components.
        max_epochs: training epochs at most (full batch).
        patience: stop when no member's held-out error improved for this many epochs.
        lr: Adam's learning rate.
        weight_decay: Adam's L2 penalty.
        holdout: fraction of the points each member holds out for early stopping.
        min_points: fewer training spectra than this raise :class:`StrategyError`.
    """

    def __init__(
        self,
        *,
        members: int = 5,
        hidden: tuple[int, ...] = (64, 64),
        explained: float = 0.9999,
        max_components: int = 12,
        max_epochs: int = 2000,
        patience: int = 100,
        lr: float = 1e-2,
        weight_decay: float = 1e-5,
        holdout: float = 0.2,
        min_points: int = 8,
    ) -> None:
        if members < 2:
            raise ValueError("an ensemble needs at least 2 members")
        if not (0 < explained <= 1) or max_components < 1 or not hidden:
            raise ValueError("need 0 < explained <= 1, max_components >= 1, a hidden layer")
        if not (0 < holdout < 1) or max_epochs < 1 or patience < 1 or lr <= 0:
            raise ValueError("need 0 < holdout < 1, max_epochs, patience >= 1, lr > 0")
        self.members = members
        self.hidden = tuple(hidden)
        self.explained = explained
        self.max_components = max_components
        self.max_epochs = max_epochs
        self.patience = patience
        self.lr = lr
        self.weight_decay = weight_decay
        self.holdout = holdout
        self.min_points = max(min_points, 3)

    def fit(self, x: np.ndarray, spectra: np.ndarray, seed: int) -> FittedSpectrumModel:
        """Train on recipes ``x`` (n, d, physical) and their spectra (n, m).

        Raises:
            StrategyError: too few points, mismatched shapes or non-finite data.
            ModelDiverged: a non-finite training loss; nothing is kept.
        """
        start = time.perf_counter()
        x = np.asarray(x, dtype=float)
        spectra = np.asarray(spectra, dtype=float)
        if x.ndim != 2 or spectra.ndim != 2 or len(x) != len(spectra):
            raise StrategyError(f"recipes {x.shape} and spectra {spectra.shape} do not pair up")
        if len(x) < self.min_points:
            raise StrategyError(f"{len(x)} spectra; the spectrum model needs {self.min_points}")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(spectra))):
            raise StrategyError("non-finite recipe or spectrum in the training data")
        gen = torch.Generator().manual_seed(int(seed))
        x_mean = x.mean(axis=0)
        x_scale = x.std(axis=0)
        x_scale = np.where(x_scale > _MIN_SCALE, x_scale, 1.0)
        z = torch.as_tensor((x - x_mean) / x_scale, dtype=_DTYPE)
        s_mean, basis, scores, explained = _pca(spectra, self.explained, self.max_components)
        scale = float(np.abs(scores).std()) or 1.0
        y = torch.as_tensor(scores / scale, dtype=_DTYPE)
        with one_torch_thread():
            weights, biases, info = self._train(z, y, gen)
        model = FittedSpectrumModel(
            x_mean=torch.as_tensor(x_mean, dtype=_DTYPE),
            x_scale=torch.as_tensor(x_scale, dtype=_DTYPE),
            spectrum_mean=torch.as_tensor(s_mean, dtype=_DTYPE),
            components=torch.as_tensor(basis, dtype=_DTYPE),
            score_scale=scale,
            weights=weights,
            biases=biases,
        )
        check = model.predict(x[:1])
        if not np.all(np.isfinite(check)):
            raise ModelDiverged("the trained spectrum model predicts non-finite spectra")
        model.notes.update(
            n_train=len(x),
            members=self.members,
            components=int(basis.shape[0]),
            explained_variance=round(explained, 6),
            fit_seconds=round(time.perf_counter() - start, 4),
            **info,
        )
        return model

    def _train(
        self, z: Tensor, y: Tensor, gen: torch.Generator
    ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], dict[str, object]]:
        n, d = z.shape
        k = y.shape[1]
        m = self.members
        sizes = (d, *self.hidden, k)
        weights = [
            (
                (torch.rand(m, a, b, generator=gen, dtype=_DTYPE) * 2 - 1) / math.sqrt(a)
            ).requires_grad_()
            for a, b in itertools.pairwise(sizes)
        ]
        biases = [torch.zeros(m, 1, b, dtype=_DTYPE, requires_grad=True) for b in sizes[1:]]
        n_out = max(1, round(self.holdout * n))
        held = torch.zeros(m, n, dtype=torch.bool)
        for j in range(m):
            held[j, torch.randperm(n, generator=gen)[:n_out]] = True
        train_w = (~held).to(_DTYPE) / (~held).sum(1, keepdim=True).to(_DTYPE)
        held_w = held.to(_DTYPE) / held.sum(1, keepdim=True).to(_DTYPE)
        zz = z.expand(m, n, d)
        opt = torch.optim.Adam([*weights, *biases], lr=self.lr, weight_decay=self.weight_decay)
        best = torch.full((m,), math.inf, dtype=_DTYPE)
        best_epoch = torch.zeros(m, dtype=torch.long)
        keep_w = [w.detach().clone() for w in weights]
        keep_b = [b.detach().clone() for b in biases]
        epoch = 0
        for epoch in range(1, self.max_epochs + 1):
            opt.zero_grad()
            err = (_mlp(zz, weights, biases) - y).pow(2).mean(-1)  # (m, n)
            train_loss = (err * train_w).sum(1)
            if not bool(torch.isfinite(train_loss).all()):
                bad = int((~torch.isfinite(train_loss)).nonzero()[0, 0])
                raise ModelDiverged(
                    f"spectrum model training diverged: non-finite loss in member {bad} "
                    f"at epoch {epoch} (learning rate {self.lr:g})"
                )
            train_loss.sum().backward()
            with torch.no_grad():
                held_loss = (err.detach() * held_w).sum(1)
                better = held_loss < best
                if bool(better.any()):
                    best = torch.where(better, held_loss, best)
                    best_epoch = torch.where(better, epoch, best_epoch)
                    sel = better.view(m, 1, 1)
                    keep_w = [
                        torch.where(sel, w.detach(), kw)
                        for w, kw in zip(weights, keep_w, strict=True)
                    ]
                    keep_b = [
                        torch.where(sel, b.detach(), kb)
                        for b, kb in zip(biases, keep_b, strict=True)
                    ]
            if int((epoch - best_epoch).min()) > self.patience:
                break
            opt.step()
        info: dict[str, object] = {
            "epochs": epoch,
            "best_epochs": [int(v) for v in best_epoch],
            "holdout_mse_scaled": [round(float(v), 6) for v in best],
        }
        return tuple(keep_w), tuple(keep_b), info


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread inside the block (then restore the setting).

    The spectrum model's matrices are small (hundreds of rows): a second
    thread gains nothing, and on a loaded 2-core machine it made a fit ~7x
    slower (0.85 s against 6 s for 60 spectra) by spinning against other work.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def spectrum_agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean squared error and mean cosine similarity of paired spectra (n, m).

    >>> spectrum_agreement(np.array([[1.0, 0.0]]), np.array([[2.0, 0.0]]))
    (0.5, 1.0)
    """
    a = np.atleast_2d(np.asarray(a, dtype=float))
    b = np.atleast_2d(np.asarray(b, dtype=float))
    mse = float(np.mean((a - b) ** 2))
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(den > 0, np.sum(a * b, axis=1) / np.where(den > 0, den, 1.0), 0.0)
    return mse, float(np.mean(cos))


# --- private helpers ---------------------------------------------------------------


def _mlp(
    z: Tensor, weights: tuple[Tensor, ...] | list[Tensor], biases: tuple[Tensor, ...] | list[Tensor]
) -> Tensor:
    """The batched MLP: (members, n, d) -> (members, n, k), SiLU between layers."""
    h = z
    last = len(weights) - 1
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        h = torch.baddbmm(b, h, w)
        if i < last:
            h = torch.nn.functional.silu(h)
    return h


def _pca(
    spectra: np.ndarray, explained: float, max_components: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(mean (m,), components (k, m), scores (n, k), explained fraction) of ``spectra``."""
    mean = spectra.mean(axis=0)
    centred = spectra - mean
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    var = sv**2
    total = float(var.sum())
    if total <= 0:
        k, frac = 1, 1.0
    else:
        cum = np.cumsum(var) / total
        k = int(np.searchsorted(cum, explained - 1e-12) + 1)
        k = max(1, min(k, max_components, len(var)))
        frac = float(cum[k - 1])
    basis = vt[:k]
    return mean, basis, centred @ basis.T, frac
