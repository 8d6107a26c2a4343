"""Tests for agent.core.space: parameters, conversions, feasibility, channels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.space import Channel, ChannelMap, LinearConstraint, Parameter, Space
from agent.core.testing import agnp_space


def recipe(**kw: float) -> dict[str, float]:
    base = {"q_agno3": 10.0, "q_pva": 20.0, "q_tsc": 5.0, "q_seed": 5.0, "q_tot": 500.0}
    base.update(kw)
    return base


# --- Parameter / Space / Channel validation -----------------------------------


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("a", 1.0, 1.0, 0.0, 2.0), "lower < upper"),  # empty box
        (("a", 1.5, 1.0, 0.0, 2.0), "lower < upper"),  # inverted box
        (("a", -0.1, 1.0, 0.0, 2.0), "hard_lower <= lower"),  # box below hard limit
        (("a", 0.0, 2.5, 0.0, 2.0), "upper <= hard_upper"),  # box above hard limit
    ],
)
def test_parameter_rejects_bad_bounds(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Parameter(*args)


def test_parameter_rejects_negative_resolution() -> None:
    with pytest.raises(ValueError, match="resolution must be >= 0"):
        Parameter("a", 0.0, 1.0, 0.0, 1.0, resolution=-0.1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"parameters": (Parameter("a", 0, 1, 0, 1), Parameter("a", 0, 1, 0, 1))},
            "duplicate parameter names",
        ),
        (
            {
                "parameters": (Parameter("a", 0, 1, 0, 1),),
                "constraints": (LinearConstraint({"b": 1.0}, 1.0),),
            },
            r"constraint names unknown parameters \['b'\]",
        ),
        (
            {
                "parameters": (Parameter("a", 0, 1, 0, 1),),
                "channels": ChannelMap("tot", (Channel("x", share="a"),)),
            },
            r"pump channels name unknown parameters \['tot'\]",
        ),
    ],
)
def test_space_rejects_unknown_or_duplicate_names(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Space(**kwargs)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Channel("x"), "exactly one of share and ratio"),
        (lambda: Channel("x", share="a", ratio=1.0), "exactly one of share and ratio"),
        (lambda: Channel("x", ratio=-1.0), "ratio must be finite"),
        (lambda: Channel("x", share="a", min_flow=5.0, max_flow=1.0), "min_flow <= max_flow"),
        (
            lambda: ChannelMap("q", (Channel("x", share="a"), Channel("x", share="b"))),
            "duplicate pump channel names",
        ),
        (
            lambda: ChannelMap("q", (Channel("x", share="rest"), Channel("y", share="rest"))),
            "at most one",
        ),
    ],
)
def test_channel_validation(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


# --- shape and conversions ------------------------------------------------------


def test_shape_properties() -> None:
    space = agnp_space()
    assert space.names == ("q_agno3", "q_pva", "q_tsc", "q_seed", "q_tot")
    assert space.dim == 5
    np.testing.assert_array_equal(space.bounds, [[4, 10, 4, 4, 200], [20, 40, 20, 20, 1000]])
    np.testing.assert_array_equal(
        space.hard_bounds, [[0.5, 10, 0.5, 0.5, 100], [80, 40, 80, 80, 1000]]
    )
    np.testing.assert_array_equal(space.resolution, [0.1, 0.1, 0.1, 0.1, 1.0])
    assert space.index("q_seed") == 3


def test_to_array_and_to_recipes_round_trip() -> None:
    space = agnp_space()
    recipes = [recipe(), recipe(q_agno3=12.5, q_tot=800.0)]
    x = space.to_array(recipes)
    assert x.shape == (2, 5)
    np.testing.assert_array_equal(x[1], [12.5, 20.0, 5.0, 5.0, 800.0])
    back = space.to_recipes(x)
    assert back == recipes
    assert all(type(v) is float for r in back for v in r.values())


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"q_agno3": 1.0}, r"missing \['q_pva', 'q_seed', 'q_tot', 'q_tsc'\], unknown \[\]"),
        ({**recipe(), "q_extra": 1.0}, r"missing \[\], unknown \['q_extra'\]"),
    ],
)
def test_to_array_key_mismatch(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        agnp_space().to_array([bad])


def test_to_unit_from_unit() -> None:
    space = agnp_space()
    x = np.array([[4.0, 10.0, 4.0, 4.0, 200.0], [20.0, 40.0, 20.0, 20.0, 1000.0]])
    np.testing.assert_allclose(space.to_unit(x), [[0.0] * 5, [1.0] * 5])
    np.testing.assert_allclose(space.to_unit([12.0, 25.0, 12.0, 12.0, 600.0]), [0.5] * 5)
    np.testing.assert_allclose(space.from_unit([0.25] * 5), [8.0, 17.5, 8.0, 8.0, 400.0])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=5, max_size=5))
def test_unit_round_trip(u: list[float]) -> None:
    space = agnp_space()
    np.testing.assert_allclose(space.to_unit(space.from_unit(u)), u, atol=1e-12)


def test_constraint_matrix_and_describe() -> None:
    space = agnp_space()
    a, b = space.constraint_matrix()
    np.testing.assert_array_equal(a, [[1, 1, 1, 1, 0]])
    np.testing.assert_array_equal(b, [90.0])
    assert space.constraints[0].describe() == "q_agno3 + q_pva + q_tsc + q_seed"
    assert LinearConstraint({"a": 2.0, "b": 1.0}, 1.0).describe() == "2*a + b"


# --- feasibility -------------------------------------------------------------------


# (what, recipe overrides, in_box, feasible)
FEASIBILITY = [
    ("centre of the box", {}, True, True),
    ("box edge", {"q_agno3": 20.0, "q_tot": 1000.0}, True, True),
    ("outside the box, inside hard limits", {"q_agno3": 30.0}, True, False),
    ("outside the box, in_box=False", {"q_agno3": 30.0}, False, True),
    ("below the hard limit", {"q_agno3": 0.4}, False, False),
    ("above the hard limit of a fixed parameter", {"q_pva": 40.5}, False, False),
    (
        "constraint at its bound",
        {"q_agno3": 20.0, "q_pva": 40.0, "q_tsc": 20.0, "q_seed": 10.0},
        True,
        True,
    ),
    (
        "constraint violated",
        {"q_agno3": 20.0, "q_pva": 40.0, "q_tsc": 20.0, "q_seed": 11.0},
        True,
        False,
    ),
    ("NaN", {"q_tsc": math.nan}, True, False),
    ("infinity", {"q_tot": math.inf}, False, False),
]


@pytest.mark.parametrize(
    ("overrides", "in_box", "feasible"),
    [case[1:] for case in FEASIBILITY],
    ids=[case[0] for case in FEASIBILITY],
)
def test_is_feasible(overrides: dict, in_box: bool, feasible: bool) -> None:
    space = agnp_space()
    x = space.to_array([recipe(**overrides)])
    assert space.is_feasible(x, in_box=in_box).tolist() == [feasible]


def test_is_feasible_channel_limit() -> None:
    # agno3 flow = q_tot * q_agno3 / 100 = 1000 * 20 / 100 = 200 uL/min > 150
    space = agnp_space(agno3_max_flow=150.0)
    x = space.to_array([recipe(q_agno3=20.0, q_tot=1000.0), recipe(q_agno3=15.0, q_tot=1000.0)])
    assert space.is_feasible(x).tolist() == [False, True]


def test_is_feasible_rest_channel_below_zero() -> None:
    # no linear constraint: shares 80 + 40 + 80 + 80 = 280 % leave water a negative flow
    space = agnp_space(constraint_upper=None)
    x = space.to_array([recipe(q_agno3=80.0, q_pva=40.0, q_tsc=80.0, q_seed=80.0)])
    assert space.is_feasible(x, in_box=False).tolist() == [False]
    (msg,) = space.violations(space.to_recipes(x)[0])
    assert msg == "channel water flow -900 uL/min outside [0, 1000]"


def test_rest_channel_rounding_noise_is_zero() -> None:
    # 10.1 + 20.3 + 30.3 + (100 - 10.1 - 20.3 - 30.3) sums to 100 + 1.4e-14 in floats
    space = agnp_space(constraint_upper=None)
    r = recipe(q_agno3=10.1, q_pva=20.3, q_tsc=30.3, q_seed=100 - 10.1 - 20.3 - 30.3, q_tot=1e3)
    assert 100.0 - (r["q_agno3"] + r["q_pva"] + r["q_tsc"] + r["q_seed"]) < 0
    assert space.channels is not None
    assert space.channels.flows(r)["water"] == 0.0
    assert space.channels.flow_matrix(space.names, space.to_array([r]))[0, 4] == 0.0
    assert space.violations(r) == []


def test_is_feasible_vectorised_rows() -> None:
    space = agnp_space()
    x = space.to_array([recipe(), recipe(q_agno3=30.0), recipe(q_seed=math.nan)])
    assert space.is_feasible(x).tolist() == [True, False, False]
    assert space.is_feasible(x[0]).tolist() == [True]  # one row as 1-D


@pytest.mark.parametrize(
    ("overrides", "in_box", "expected"),
    [
        ({}, False, []),
        ({"q_agno3": 30.0}, False, []),
        ({"q_agno3": 30.0}, True, ["q_agno3=30 outside the box [4, 20]"]),
        (
            {"q_agno3": 90.0},
            False,
            [
                "q_agno3=90 outside hard limits [0.5, 80]",
                "q_agno3 + q_pva + q_tsc + q_seed = 120 > 90",
            ],
        ),
        ({"q_agno3": 0.4}, False, ["q_agno3=0.4 outside hard limits [0.5, 80]"]),
        ({"q_tsc": math.nan}, False, ["q_tsc is not finite"]),
        (
            {"q_agno3": 20.0, "q_pva": 40.0, "q_tsc": 20.0, "q_seed": 11.0},
            False,
            ["q_agno3 + q_pva + q_tsc + q_seed = 91 > 90"],
        ),
    ],
)
def test_violations(overrides: dict, in_box: bool, expected: list[str]) -> None:
    assert agnp_space().violations(recipe(**overrides), in_box=in_box) == expected


def test_violations_channel_and_keys() -> None:
    space = agnp_space(agno3_max_flow=150.0)
    assert space.violations(recipe(q_agno3=20.0, q_tot=1000.0)) == [
        "channel agno3 flow 200 uL/min outside [0, 150]"
    ]
    (msg,) = space.violations({"q_agno3": 1.0})
    assert msg.startswith("recipe keys do not match the space: missing")
    (msg,) = space.violations(recipe(q_tot="fast"))  # type: ignore[arg-type]
    assert "could not convert" in msg


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=5, max_size=5))
def test_violations_agree_with_is_feasible(u: list[float]) -> None:
    space = agnp_space(agno3_max_flow=300.0)
    lo, hi = space.hard_bounds
    x = lo + np.asarray(u) * (hi - lo)
    (rec,) = space.to_recipes(x[None])
    assert bool(space.is_feasible(x, in_box=False)[0]) == (space.violations(rec) == [])


# --- changing the box ----------------------------------------------------------------


def test_with_bounds_clips_to_hard_limits() -> None:
    space = agnp_space()
    wider = space.with_bounds("q_agno3", 0.0, 100.0)
    p = wider.parameters[wider.index("q_agno3")]
    assert (p.lower, p.upper) == (0.5, 80.0)
    assert (p.hard_lower, p.hard_upper, p.expandable, p.resolution) == (0.5, 80.0, True, 0.1)
    assert space.parameters[0].upper == 20.0  # the original is untouched
    assert wider.parameters[1:] == space.parameters[1:]
    assert wider.constraints == space.constraints and wider.channels == space.channels
    assert wider.index("q_tot") == 4


def test_with_bounds_rejects_an_empty_box() -> None:
    with pytest.raises(ValueError, match="lower < upper"):
        agnp_space().with_bounds("q_agno3", 90.0, 100.0)  # clipped to [80, 80]


# --- pump channels ---------------------------------------------------------------------


def test_agnp_channel_flows_by_hand() -> None:
    # q_tot = 500 uL/min; agno3 10 % -> 50, pva 20 % -> 100, tsc 5 % -> 25, seed 5 % -> 25,
    # water gets the rest: 500 * (100 - 40) / 100 = 300; oil = 500 * 1.0 = 500.
    space = agnp_space()
    assert space.channels is not None
    flows = space.channels.flows(recipe())
    assert flows == {
        "agno3": 50.0,
        "pva": 100.0,
        "tsc": 25.0,
        "seed": 25.0,
        "water": 300.0,
        "oil": 500.0,
    }
    assert sum(flows[c] for c in ("agno3", "pva", "tsc", "seed", "water")) == 500.0
    matrix = space.channels.flow_matrix(space.names, space.to_array([recipe()]))
    np.testing.assert_allclose(matrix, [[50.0, 100.0, 25.0, 25.0, 300.0, 500.0]])
    lo, hi = space.channels.limits()
    np.testing.assert_array_equal(lo, [0.0] * 6)
    np.testing.assert_array_equal(hi, [800.0] * 4 + [1000.0] * 2)
