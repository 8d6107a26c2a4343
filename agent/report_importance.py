"""Input importance the report computes itself when no strategy stored one.

The report fits the two-step strategy's spectrum model
(:class:`~agent.core.strategies.spectrum_model.SpectrumEnsemble`, its
defaults, seed 0) on the journal's median spectra: every complete condition
with a median spectrum on the target's grid, recipes in physical units (the
model standardises them itself, as the strategy's fit does). It then
explains the model's predicted loss and predicted peak wavelength with SHAP
(:func:`agent.explain.explain_inputs`): ``explained`` recipes against
``background`` others, both drawn without replacement from the measured
recipes with a fixed seed, so that the same journal gives the same numbers.
The loss is rebuilt from the journal's ``meta``: the target spectrum and the
amplitude gate of ``config.objective``.

When it cannot (no configuration or target in the journal, fewer than
``min_conditions`` spectra, ``shap`` not installed, the fit diverged),
:func:`model_importance` raises :class:`ImportanceMissing` with one sentence
the page shows instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agent.core.objective import AgnpLoss
from agent.core.strategies.base import StrategyError
from agent.explain import ExplainUnavailable, explain_inputs
from agent.report import CampaignRecord

__all__ = [
    "MIN_CONDITIONS",
    "N_BACKGROUND",
    "N_EXPLAINED",
    "ImportanceMissing",
    "ModelImportance",
    "model_importance",
]

MIN_CONDITIONS = 20
N_BACKGROUND = 32
N_EXPLAINED = 64


class ImportanceMissing(Exception):
    """Input importance cannot be computed; the message is the sentence the page shows."""


@dataclass(frozen=True)
class ModelImportance:
    """Mean |SHAP| per output and input, and what it was computed from."""

    values: dict[str, dict[str, float]]
    n_conditions: int
    n_background: int
    n_explained: int
    members: int

    def describe(self) -> str:
        """What the numbers are, in one sentence for the page."""
        return (
            "Mean |SHAP| of each input for the predicted loss and the predicted peak "
            f"wavelength (nm) of a spectrum model ({self.members} small neural networks) that "
            f"the report trained on the journal's median spectra of {self.n_conditions} "
            f"complete conditions; {self.n_explained} measured recipes explained against "
            f"{self.n_background} others as background."
        )


def model_importance(
    record: CampaignRecord,
    *,
    min_conditions: int = MIN_CONDITIONS,
    background: int = N_BACKGROUND,
    explained: int = N_EXPLAINED,
    seed: int = 0,
) -> ModelImportance:
    """Fit the spectrum model on ``record``'s median spectra and explain it with SHAP.

    Raises:
        ImportanceMissing: the reason it cannot, in one sentence.
    """
    from agent.core.strategies.spectrum_model import SpectrumEnsemble  # torch: only here

    loss = _loss(record)
    names = record.parameters
    rows = [
        c
        for c in record.complete
        if c.median_spectrum is not None
        and len(c.median_spectrum) == len(loss.target)
        and set(names) <= set(c.recipe)
        and all(math.isfinite(c.recipe[n]) for n in names)
    ]
    if len(rows) < min_conditions:
        raise ImportanceMissing(
            f"Not available: {len(rows)} complete conditions with a median spectrum on the "
            f"target's grid, and the report fits its spectrum model from {min_conditions} on."
        )
    x = np.array([[c.recipe[n] for n in names] for c in rows], dtype=float)
    spectra = np.stack([c.median_spectrum for c in rows if c.median_spectrum is not None])
    rng = np.random.default_rng(seed)
    n_bg, n_ex = min(background, len(x)), min(explained, len(x))
    ensemble = SpectrumEnsemble()
    try:
        model = ensemble.fit(x, spectra, seed=seed)
        values = explain_inputs(
            model,
            loss,
            names,
            background=x[rng.permutation(len(x))[:n_bg]],
            recipes=x[rng.permutation(len(x))[:n_ex]],
            seed=seed,
        )
    except ExplainUnavailable as exc:
        raise ImportanceMissing(f"Not available: {exc}.") from None
    except StrategyError as exc:  # ModelDiverged, or data the model refuses
        raise ImportanceMissing(
            f"Not available: the spectrum model could not be trained on this journal's "
            f"spectra ({exc})."
        ) from None
    return ModelImportance(values, len(rows), n_bg, n_ex, ensemble.members)


# --- private helpers ---------------------------------------------------------------


def _loss(record: CampaignRecord) -> AgnpLoss:
    """The campaign's loss from the journal's target and ``config.objective``."""
    if record.config is None or record.target is None:
        what = "configuration" if record.config is None else "target spectrum"
        raise ImportanceMissing(
            f"Not available: the journal holds no campaign {what}, so the report cannot "
            "rebuild the campaign's loss to explain."
        )
    objective = record.config.get("objective") or {}
    gate = {
        key: float(objective[name])
        for key, name in (("low", "amplitude_low"), ("high", "amplitude_high"))
        if name in objective
    }
    try:
        return AgnpLoss(record.target.values, record.target.wavelengths, **gate)
    except ValueError as exc:
        raise ImportanceMissing(
            f"Not available: the campaign's loss cannot be rebuilt from the journal ({exc})."
        ) from None
