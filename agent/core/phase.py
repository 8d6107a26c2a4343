"""Phase labels: which are acceptable, which one a condition uses, whether it is feasible.

The XRD labeller's verdict on a condition may arrive rounds after its spectra.
The campaign attaches each label to its condition whenever it comes; these
pure helpers say whether a label is acceptable (:func:`label_problem`), which
of several labels counts (:func:`chosen_label`: the most confident), and what
the feasibility model is told about a condition (:func:`feasible_value`)::

    feasible = 1   the chosen label is the required phase with confidence >= min_confidence
    feasible = 0   any other chosen label
    feasible = NaN no label yet (or none ever came: the condition is "unlabelled")

>>> req = PhaseSettings(required="Ag-fcc", min_confidence=0.7, phases=("Ag-fcc", "Ag2O"))
>>> label_problem("AgCl", 0.9, req)
('unknown_phase', "phase 'AgCl' is not one of Ag-fcc, Ag2O")
>>> feasible_value([("Ag-fcc", 0.6), ("Ag2O", 0.9)], req)
0.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PhaseSettings", "chosen_label", "feasible_value", "label_problem"]


@dataclass(frozen=True)
class PhaseSettings:
    """What the campaign requires of the solid phase, and how it treats labels.

    Attributes:
        required: the phase a recipe must make (None: no requirement, no
            feasibility model).
        min_confidence: a label of the required phase counts as feasible only
            at or above this confidence.
        phases: the phase names a labeller may report (empty: any name).
        label_timeout_s: a completed condition with no label this long after
            it completed is marked unlabelled (it stays in the data set).
        feasibility: use the feasibility model when a phase is required
            (False: labels are recorded but the optimiser ignores them).
        p_floor: candidates whose probability of feasibility is below this are
            never proposed.
    """

    required: str | None = None
    min_confidence: float = 0.5
    phases: tuple[str, ...] = ()
    label_timeout_s: float = 3600.0
    feasibility: bool = True
    p_floor: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence}")
        if not 0.0 <= self.p_floor < 1.0:
            raise ValueError(f"p_floor must be in [0, 1), got {self.p_floor}")
        if not self.label_timeout_s > 0.0:
            raise ValueError(f"label_timeout_s must be > 0, got {self.label_timeout_s}")
        if self.required is not None and self.phases and self.required not in self.phases:
            raise ValueError(f"required phase {self.required!r} is not in phases {self.phases}")

    @property
    def active(self) -> bool:
        """Whether the optimiser models feasibility."""
        return self.required is not None and self.feasibility


def label_problem(phase: str, confidence: float, settings: PhaseSettings) -> tuple[str, str] | None:
    """Why a label cannot be accepted, as ``(code, reason)``, or None if it can."""
    if not isinstance(confidence, (int, float)) or not math.isfinite(confidence):
        return "bad_confidence", f"confidence {confidence!r} is not a finite number"
    if not 0.0 <= confidence <= 1.0:
        return "bad_confidence", f"confidence {confidence:g} is outside [0, 1]"
    if settings.phases and phase not in settings.phases:
        return "unknown_phase", f"phase {phase!r} is not one of {', '.join(settings.phases)}"
    return None


def chosen_label(labels: Sequence[tuple[str, float]]) -> tuple[str, float] | None:
    """The label that counts: the most confident (the first of equals); None if none."""
    return max(labels, key=lambda lc: lc[1]) if labels else None


def feasible_value(labels: Sequence[tuple[str, float]], settings: PhaseSettings) -> float:
    """1.0 feasible, 0.0 infeasible, NaN unknown (see the module docstring)."""
    label = chosen_label(labels)
    if label is None or settings.required is None:
        return math.nan
    phase, conf = label
    return 1.0 if phase == settings.required and conf >= settings.min_confidence else 0.0
