"""Tests for agent.core.strategies.bo (and its gp / penalisation helpers)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from botorch.acquisition import LogExpectedImprovement
from botorch.test_functions import Branin
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core.space import Parameter, Space
from agent.core.strategies.base import Observations, Strategy, StrategyError
from agent.core.strategies.bo import (
    LocalPenalizationEI,
    QLogNEI,
    UpperConfidenceBound,
    _snap_to_faces,
    regret_beta,
)
from agent.core.strategies.gp import (
    DTYPE,
    CachedGP,
    feasible_pool,
    fit_gp,
    unit_constraint_matrix,
    unit_constraints,
)
from agent.core.strategies.penalisation import (
    LogEI,
    LogSoftplusUCB,
    PenalisedAcquisition,
    PenalisedObjective,
    lipschitz_constant,
    log_penaliser,
)
from agent.core.testing import agnp_space

# Small settings keep every proposal well under a second.
FAST = {"pool_size": 256, "local_samples": 64, "acq_samples": 64}
REFINE = {**FAST, "num_restarts": 2, "maxiter": 15}  # with the SLSQP refinement


def square() -> Space:
    return Space((Parameter("a", 0.0, 1.0, 0.0, 2.0), Parameter("b", 0.0, 1.0, 0.0, 1.0)))


def bowl(space: Space, x: np.ndarray) -> np.ndarray:
    """A smooth loss of the recipe with its minimum towards high AgNO3, low seed."""
    u = space.to_unit(x)
    centre = np.array([0.8, 0.3, 0.2, 0.1, 0.6])[: space.dim]
    return 1.0 - np.exp(-(((u - centre) ** 2) / 0.3).sum(1))


def feasible_random(space: Space, n: int, rng: np.random.Generator) -> np.ndarray:
    out: list[np.ndarray] = []
    while sum(len(a) for a in out) < n:
        x = space.from_unit(rng.random((4 * n, space.dim)))
        out.append(x[space.is_feasible(x)])
    return np.concatenate(out)[:n]


def observe(space: Space, x: np.ndarray, *, noise: float = 0.01, seed: int = 0) -> Observations:
    rng = np.random.default_rng(seed)
    loss = bowl(space, x) + noise * rng.standard_normal(len(x))
    return Observations(x=x, loss=loss, loss_sd=np.full(len(x), noise))


@pytest.fixture(scope="module")
def agnp_data() -> tuple[Space, Observations]:
    space = agnp_space()
    return space, observe(space, feasible_random(space, 20, np.random.default_rng(0)))


LP_STRATEGIES = [
    pytest.param(lambda: LocalPenalizationEI(**FAST), id="lp-ei"),
    pytest.param(lambda: LocalPenalizationEI(penaliser="soft", **REFINE), id="lp-ei-soft-refined"),
    pytest.param(lambda: LocalPenalizationEI(**REFINE), id="lp-ei-hard-refined"),
    pytest.param(lambda: UpperConfidenceBound(beta=2.0, **FAST), id="ucb"),
]


def small_qlognei() -> QLogNEI:
    # BoTorch's constrained initialisation (hit-and-run) dominates: keep q and restarts small
    return QLogNEI(num_restarts=2, raw_samples=32, options={"maxiter": 20})


STRATEGIES = [*LP_STRATEGIES, pytest.param(small_qlognei, id="qlognei")]


# --- the surrogate ----------------------------------------------------------------


def test_cached_gp_matches_botorch_posterior(agnp_data):
    space, data = agnp_data
    for noise in ("learned", "known"):
        fitted = fit_gp(space, data, noise=noise, seed=0)
        assert fitted.noise == noise
        cached = CachedGP(fitted)
        u = torch.rand(
            64, 1, space.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
        )
        ref = fitted.model.posterior(u)
        mine = cached.posterior(u)
        torch.testing.assert_close(mine.mean, ref.mean, rtol=0, atol=1e-8)
        torch.testing.assert_close(mine.variance, ref.variance, rtol=1e-6, atol=1e-10)
        mean, std = cached.mean_and_std(u.squeeze(-2))
        torch.testing.assert_close(mean, ref.mean.reshape(-1), rtol=0, atol=1e-8)
        torch.testing.assert_close(std**2, ref.variance.reshape(-1), rtol=1e-6, atol=1e-10)
        # and BoTorch's LogEI reads the same numbers through it
        best = float(fitted.train_f.max())
        torch.testing.assert_close(
            LogEI(cached, best_f=best)(u),
            LogExpectedImprovement(fitted.model, best_f=best)(u),
            rtol=1e-6,
            atol=1e-6,
        )


def test_known_noise_falls_back_to_learned_when_spread_is_missing(agnp_data):
    space, data = agnp_data
    sd = data.loss_sd.copy()
    sd[3] = np.nan
    fitted = fit_gp(space, Observations(data.x, data.loss, sd), noise="known")
    assert fitted.noise == "learned"


def test_large_data_warm_start_path(agnp_data):
    space, data = agnp_data
    fitted = fit_gp(space, data, subset_above=10, subset_size=8, refine_maxiter=5)
    assert np.isfinite(fitted.notes()["lengthscales"]).all()


def test_points_measured_outside_the_current_box_are_used():
    space = square()
    rng = np.random.default_rng(0)
    x = rng.random((12, 2)) * np.array([2.0, 1.0])  # a in [0, 2]: beyond the box [0, 1]
    data = Observations(x, ((x - 0.5) ** 2).sum(1), np.full(12, np.nan))
    fitted = fit_gp(space, data)
    assert float(fitted.train_u[:, 0].max()) > 1.0
    batch = LocalPenalizationEI(**FAST).propose(space, data, 4, np.random.default_rng(1))
    assert space.is_feasible(batch.x).all()


@pytest.mark.parametrize("make", STRATEGIES)
@pytest.mark.parametrize(
    ("x", "loss", "reason"),
    [
        (np.array([[0.5, 0.5]]), np.array([1.0]), "at least 2 observations"),
        (np.random.default_rng(0).random((6, 2)), np.full(6, 0.3), "all 6 losses are equal"),
        (
            np.random.default_rng(0).random((6, 2)),
            np.array([0.1, np.nan, 0.2, 0.3, 0.4, 0.5]),
            "non-finite loss",
        ),
        (
            np.array([[0.1, 0.2], [np.nan, 0.3], [0.5, 0.5]]),
            np.array([0.1, 0.2, 0.3]),
            "non-finite recipe",
        ),
    ],
    ids=["one-point", "constant", "nan-loss", "nan-recipe"],
)
def test_unusable_data_raises_strategy_error_with_reason(make, x, loss, reason):
    data = Observations(x, loss, np.full(len(loss), np.nan))
    with pytest.raises(StrategyError, match=reason):
        make().propose(square(), data, 3, np.random.default_rng(0))


# --- constraints -------------------------------------------------------------------


def test_unit_constraints_agree_with_the_space():
    space = agnp_space()
    a_u, b_u = unit_constraint_matrix(space)
    ((idx, coef, rhs),) = unit_constraints(space)
    u = np.random.default_rng(0).random((2000, space.dim))
    a, b = space.constraint_matrix()
    physical = (space.from_unit(u) @ a.T <= b).all(1)
    assert np.array_equal((u @ a_u.T <= b_u).all(1), physical)
    botorch_form = (u[:, idx.numpy()] @ coef.numpy()) >= rhs
    assert np.array_equal(botorch_form, physical)


def test_feasible_pool_is_feasible_and_raises_when_empty():
    space = agnp_space(agno3_max_flow=60.0)
    pool = feasible_pool(space, 300, seed=0)
    assert len(pool) == 300
    assert space.is_feasible(space.from_unit(pool.numpy())).all()
    impossible = agnp_space(constraint_upper=20.0)  # minimum share sum is 22
    with pytest.raises(StrategyError, match="no feasible point"):
        feasible_pool(impossible, 10, seed=0)


@pytest.mark.parametrize("make", LP_STRATEGIES)
def test_every_proposal_is_feasible_and_separated(make):
    # tight limits: share sum <= 60 and AgNO3 flow <= 120 uL/min (binds at high q_tot)
    space = agnp_space(constraint_upper=60.0, agno3_max_flow=120.0)
    data = observe(space, feasible_random(space, 15, np.random.default_rng(3)))
    batch = make().propose(space, data, 6, np.random.default_rng(0))
    check_batch(space, data, batch, 6)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    upper=st.floats(min_value=45.0, max_value=100.0),
    max_flow=st.floats(min_value=60.0, max_value=800.0),
    seed=st.integers(0, 2**16),
)
def test_lp_ei_feasible_for_any_constraint_and_channel_limit(upper, max_flow, seed):
    space = agnp_space(constraint_upper=upper, agno3_max_flow=max_flow)
    rng = np.random.default_rng(seed)
    data = observe(space, feasible_random(space, 10, rng), seed=seed)
    batch = LocalPenalizationEI(**REFINE).propose(space, data, 3, rng)
    check_batch(space, data, batch, 3)


def test_separation_from_measured_points_and_within_the_batch():
    # coarse resolution: 0.2 of the box in each coordinate
    space = Space(
        (
            Parameter("a", 0.0, 1.0, 0.0, 1.0, resolution=0.2),
            Parameter("b", 0.0, 1.0, 0.0, 1.0, resolution=0.2),
        )
    )
    x = np.array([[0.5, 0.5], [0.1, 0.1], [0.9, 0.1], [0.1, 0.9], [0.9, 0.9], [0.52, 0.45]])
    data = Observations(x, ((x - 0.5) ** 2).sum(1), np.full(6, np.nan))
    for settings_ in (FAST, REFINE):  # qLogNEI's rule: test_qlognei_replaces_...
        batch = LocalPenalizationEI(**settings_).propose(space, data, 6, np.random.default_rng(0))
        check_batch(space, data, batch, 6)


def test_no_room_left_raises():
    space = Space((Parameter("a", 0.0, 1.0, 0.0, 1.0, resolution=0.6),))
    x = np.array([[0.0], [0.5], [1.0]])
    data = Observations(x, np.array([0.3, 0.1, 0.2]), np.full(3, np.nan))
    with pytest.raises(StrategyError, match="no feasible candidate left"):
        LocalPenalizationEI(**FAST).propose(space, data, 3, np.random.default_rng(0))


def test_qlognei_reference_is_feasible_separated_and_deterministic():
    space = agnp_space(constraint_upper=60.0, agno3_max_flow=120.0)
    data = observe(space, feasible_random(space, 12, np.random.default_rng(3)))
    strategy = small_qlognei()
    assert isinstance(strategy, Strategy)
    a = strategy.propose(space, data, 2, np.random.default_rng(0))
    check_batch(space, data, a, 2)
    assert a.strategy == ("qlognei",) * 2
    assert json.loads(json.dumps(a.notes))["noise_model"] == "learned"
    b = small_qlognei().propose(space, data, 2, np.random.default_rng(0))
    np.testing.assert_array_equal(a.x, b.x)


def test_qlognei_replaces_infeasible_and_duplicate_candidates():
    space = agnp_space(agno3_max_flow=120.0)
    data = observe(space, feasible_random(space, 12, np.random.default_rng(3)))
    fitted = fit_gp(space, data)
    infeasible = space.to_unit(np.array([[20.0, 20.0, 10.0, 10.0, 1000.0]]))  # AgNO3 200 uL/min
    duplicate = space.to_unit(data.x[:1] + 0.01)
    fine = space.to_unit(data.x[1:2] + 1.0)
    cands = torch.as_tensor(np.concatenate([infeasible, duplicate, fine]))
    u, replaced = QLogNEI()._enforce(space, data, fitted, cands, seed=0)
    assert replaced == 2
    torch.testing.assert_close(u[2], cands[2])
    batch = Observations(space.from_unit(u.numpy()), np.zeros(3), np.zeros(3))
    check_batch(space, data, batch, 3)


# --- behaviour ------------------------------------------------------------------


@pytest.mark.parametrize("make", LP_STRATEGIES)
def test_same_seed_same_batch(make, agnp_data):
    space, data = agnp_data
    a = make().propose(space, data, 4, np.random.default_rng(7))
    b = make().propose(space, data, 4, np.random.default_rng(7))
    np.testing.assert_array_equal(a.x, b.x)
    state = torch.random.get_rng_state()
    make().propose(space, data, 2, np.random.default_rng(8))
    assert torch.equal(state, torch.random.get_rng_state()), "global torch RNG touched"


@pytest.mark.parametrize("make", LP_STRATEGIES)
def test_batch_shape_tags_and_json_notes(make, agnp_data):
    space, data = agnp_data
    strategy = make()
    assert isinstance(strategy, Strategy)
    batch = strategy.propose(space, data, 5, np.random.default_rng(0))
    assert batch.x.shape == (5, space.dim)
    assert batch.strategy == (strategy.name,) * 5
    notes = json.loads(json.dumps(batch.notes))
    assert len(notes["lengthscales"]) == space.dim
    assert notes["noise_model"] == "learned"
    empty = strategy.propose(space, data, 0, np.random.default_rng(0))
    assert empty.x.shape == (0, space.dim)


@pytest.mark.parametrize(
    ("penaliser", "min_gap", "median_gap", "span"),
    [("hard", 0.03, 0.05, 0.3), ("soft", 0.01, 0.015, 0.1)],  # soft is the weaker spreader
)
def test_local_penalisation_spreads_the_batch(penaliser, min_gap, median_gap, span, agnp_data):
    space, data = agnp_data
    batch = LocalPenalizationEI(penaliser=penaliser, **FAST).propose(
        space, data, 8, np.random.default_rng(0)
    )
    u = space.to_unit(batch.x)
    dist = np.sqrt(((u[:, None] - u[None]) ** 2).sum(-1)) + np.eye(len(u)) * 9
    # unpenalised, the 8 best pool points all sit within ~0.03 of the EI maximum
    assert dist.min() > min_gap, f"collapsed batch, min pairwise distance {dist.min():.3g}"
    assert np.median(dist.min(1)) > median_gap
    assert dist[dist < 9].max() > span


def test_lp_ei_beats_random_search_on_branin():
    branin = Branin()
    space = square()

    def loss(x: np.ndarray) -> np.ndarray:
        z = torch.as_tensor(x * np.array([15.0, 15.0]) + np.array([-5.0, 0.0]))
        return branin.evaluate_true(z).numpy()

    bo_best, random_best = [], []
    for seed in range(2):
        rng = np.random.default_rng(seed)
        x = rng.random((6, 2))
        random_x = np.concatenate([x, rng.random((15, 2))])
        strategy = LocalPenalizationEI(**FAST)
        for _ in range(3):
            data = Observations(x, loss(x), np.full(len(x), np.nan))
            x = np.concatenate([x, strategy.propose(space, data, 5, rng).x])
        bo_best.append(loss(x).min())
        random_best.append(loss(random_x).min())
    assert np.mean(bo_best) < np.mean(random_best)
    assert max(bo_best) < 0.397887 + 0.5  # global minimum of Branin: 0.397887


def test_face_snapped_candidates_sit_on_faces_and_corners_and_are_feasible():
    space = agnp_space(constraint_upper=60.0)
    lead = torch.tensor([[0.9, 0.2, 0.45, 0.05, 0.7], [0.3, 0.97, 0.5, 0.6, 0.02]], dtype=DTYPE)
    out = _snap_to_faces(space, lead, 0.5, seed=0)
    assert len(out) > 0 and space.is_feasible(space.from_unit(out.numpy())).all()
    for u in out:
        src = lead[int(torch.argmin(((lead - u) != 0).sum(-1)))]
        moved = u != src
        assert moved.any() and torch.all((u[moved] == 0) | (u[moved] == 1))
        assert torch.all(u[moved] == (src[moved] > 0.5).to(DTYPE))  # to the nearer face
    corner = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0], dtype=DTYPE)  # every coordinate of row 0
    feasible_corner = space.is_feasible(space.from_unit(corner.unsqueeze(0).numpy()))[0]
    assert bool((out == corner).all(-1).any()) == bool(feasible_corner)
    assert len(_snap_to_faces(space, lead, 0.01, seed=0)) == 0  # nothing that close to a face


# --- the closed forms agree with autograd -----------------------------------------------


@pytest.mark.parametrize("acquisition", ["log_ei", "log_softplus_ucb"])
@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_closed_form_objective_matches_autograd(acquisition, kind, agnp_data):
    space, data = agnp_data
    model = CachedGP(fit_gp(space, data))
    gen = torch.Generator().manual_seed(0)
    best = float(model.mean_and_std(model.train_u)[0].max())
    lipschitz = lipschitz_constant(
        model, torch.rand(128, space.dim, generator=gen, dtype=torch.float64)
    )
    centres = torch.rand(3, space.dim, generator=gen, dtype=torch.float64)
    cm, cs = (t.detach() for t in model.mean_and_std(centres))
    base = (
        LogEI(model, best_f=best)
        if acquisition == "log_ei"
        else LogSoftplusUCB(model, beta=2.0, offset=best, scale=model.outcome_scale)
    )
    reference = PenalisedAcquisition(base, centres, cm, cs, lipschitz, best, kind)
    fast = PenalisedObjective(
        model,
        acquisition=acquisition,
        best=best,
        lipschitz=lipschitz,
        centres=centres,
        centre_mean=cm,
        centre_std=cs,
        kind=kind,
        beta=2.0,
        scale=model.outcome_scale,
    )
    u = torch.rand(40, space.dim, generator=gen, dtype=torch.float64).requires_grad_(True)
    value = reference(u.unsqueeze(-2))
    (grad,) = torch.autograd.grad(value.sum(), u)
    value2, grad2 = fast(u.detach())
    torch.testing.assert_close(value2, value.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad2, grad, rtol=1e-5, atol=1e-6 * float(grad.abs().max()))


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_penaliser_is_low_at_the_centre_and_one_far_away(kind):
    centre = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    kw = dict(lipschitz=2.0, best=1.0, kind=kind)
    mean, std = torch.tensor([0.5]), torch.tensor([0.05])
    at = float(log_penaliser(centre + 1e-4, centre, mean, std, **kw))
    far = float(log_penaliser(centre + 0.5, centre, mean, std, **kw))
    assert at < -3.0
    assert far > -1e-2


# --- helpers ---------------------------------------------------------------------


def check_batch(space: Space, data: Observations, batch, n: int) -> None:
    assert batch.x.shape == (n, space.dim)
    assert space.is_feasible(batch.x).all(), [
        space.violations(r, in_box=True) for r in space.to_recipes(batch.x)
    ]
    if space.constraints:
        a, b = space.constraint_matrix()
        assert (batch.x @ a.T <= b + 1e-6).all()
    res = space.resolution
    others = np.concatenate([data.x, batch.x])
    for i, x in enumerate(batch.x):
        close = np.all(np.abs(others - x) < res, axis=1)
        close[len(data.x) + i] = False
        assert not close.any(), f"proposal {i} within resolution of another recipe"


# --- the numbers of the regret-bound stop rule ------------------------------------------


@pytest.mark.parametrize("make", [LP_STRATEGIES[0], LP_STRATEGIES[3], STRATEGIES[-1]])
def test_batch_reports_the_regret_bound_terms_in_loss_units(make, agnp_data):
    space, data = agnp_data
    batch = make().propose(space, data, 3, np.random.default_rng(5))
    metrics = json.loads(json.dumps(batch.notes))["metrics"]
    n, d = data.x.shape
    assert metrics["regret_beta"] == pytest.approx(regret_beta(d, n))
    # recompute the first term from BoTorch's own posterior of the same fit
    seed = int(np.random.default_rng(5).integers(0, 2**31 - 1))
    fitted = fit_gp(space, data, seed=seed)
    with torch.no_grad():
        post = fitted.model.posterior(fitted.train_u)
    mean_loss = -post.mean.squeeze(-1)
    sd = post.variance.squeeze(-1).sqrt()
    width = metrics["regret_beta"] ** 0.5
    assert metrics["ucb_min_measured"] == pytest.approx(
        float((mean_loss + width * sd).min()), abs=1e-6
    )
    # the box's minimum LCB is at most the measured recipes' and below the best UCB
    assert metrics["lcb_min_pool"] <= float((mean_loss - width * sd).min()) + 1e-9
    assert metrics["regret_bound"] == pytest.approx(
        metrics["ucb_min_measured"] - metrics["lcb_min_pool"]
    )
    assert metrics["regret_bound"] > 0
    assert 0 < metrics["gp_noise_sd"] == pytest.approx(batch.notes["noise_sd"])
