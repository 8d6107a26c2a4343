"""Spectrum -> loss: the study's cosine-similarity loss with an amplitude gate.

For a measured spectrum ``s`` with raw peak absorbance ``A = max(s)`` and a
target ``t`` on the same wavelength grid::

    loss(s) = 1 - delta(A) * cos(minmax(t), minmax(s))

    minmax(v) = (v - min v) / (max v - min v)
    cos(a, b) = a.b / (|a| |b|)
    delta(A)  = A / low   for 0 < A < low        (low  = 0.7)
              = 1         for low <= A <= high   (high = 1.2)
              = 0         for A > high, or A <= 0

Cosine similarity ignores amplitude; ``delta`` is the only amplitude signal.
The loss lies in [0, 1] (min-max scaled spectra are non-negative).

The functions and :class:`AgnpLoss` take numpy arrays (the replicate hot
path) or torch tensors: the same formula runs on either through a small
table of array operations (``_ops``), so a spectrum model can be scored, and
differentiated, by the campaign's own loss rather than a copy of it. With a
tensor the result is a tensor, with gradients (``delta`` is piecewise linear,
``minmax`` has the subgradient of max/min).

>>> import math

import numpy as np
>>> t = np.array([0.0, 1.0, 0.0])
>>> round(agnp_loss(np.array([0.0, 0.9, 0.0]), t), 6)
0.0
>>> round(agnp_loss(np.array([0.0, 0.35, 0.0]), t), 6)   # delta = 0.35 / 0.7
0.5
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

Array = Any  # a numpy array or a torch tensor (see the module docstring)

__all__ = ["AgnpLoss", "agnp_loss", "amplitude_gate", "cosine_similarity", "minmax"]

_TINY = 1e-12


def minmax(v: Array) -> Array:
    """Scale the last axis of ``v`` to [0, 1]; a flat spectrum maps to zeros."""
    xp = _ops(v)
    v = xp.asarray(v)
    lo = xp.amin(v)
    span = xp.amax(v) - lo
    return xp.where(span > _TINY, (v - lo) / xp.maximum(span, _TINY), 0.0)


def cosine_similarity(a: Array, b: Array) -> Array:
    """Cosine of the angle between ``a`` and ``b`` along the last axis (0 if either is 0)."""
    xp = _ops(a)
    num = xp.sum(a * b)
    den = xp.norm(a) * xp.norm(b)
    return xp.where(den > _TINY, num / xp.maximum(den, _TINY), 0.0)


def amplitude_gate(peak: Array | float, low: float = 0.7, high: float = 1.2) -> Array:
    """``delta(A)``: A/low below ``low``, 1 up to ``high``, 0 above (and for A <= 0)."""
    xp = _ops(peak)
    a = xp.asarray(peak)
    return xp.where(a <= 0, 0.0, xp.where(a < low, a / low, xp.where(a <= high, 1.0, 0.0)))


def agnp_loss(
    spectrum: np.ndarray, target: np.ndarray, low: float = 0.7, high: float = 1.2
) -> float | np.ndarray:
    """The study's loss for one spectrum (1-D) or a stack of spectra (n, m)."""
    s = np.asarray(spectrum, dtype=float)
    t = np.asarray(target, dtype=float)
    if s.shape[-1] != t.shape[-1]:
        raise ValueError(f"spectrum has {s.shape[-1]} points, target {t.shape[-1]}")
    loss = 1.0 - amplitude_gate(s.max(axis=-1), low, high) * cosine_similarity(minmax(t), minmax(s))
    return float(loss) if loss.ndim == 0 else loss


