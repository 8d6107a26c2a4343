"""Tests for agent.core.strategies.lhs: the constrained Latin hypercube."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent.core.space import Parameter, Space
from agent.core.strategies.base import Observations, Strategy, StrategyError
from agent.core.strategies.lhs import LatinHypercube
from agent.core.testing import agnp_space


def widened(space: Space) -> Space:
    """The box of the study's later rounds: every parameter out to its hard limits."""
    for p in space.parameters:
        space = space.with_bounds(p.name, p.hard_lower, p.hard_upper)
    return space


def propose(
    space: Space,
    n: int,
    seed: int = 0,
    data: Observations | None = None,
    **kwargs: object,
):
    data = data if data is not None else Observations.empty(space.dim)
    return LatinHypercube(**kwargs).propose(space, data, n, np.random.default_rng(seed))  # type: ignore[arg-type]


def assert_separated(x: np.ndarray, res: np.ndarray, others: np.ndarray | None = None) -> None:
    """No two rows closer than ``res`` in every coordinate (nor a row and ``others``)."""
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            assert np.any(np.abs(x[i] - x[j]) >= res), f"rows {i} and {j} are duplicates"
        if others is not None:
            for o in others:
                assert np.any(np.abs(x[i] - o) >= res), f"row {i} duplicates an observation"


def is_latin(space: Space, x: np.ndarray) -> bool:
    """Each column holds exactly one point in each of the n strata of the box."""
    n = len(x)
    strata = np.floor(space.to_unit(x) * n).astype(int)
    return all(sorted(strata[:, k].tolist()) == list(range(n)) for k in range(space.dim))


@st.composite
def agnp_sub_spaces(draw: st.DrawFn) -> Space:
    """Random sub-boxes of the agnp hard limits, a random constraint level and agno3
    pump limit, keeping at least ~5 % of the box feasible."""
    space = agnp_space(
        constraint_upper=draw(st.floats(60.0, 120.0)),
        agno3_max_flow=draw(st.floats(60.0, 800.0)),
    )
    for p in space.parameters:
        span = p.hard_upper - p.hard_lower
        lo = draw(st.floats(0.0, 0.4))
        width = draw(st.floats(0.05, 0.6))
        space = space.with_bounds(
            p.name, p.hard_lower + lo * span, p.hard_lower + min(lo + width, 1.0) * span
        )
    probe = space.from_unit(np.random.default_rng(0).random((1024, space.dim)))
    assume(space.is_feasible(probe).mean() >= 0.05)
    return space


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
@given(
    agnp_sub_spaces(),
    st.integers(1, 12),
    st.integers(0, 2**32 - 1),
    st.sampled_from([None, "random-cd"]),
)
def test_proposals_feasible_separated_and_latin_when_possible(
    space: Space, n: int, seed: int, optimization: str | None
) -> None:
    batch = propose(space, n, seed, optimization=optimization, max_tries=20)
    assert batch.x.shape == (n, 5)
    assert batch.strategy == ("lhs",) * n
    assert space.is_feasible(batch.x).all()
    assert_separated(batch.x, space.resolution)
    assert batch.notes["latin"] == (batch.notes["replaced"] == 0)
    if batch.notes["latin"]:
        assert is_latin(space, batch.x)


@settings(max_examples=20, deadline=None)
@given(
    st.lists(st.floats(0.05, 1.0), min_size=4, max_size=4),
    st.integers(2, 15),
    st.integers(0, 2**32 - 1),
)
def test_latin_when_no_constraint_binds(uppers: list[float], n: int, seed: int) -> None:
    # shares at most 20 + 30 + 20 + 20 = 90 %: the constraint and the pump limits never bind
    space = agnp_space()
    caps = {"q_agno3": 20.0, "q_pva": 30.0, "q_tsc": 20.0, "q_seed": 20.0}
    for (name, cap), f in zip(caps.items(), uppers, strict=True):
        p = space.parameters[space.index(name)]
        space = space.with_bounds(name, p.hard_lower, p.hard_lower + f * (cap - p.hard_lower))
    batch = propose(space, n, seed)
    assert batch.notes["latin"] is True and batch.notes["tries"] == 1
    assert is_latin(space, batch.x)
    assert space.is_feasible(batch.x).all()


