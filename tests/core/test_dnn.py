"""Tests for agent.core.strategies.dnn: proposals by the spectrum model's predicted loss.

Runtime: ~3 s (one small model fitted per module; hypothesis runs 15 batches).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core.objective import AgnpLoss
from agent.core.space import Space
from agent.core.strategies.base import Observations, StrategyError
from agent.core.strategies.dnn import DnnProposals, training_spectra
from agent.core.strategies.spectrum_model import FittedSpectrumModel, SpectrumEnsemble
from agent.core.testing import agnp_space

WL = np.linspace(380.0, 800.0, 106)
# the target: a band at 640 nm, 0.9 high (inside the amplitude gate's plateau)
LOSS = AgnpLoss(0.9 * np.exp(-0.5 * ((WL - 640.0) / 40.0) ** 2), WL)


def world(x: np.ndarray) -> np.ndarray:
    """Spectra of agnp recipes: a band whose centre follows the AgNO3 share (4 -> 20 %
    moves it 500 -> 660 nm, the target's 640 nm at 18 %) and whose height follows the
    seed share; PVA, citrate and flow do nothing."""
    centre = 500.0 + 10.0 * (x[:, :1] - 4.0)
    height = 0.5 + 0.03 * x[:, 3:4]
    return height * np.exp(-0.5 * ((WL - centre) / 40.0) ** 2)


def feasible_sample(space: Space, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = space.from_unit(rng.random((8 * n, space.dim)))
    return x[space.is_feasible(x)][:n]


@pytest.fixture(scope="module")
def trained() -> tuple[Observations, FittedSpectrumModel]:
    space = agnp_space()
    x = feasible_sample(space, 60, 0)
    spectra = world(x)
    data = Observations(x, LOSS(spectra), np.full(len(x), np.nan), spectra, np.zeros(len(x), int))
    return data, SpectrumEnsemble(members=3, max_epochs=600).fit(x, spectra, seed=0)


def test_finds_the_planted_optimum(trained: tuple[Observations, FittedSpectrumModel]) -> None:
    data, model = trained
    batch = DnnProposals(LOSS).propose_from(model, agnp_space(), data.x, 5, seed=1)
    assert batch.strategy == ("dnn",) * 5
    # the best predicted recipe puts the band at 640 nm: AgNO3 18 % (+-1.5)
    assert abs(batch.x[0, 0] - 18.0) < 1.5
    true = LOSS(world(batch.x))
    assert true[0] < LOSS(data.spectra).min()  # better than anything measured
    assert batch.notes["dnn_predicted_loss"] == sorted(batch.notes["dnn_predicted_loss"])
    assert len(batch.notes["dnn_spread"]) == 5


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**16),
    upper=st.sampled_from([None, 90.0, 60.0, 45.0]),
    agno3_max_flow=st.sampled_from([800.0, 60.0]),
    n=st.integers(1, 15),
    min_distance=st.sampled_from([0.0, 0.1, 0.4]),
)
def test_proposals_respect_bounds_constraints_and_separation(
    trained: tuple[Observations, FittedSpectrumModel],
    seed: int,
    upper: float | None,
    agno3_max_flow: float,
    n: int,
    min_distance: float,
) -> None:
    data, model = trained
    # tighter share sums and a binding AgNO3 channel limit (q_tot * q_agno3 / 100 <= 60)
    space = agnp_space(constraint_upper=upper, agno3_max_flow=agno3_max_flow)
    avoid = np.concatenate([data.x, feasible_sample(space, 10, seed)])
    strategy = DnnProposals(LOSS, candidates=512, refine_steps=10, min_distance=min_distance)
    batch = strategy.propose_from(model, space, avoid, n, seed)
    assert batch.x.shape == (n, 5)
    assert space.is_feasible(batch.x).all()  # box, hard limits, constraint, channels
    res = space.resolution
    for i, row in enumerate(batch.x):
        others = np.concatenate([avoid, np.delete(batch.x, i, axis=0)])
        assert not np.any(np.all(np.abs(others - row) < res, axis=1)), "not separated"


def test_batch_points_keep_the_minimum_distance(
    trained: tuple[Observations, FittedSpectrumModel],
) -> None:
    data, model = trained
    space = agnp_space()
    batch = DnnProposals(LOSS, min_distance=0.15).propose_from(model, space, data.x, 8, seed=0)
    u = space.to_unit(batch.x)
    gaps = [np.linalg.norm(u[i] - u[j]) for i in range(8) for j in range(i)]
    assert min(gaps) >= 0.15


def test_refined_points_stay_feasible_and_improve_the_prediction(
    trained: tuple[Observations, FittedSpectrumModel],
) -> None:
    data, model = trained
    space = agnp_space(constraint_upper=45.0)
    plain = DnnProposals(LOSS, candidates=256, refine_steps=0)
    refined = DnnProposals(LOSS, candidates=256, refine_steps=40)
    a = plain.propose_from(model, space, data.x, 3, seed=5)
    b = refined.propose_from(model, space, data.x, 3, seed=5)
    assert space.is_feasible(b.x).all()
    assert b.notes["dnn_predicted_loss"][0] <= a.notes["dnn_predicted_loss"][0]


@pytest.mark.parametrize(
    ("spectra", "why"),
    [(None, "no spectra"), (np.zeros((4, 50)), "campaign grid of 106 points")],
    ids=["none", "other grid"],
)
def test_spectra_off_the_grid_are_refused_not_mixed(spectra: np.ndarray | None, why: str) -> None:
    data = Observations(np.zeros((4, 5)), np.zeros(4), np.zeros(4), spectra, np.ones(4, int))
    with pytest.raises(StrategyError, match=why):
        training_spectra(data, len(WL))
    with pytest.raises(StrategyError, match=why):
        DnnProposals(LOSS).propose(agnp_space(), data, 3, np.random.default_rng(0))


def test_no_dnn_proposal_where_the_feasibility_model_excludes_it(
    trained: tuple[Observations, FittedSpectrumModel],
) -> None:
    from agent.core.testing import HalfspaceFeasibility

    data, model = trained
    space = agnp_space()
    # the planted optimum (AgNO3 18 %) makes the wrong phase: AgNO3 above 12 % is excluded
    feas = HalfspaceFeasibility(space, 0, 12.0)
    batch = DnnProposals(LOSS).propose_from(model, space, data.x, 5, seed=1, feas=feas)
    assert np.all(batch.x[:, 0] <= 12.0)
    assert batch.notes["dnn_p_feasible"] == [1.0] * 5
    # a factor of 1 everywhere leaves the scores (and the picks) alone
    same = DnnProposals(LOSS).propose_from(
        model, space, data.x, 5, seed=1, feas=HalfspaceFeasibility(space, 0, 99.0)
    )
    plain = DnnProposals(LOSS).propose_from(model, space, data.x, 5, seed=1)
    np.testing.assert_allclose(same.x, plain.x)