@dataclass(frozen=True)
class AgnpLoss:
    """The loss as a configured object: a target on a wavelength grid.

    Attributes:
        target: target absorbance, shape (m,).
        wavelengths: the grid in nm, shape (m,).
        low, high: the amplitude gate's plateau.
    """

    target: np.ndarray
    wavelengths: np.ndarray
    low: float = 0.7
    high: float = 1.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", np.asarray(self.target, dtype=float))
        object.__setattr__(self, "wavelengths", np.asarray(self.wavelengths, dtype=float))
        if self.target.shape != self.wavelengths.shape or self.target.ndim != 1:
            raise ValueError("target and wavelengths must be 1-D of the same length")
        if not (0 < self.low <= self.high):
            raise ValueError("need 0 < low <= high")
        unit = minmax(self.target)
        norm = float(np.linalg.norm(unit))
        # the scaled target, divided by its norm once (this is the replicate hot path)
        object.__setattr__(self, "_t_hat", unit / norm if norm > _TINY else unit)

    def __call__(self, spectrum: Array) -> float | Array:
        """The loss of one spectrum (m,) or a stack (..., m): a float for one numpy
        spectrum, else an array (a tensor for tensor input)."""
        if type(spectrum) is np.ndarray and spectrum.ndim == 1 and spectrum.dtype == np.float64:
            return self._one(spectrum)  # the replicate hot path: same floats, fewer calls
        xp = _ops(spectrum)
        s = xp.asarray(spectrum)
        if s.shape[-1] != self.target.shape[-1]:
            raise ValueError(f"spectrum has {s.shape[-1]} points, target {self.target.shape[-1]}")
        t_hat = xp.like(self._t_hat, s)  # type: ignore[attr-defined]
        peak = xp.amax(s)[..., 0]
        scaled = minmax(s)
        norm = xp.norm(scaled)
        cos = xp.where(norm > _TINY, (scaled @ t_hat) / xp.maximum(norm, _TINY), 0.0)
        loss = 1.0 - amplitude_gate(peak, self.low, self.high) * cos
        return float(loss) if xp is _NUMPY and loss.ndim == 0 else loss

    def _one(self, s: np.ndarray) -> float:
        """:meth:`__call__` for one float64 numpy spectrum, in scalars where the general
        path broadcasts; every operation is the same, so the float is identical."""
        if s.shape[0] != self.target.shape[-1]:
            raise ValueError(f"spectrum has {s.shape[0]} points, target {self.target.shape[-1]}")
        lo, peak = np.minimum.reduce(s), np.maximum.reduce(s)  # = s.min(), s.max(), no wrapper
        span = peak - lo
        scaled = (s - lo) / span if span > _TINY else np.zeros_like(s)
        norm = math.sqrt(np.add.reduce(scaled * scaled))
        cos = float(scaled @ self._t_hat) / norm if norm > _TINY else 0.0
        a = float(peak)
        gate = (
            0.0 if a <= 0 else (a / self.low if a < self.low else (1.0 if a <= self.high else 0.0))
        )
        return 1.0 - gate * cos


# --- private helpers ------------------------------------------------------------


class _NumpyOps:
    """The array operations the loss needs, on numpy arrays (last axis)."""

    @staticmethod
    def asarray(v: Any) -> np.ndarray:
        return np.asarray(v, dtype=float)

    @staticmethod
    def like(v: np.ndarray, ref: np.ndarray) -> np.ndarray:
        return v

    @staticmethod
    def amax(v: np.ndarray) -> np.ndarray:
        return v.max(axis=-1, keepdims=True)

    @staticmethod
    def amin(v: np.ndarray) -> np.ndarray:
        return v.min(axis=-1, keepdims=True)

    @staticmethod
    def sum(v: np.ndarray) -> np.ndarray:
        return np.sum(v, axis=-1)

    @staticmethod
    def norm(v: np.ndarray) -> np.ndarray:
        return np.linalg.norm(v, axis=-1)

    @staticmethod
    def maximum(v: np.ndarray, floor: float) -> np.ndarray:
        return np.maximum(v, floor)

    where = staticmethod(np.where)


class _TorchOps:
    """The same operations on torch tensors (differentiable; torch imported lazily)."""

    def __init__(self) -> None:
        import torch

        self.torch = torch

    def asarray(self, v: Any) -> Any:
        return v if v.is_floating_point() else v.to(self.torch.float64)

    def like(self, v: np.ndarray, ref: Any) -> Any:
        return self.torch.as_tensor(v, dtype=ref.dtype, device=ref.device)

    def amax(self, v: Any) -> Any:
        return v.amax(dim=-1, keepdim=True)

    def amin(self, v: Any) -> Any:
        return v.amin(dim=-1, keepdim=True)

    def sum(self, v: Any) -> Any:
        return v.sum(dim=-1)

    def norm(self, v: Any) -> Any:
        return self.torch.linalg.vector_norm(v, dim=-1)

    def maximum(self, v: Any, floor: float) -> Any:
        return v.clamp_min(floor)

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        return self.torch.where(cond, a, b)


_NUMPY = _NumpyOps()
_TORCH: _TorchOps | None = None


def _ops(v: Any) -> Any:
    """The operations for ``v``'s kind of array: torch for tensors, else numpy."""
    global _TORCH
    if type(v).__module__.startswith("torch"):
        if _TORCH is None:
            _TORCH = _TorchOps()
        return _TORCH
    return _NUMPY
