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

>>> import numpy as np
>>> t = np.array([0.0, 1.0, 0.0])
>>> round(agnp_loss(np.array([0.0, 0.9, 0.0]), t), 6)
0.0
>>> round(agnp_loss(np.array([0.0, 0.35, 0.0]), t), 6)   # delta = 0.35 / 0.7
0.5
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AgnpLoss", "agnp_loss", "amplitude_gate", "cosine_similarity", "minmax"]

_TINY = 1e-12


def minmax(v: np.ndarray) -> np.ndarray:
    """Scale the last axis of ``v`` to [0, 1]; a flat spectrum maps to zeros."""
    v = np.asarray(v, dtype=float)
    lo = v.min(axis=-1, keepdims=True)
    span = v.max(axis=-1, keepdims=True) - lo
    return np.where(span > _TINY, (v - lo) / np.maximum(span, _TINY), 0.0)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of the angle between ``a`` and ``b`` along the last axis (0 if either is 0)."""
    num = np.sum(a * b, axis=-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.where(den > _TINY, num / np.maximum(den, _TINY), 0.0)


def amplitude_gate(peak: np.ndarray | float, low: float = 0.7, high: float = 1.2) -> np.ndarray:
    """``delta(A)``: A/low below ``low``, 1 up to ``high``, 0 above (and for A <= 0)."""
    a = np.asarray(peak, dtype=float)
    return np.where(a <= 0, 0.0, np.where(a < low, a / low, np.where(a <= high, 1.0, 0.0)))


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

    def __call__(self, spectrum: np.ndarray) -> float | np.ndarray:
        s = np.asarray(spectrum, dtype=float)
        if s.shape[-1] != self.target.shape[-1]:
            raise ValueError(f"spectrum has {s.shape[-1]} points, target {self.target.shape[-1]}")
        peak = s.max(axis=-1)
        scaled = minmax(s)
        norm = np.linalg.norm(scaled, axis=-1)
        cos = np.where(norm > _TINY, (scaled @ self._t_hat) / np.maximum(norm, _TINY), 0.0)
        loss = 1.0 - amplitude_gate(peak, self.low, self.high) * cos
        return float(loss) if loss.ndim == 0 else loss
