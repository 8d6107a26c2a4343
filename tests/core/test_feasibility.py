"""The feasibility model and its factor in the acquisitions (LP-EI, UCB, the DNN's scores).

A 2-D square whose loss is lowest at a = 0.8, with the wrong phase at a > 0.6:
the spectral optimum lies in the infeasible region. ~6 s.
"""

from __future__ import annotations

import numpy as np
import pytest

from agent.core.space import Parameter, Space
from agent.core.strategies.base import Observations
from agent.core.strategies.bo import LocalPenalizationEI, UpperConfidenceBound
from agent.core.strategies.feasibility import fit_feasibility
from agent.core.testing import HalfspaceFeasibility

FAST = {"pool_size": 256, "local_samples": 64, "acq_samples": 64}
EDGE = 0.6  # a > EDGE makes the wrong phase


def square() -> Space:
    return Space((Parameter("a", 0.0, 1.0, 0.0, 1.0), Parameter("b", 0.0, 1.0, 0.0, 1.0)))


def labelled(n: int = 30, seed: int = 0, *, feasible: bool = True) -> Observations:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 2))
    loss = 1.0 - np.exp(-((x[:, 0] - 0.8) ** 2 + (x[:, 1] - 0.5) ** 2) / 0.1)
    feas = (x[:, 0] <= EDGE).astype(float) if feasible else None
    if feas is not None:
        feas[:3] = np.nan  # some labels have not come yet
    return Observations(x, loss, np.full(n, np.nan), feasible=feas)


def test_the_classifier_learns_the_phase_boundary_from_labels() -> None:
    space = square()
    model = fit_feasibility(space, labelled(), seed=0)
    assert model is not None and model.n_feasible + model.n_infeasible == 27
    p = model.prob(np.array([[0.2, 0.5], [0.45, 0.2], [0.9, 0.5], [0.8, 0.9]]))
    assert p[0] > 0.9 and p[1] > 0.9
    assert p[2] < 0.05 and p[3] < 0.05


@pytest.mark.parametrize(
    "feas",
    [None, np.ones(30), np.full(30, np.nan)],
    ids=["no-phase-required", "one-class", "no-labels-yet"],
)
def test_no_model_without_a_requirement_or_both_classes(feas) -> None:
    data = labelled()
    data = Observations(data.x, data.loss, data.loss_sd, feasible=feas)
    assert fit_feasibility(square(), data, seed=0) is None


@pytest.mark.parametrize("cls", [LocalPenalizationEI, UpperConfidenceBound], ids=["lp-ei", "ucb"])
def test_the_feasibility_factor_multiplies_the_acquisition(cls) -> None:
    space, data = square(), labelled(feasible=False)
    strategy = cls(**FAST)
    fitted = __import__("agent.core.strategies.gp", fromlist=["fit_gp"]).fit_gp(space, data)
    blind, _ = strategy._greedy(space, data, fitted, 4, 0)
    assert (space.from_unit(blind.numpy())[:, 0] > EDGE).sum() >= 2  # EI likes a ~ 0.8
    # a planted factor beyond the edge, nothing excluded (a weight, not a mask); EI there
    # is many decades above EI in the feasible half, so the factor has to be small
    soft = HalfspaceFeasibility(space, 0, EDGE, p_out=1e-30, p_floor=0.0)
    weighted, _ = strategy._greedy(space, data, fitted, 4, 0, soft)
    assert np.all(space.from_unit(weighted.numpy())[:, 0] <= EDGE)
    # a factor of 1 everywhere changes nothing
    flat = HalfspaceFeasibility(space, 0, 2.0, p_floor=0.0)
    same, _ = strategy._greedy(space, data, fitted, 4, 0, flat)
    np.testing.assert_allclose(same.numpy(), blind.numpy())


def test_no_lp_ei_proposal_where_the_classifier_is_confident_it_is_infeasible() -> None:
    space, data = square(), labelled()
    batch = LocalPenalizationEI(**FAST).propose(space, data, 6, np.random.default_rng(0))
    p = np.array(batch.notes["p_feasible"])
    assert np.all(p >= 0.05)
    model = fit_feasibility(space, data, seed=0)
    assert np.all(model.prob(batch.x) >= 0.04)  # an independent fit agrees
    assert np.all(batch.x[:, 0] <= EDGE + 0.1)  # and the truth does, up to the fuzzy edge
    assert batch.notes["feasibility"]["n_infeasible"] > 0
