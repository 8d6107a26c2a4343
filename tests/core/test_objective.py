"""Tests for agent.core.objective: the study's loss, computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from agent.core.objective import AgnpLoss, agnp_loss, amplitude_gate, cosine_similarity, minmax

TARGET = np.array([0.0, 1.0, 0.5, 0.0])


# (what, spectrum, loss). Hand computation, with minmax(TARGET) = [0, 1, 0.5, 0]:
LOSS_CASES = [
    # same shape, peak 0.35 -> delta = 0.35 / 0.7 = 0.5, cos = 1 -> loss = 1 - 0.5 = 0.5
    ("same shape, low peak", [0.0, 0.35, 0.175, 0.0], 0.5),
    # same shape, peak 1.0 on the plateau -> delta 1, cos 1 -> loss 0
    ("same shape, plateau", [0.0, 1.0, 0.5, 0.0], 0.0),
    # minmax -> [0, 0.5, 1, 0]; a.b = 0.5 + 0.5 = 1; |a| = |b| = sqrt(1.25);
    # cos = 1 / 1.25 = 0.8; peak 0.9 -> delta 1 -> loss 0.2
    ("peak moved", [0.1, 0.5, 0.9, 0.1], 0.2),
    # the same with a baseline of 0.1 and peak 0.56: minmax unchanged -> cos 0.8;
    # delta = 0.56 / 0.7 = 0.8 -> loss = 1 - 0.64 = 0.36
    ("peak moved, low", [0.1, 0.33, 0.56, 0.1], 0.36),
    # minmax -> [1, 0, 0, 0]: orthogonal to the target -> cos 0 -> loss 1
    ("orthogonal", [0.8, 0.0, 0.0, 0.0], 1.0),
    # a flat spectrum scales to zeros -> cos 0 -> loss 1
    ("flat", [0.9, 0.9, 0.9, 0.9], 1.0),
    # all-zero spectrum: peak 0 -> delta 0 -> loss 1
    ("zero", [0.0, 0.0, 0.0, 0.0], 1.0),
    # same shape but peak 1.3 > 1.2 -> delta 0 -> loss 1
    ("saturated", [0.0, 1.3, 0.65, 0.0], 1.0),
]


@pytest.mark.parametrize(
    ("spectrum", "loss"), [c[1:] for c in LOSS_CASES], ids=[c[0] for c in LOSS_CASES]
)
def test_loss_by_hand(spectrum: list[float], loss: float) -> None:
    got = agnp_loss(np.array(spectrum), TARGET)
    assert isinstance(got, float)
    assert got == pytest.approx(loss, abs=1e-12)


@pytest.mark.parametrize(
    ("peak", "delta"),
    [
        (-0.1, 0.0),
        (0.0, 0.0),
        (0.35, 0.5),
        (0.69, 0.69 / 0.7),
        (0.7, 1.0),  # lower edge of the plateau
        (1.0, 1.0),
        (1.2, 1.0),  # upper edge of the plateau
        (1.2000001, 0.0),  # just past it
        (5.0, 0.0),
        (math.nan, 0.0),
    ],
)
def test_amplitude_gate_boundaries(peak: float, delta: float) -> None:
    assert float(amplitude_gate(peak)) == pytest.approx(delta, abs=1e-12)


@pytest.mark.parametrize(("peak", "loss"), [(0.7, 0.0), (1.2, 0.0), (1.21, 1.0)])
def test_gate_boundaries_in_the_loss(peak: float, loss: float) -> None:
    assert agnp_loss(TARGET * peak, TARGET) == pytest.approx(loss, abs=1e-12)


def test_custom_plateau() -> None:
    # plateau [0.5, 0.8]: peak 0.25 -> delta 0.5; peak 0.9 -> 0
    assert agnp_loss(TARGET * 0.25, TARGET, low=0.5, high=0.8) == pytest.approx(0.5)
    assert agnp_loss(TARGET * 0.9, TARGET, low=0.5, high=0.8) == pytest.approx(1.0)


def test_helpers() -> None:
    np.testing.assert_allclose(minmax([2.0, 4.0, 3.0]), [0.0, 1.0, 0.5])
    np.testing.assert_allclose(minmax([[1.0, 1.0], [0.0, 2.0]]), [[0.0, 0.0], [0.0, 1.0]])
    assert float(cosine_similarity(np.array([1.0, 0.0]), np.array([1.0, 1.0]))) == (
        pytest.approx(1 / math.sqrt(2))
    )
    assert float(cosine_similarity(np.zeros(2), np.ones(2))) == 0.0


def test_batch_input_matches_rows() -> None:
    spectra = np.array([c[1] for c in LOSS_CASES])
    losses = agnp_loss(spectra, TARGET)
    assert isinstance(losses, np.ndarray) and losses.shape == (len(LOSS_CASES),)
    np.testing.assert_allclose(losses, [c[2] for c in LOSS_CASES], atol=1e-12)


@pytest.mark.parametrize("spectrum", [np.zeros(3), np.zeros((2, 5))])
def test_length_mismatch(spectrum: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"spectrum has \d points, target 4"):
        agnp_loss(spectrum, TARGET)


def test_agnp_loss_object() -> None:
    loss = AgnpLoss([0.0, 1.0, 0.5, 0.0], [400.0, 410.0, 420.0, 430.0])  # lists are accepted
    assert isinstance(loss.target, np.ndarray)
    assert loss(np.array([0.0, 0.35, 0.175, 0.0])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same length"):
        AgnpLoss(TARGET, np.arange(3.0))
    with pytest.raises(ValueError, match="0 < low <= high"):
        AgnpLoss(TARGET, np.arange(4.0), low=1.3, high=1.2)


@settings(max_examples=100, deadline=None)
@given(arrays(np.float64, 6, elements=st.floats(0.0, 2.0)), st.floats(0.1, 5.0))
def test_loss_in_unit_interval_and_shape_only_on_plateau(s: np.ndarray, scale: float) -> None:
    target = np.array([0.0, 0.2, 1.0, 0.6, 0.1, 0.0])
    loss = agnp_loss(s, target)
    assert 0.0 <= loss <= 1.0 + 1e-12
    peak = s.max()
    if 0.7 <= peak <= 1.2 and 0.7 <= peak * scale <= 1.2:
        # on the plateau only the shape counts: scaling does not change the loss
        assert agnp_loss(s * scale, target) == pytest.approx(loss, abs=1e-9)


def test_torch_path_is_the_same_loss_and_differentiable() -> None:
    # the spectrum model scores predictions with the campaign's own AgnpLoss on
    # tensors: same values as on numpy arrays, and gradients that are finite
    torch = pytest.importorskip("torch")
    wl = np.linspace(400.0, 700.0, 31)
    target = np.exp(-0.5 * ((wl - 600.0) / 40.0) ** 2)
    loss = AgnpLoss(target, wl)
    rng = np.random.default_rng(0)
    # peaks from 0.2 to 1.5: every branch of the amplitude gate, plus a flat spectrum
    spectra = rng.random((6, 31)) * np.array([0.2, 0.5, 0.8, 1.0, 1.5, 1.1])[:, None]
    spectra[5] = 0.3
    s = torch.tensor(spectra, requires_grad=True)
    got = loss(s)
    assert isinstance(got, torch.Tensor)
    assert np.allclose(got.detach().numpy(), loss(spectra), rtol=0, atol=1e-12)
    assert np.allclose(got.detach().numpy(), agnp_loss(spectra, target), rtol=0, atol=1e-12)
    got.sum().backward()
    assert torch.isfinite(s.grad).all()
    assert s.grad[0].abs().sum() > 0  # below the gate the loss moves with the spectrum
    # float32 tensors (the spectrum model's dtype) agree to float32 precision
    got32 = loss(torch.tensor(spectra, dtype=torch.float32))
    assert got32.dtype == torch.float32
    assert np.allclose(got32.numpy(), loss(spectra), atol=1e-5)


@settings(max_examples=200, deadline=None)
@given(
    arrays(np.float64, 9, elements=st.floats(-0.5, 3.0, allow_nan=False)),
    st.floats(0.1, 2.0),
)
def test_one_spectrum_gives_the_same_float_as_a_stack_of_one(values, scale):
    """The 1-D fast path of AgnpLoss (the replicate hot path) is the general path's
    arithmetic in scalars: bit-identical, gate edges and flat spectra included."""
    wl = np.linspace(400.0, 480.0, 9)
    loss = AgnpLoss(np.sin(np.linspace(0.1, 3.0, 9)), wl)
    for s in (values, values * scale, np.full(9, scale), np.zeros(9)):
        assert loss(s) == float(loss(s[None, :])[0])