def test_reference_initial_design() -> None:
    space = agnp_space()
    batch = propose(space, 15, seed=0)
    assert batch.x.shape == (15, 5)
    assert batch.notes["latin"] is True
    assert is_latin(space, batch.x)
    assert space.is_feasible(batch.x).all()
    assert 0.9 < batch.notes["feasible_fraction"] <= 1.0


def test_random_cd_lowers_discrepancy() -> None:
    # same seed: the same first design, then optimised by feasible column swaps
    space = agnp_space()
    plain = propose(space, 15, seed=4, optimization=None)
    tuned = propose(space, 15, seed=4, optimization="random-cd")
    assert tuned.notes["discrepancy"] < plain.notes["discrepancy"]
    assert is_latin(space, tuned.x) and space.is_feasible(tuned.x).all()


def test_deterministic_given_the_seed() -> None:
    space = widened(agnp_space())
    a = propose(space, 8, seed=11, max_tries=10)
    b = propose(space, 8, seed=11, max_tries=10)
    c = propose(space, 8, seed=12, max_tries=10)
    np.testing.assert_array_equal(a.x, b.x)
    assert a.notes == b.notes
    assert not np.array_equal(a.x, c.x)


def test_fallback_in_the_widened_box() -> None:
    # in the full hard box only ~9 % is feasible: no Latin design of 15 rows fits
    space = widened(agnp_space())
    batch = propose(space, 15, seed=1, max_tries=10)
    assert batch.notes["latin"] is False
    assert 0 < batch.notes["replaced"] < 15
    assert "replaced" in str(batch.notes["fallback"])
    assert space.is_feasible(batch.x).all()
    assert_separated(batch.x, space.resolution)


def test_separated_from_observations() -> None:
    space = Space(
        (
            Parameter("a", 0.0, 1.0, 0.0, 1.0, resolution=0.2),
            Parameter("b", 0.0, 1.0, 0.0, 1.0, resolution=0.2),
        )
    )
    first = propose(space, 4, seed=0)
    data = Observations(x=first.x, loss=np.ones(4), loss_sd=np.full(4, np.nan))
    for seed in range(5):
        batch = propose(space, 4, seed=seed + 1, data=data)
        assert_separated(batch.x, space.resolution, others=first.x)


@pytest.mark.parametrize(
    ("space", "match"),
    [
        (
            agnp_space()
            .with_bounds("q_agno3", 40.0, 80.0)
            .with_bounds("q_tsc", 30.0, 80.0)
            .with_bounds("q_seed", 20.0, 80.0),
            r"no feasible recipe in 65536 samples of the box q_agno3 \[40, 80\].*"
            r"q_agno3 \+ q_pva \+ q_tsc \+ q_seed <= 90 fails for 100%",
        ),
        (
            # agno3 flow >= 200 * 10 / 100 = 20 uL/min > the pump's 10
            agnp_space(agno3_max_flow=10.0).with_bounds("q_agno3", 10.0, 20.0),
            r"channel agno3 flow within \[0, 10\] uL/min fails for 100%",
        ),
        (
            Space((Parameter("a", 0.0, 1.0, 0.0, 1.0, resolution=0.1),)),
            r"too small for 20 recipes separated by the resolution \[0.1\]",
        ),
    ],
    ids=["constraint", "pump channel", "resolution"],
)
def test_strategy_error_when_nothing_fits(space: Space, match: str) -> None:
    with pytest.raises(StrategyError, match=match):
        propose(space, 20, max_tries=5)


def test_edge_cases_and_settings() -> None:
    space = agnp_space()
    empty = propose(space, 0)
    assert empty.x.shape == (0, 5) and empty.strategy == ()
    with pytest.raises(StrategyError, match="cannot propose -1"):
        propose(space, -1)
    one = propose(space, 1)
    assert one.x.shape == (1, 5) and space.is_feasible(one.x).all()
    with pytest.raises(ValueError, match="optimization"):
        LatinHypercube(optimization="lloyd")
    with pytest.raises(ValueError, match="max_tries"):
        LatinHypercube(max_tries=0)
    lhs = LatinHypercube()
    assert isinstance(lhs, Strategy) and lhs.name == "lhs"
