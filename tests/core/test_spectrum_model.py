"""Tests for agent.core.strategies.spectrum_model: the ensemble that predicts spectra.

Runtime: ~5 s on the 2-core machine (small ensembles; one full-size fit, ~3.5 s).
"""

from __future__ import annotations

import numpy as np
import pytest

from agent.core.strategies.base import StrategyError
from agent.core.strategies.spectrum_model import (
    ModelDiverged,
    SpectrumEnsemble,
    spectrum_agreement,
)

WL = np.linspace(380.0, 800.0, 211)


def band_family(x: np.ndarray) -> np.ndarray:
    """A known smooth family: one Gaussian band whose centre (450-700 nm), width
    (30-70 nm) and height (0.5-1.2) follow inputs 0, 1, 2; inputs 3, 4 do nothing;
    a baseline of 0.05."""
    centre = 450.0 + 250.0 * x[:, :1]
    width = 30.0 + 40.0 * x[:, 1:2]
    height = 0.5 + 0.7 * x[:, 2:3]
    return height * np.exp(-0.5 * ((WL - centre) / width) ** 2) + 0.05


def test_fits_a_smooth_spectrum_family_to_stated_accuracy() -> None:
    # The stated accuracy: trained on 150 random recipes of the band family, the
    # ensemble predicts 200 unseen recipes with a mean cosine similarity >= 0.99
    # and a mean squared error <= 2e-3 (absorbance^2; bands are 0.5-1.2 high).
    rng = np.random.default_rng(0)
    x, x_new = rng.random((150, 5)), rng.random((200, 5))
    model = SpectrumEnsemble(members=5).fit(x, band_family(x), seed=0)
    mse, cos = spectrum_agreement(model.mean_spectra(x_new), band_family(x_new))
    assert cos >= 0.99
    assert mse <= 2e-3
    # and the ensemble is not a constant: its worst unseen spectrum is still close
    worst = min(
        spectrum_agreement(p[None], t[None])[1]
        for p, t in zip(model.mean_spectra(x_new), band_family(x_new), strict=True)
    )
    assert worst > 0.8
    assert model.predict(x_new[:3]).shape == (5, 3, len(WL))
    assert model.notes["components"] <= 12


def test_same_seed_same_model_other_seed_other_members() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((30, 5))
    settings = SpectrumEnsemble(members=2, max_epochs=60)
    a = settings.fit(x, band_family(x), seed=3).predict(x[:4])
    b = settings.fit(x, band_family(x), seed=3).predict(x[:4])
    c = settings.fit(x, band_family(x), seed=4).predict(x[:4])
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_early_stopping_keeps_the_best_held_out_epoch() -> None:
    rng = np.random.default_rng(2)
    x = rng.random((40, 5))
    y = band_family(x) + rng.normal(0.0, 0.05, (40, len(WL)))  # noisy: it overfits
    model = SpectrumEnsemble(members=3, max_epochs=5000, patience=30).fit(x, y, seed=0)
    epochs = model.notes["epochs"]
    best = model.notes["best_epochs"]
    assert epochs < 5000  # stopped early
    assert max(best) == epochs - 31  # no member improved for `patience` epochs
    assert all(1 <= b <= epochs for b in best)


def test_a_diverging_fit_is_discarded_with_the_reason() -> None:
    rng = np.random.default_rng(3)
    x = rng.random((20, 5))
    with pytest.raises(ModelDiverged, match="non-finite loss in member") as info:
        SpectrumEnsemble(members=2, lr=1e30, max_epochs=200).fit(x, band_family(x) * 1e30, seed=0)
    assert isinstance(info.value, StrategyError)  # the two-step strategy falls back to BO


@pytest.mark.parametrize(
    ("x", "spectra", "why"),
    [
        (np.zeros((5, 2)), np.zeros((5, 7)), "needs 8"),
        (np.zeros((10, 2)), np.zeros((9, 7)), "do not pair up"),
        (np.full((10, 2), np.nan), np.zeros((10, 7)), "non-finite"),
        (np.zeros((10, 2)), np.full((10, 7), np.inf), "non-finite"),
    ],
    ids=["too few", "unpaired", "nan recipe", "inf spectrum"],
)
def test_bad_training_data_is_refused_with_a_reason(
    x: np.ndarray, spectra: np.ndarray, why: str
) -> None:
    with pytest.raises(StrategyError, match=why):
        SpectrumEnsemble(members=2).fit(x, spectra, seed=0)


def test_spectrum_agreement_by_hand() -> None:
    # squared errors 0, 0, 1, 1 -> mse 0.5; cosines 1 and 0 -> mean 0.5
    mse, cos = spectrum_agreement(
        np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [1.0, 0.0]])
    )
    assert mse == pytest.approx(0.5)
    assert cos == pytest.approx(0.5)
