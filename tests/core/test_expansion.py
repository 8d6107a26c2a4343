"""Tests for agent.core.expansion: the boundary-expansion rule."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.expansion import BoundaryExpansion, Expansion
from agent.core.space import Parameter, Space


def space_1d(
    lower: float = 4.0,
    upper: float = 20.0,
    hard: tuple[float, float] = (0.5, 80.0),
    *,
    expandable: bool = True,
) -> Space:
    return Space((Parameter("q", lower, upper, hard[0], hard[1], expandable=expandable),))


def batch(*values: float) -> np.ndarray:
    return np.array(values, dtype=float).reshape(-1, 1)


# 3 of 4 proposals within 5 % (0.8) of the upper face 20, one in the middle
AT_UPPER = batch(19.9, 19.5, 20.0, 12.0)
AT_LOWER = batch(4.0, 4.3, 4.7, 12.0)
MIDDLE = batch(8.0, 10.0, 12.0, 16.0)


@pytest.mark.parametrize(
    ("rounds", "expected"),
    [
        ([AT_UPPER], (4.0, 28.0)),  # upper face: + 50 % of the width 16
        ([AT_LOWER], (0.5, 20.0)),  # lower face: 4 - 8 = -4, capped at the hard limit 0.5
        ([np.concatenate([AT_UPPER, AT_LOWER])], (0.5, 28.0)),  # both faces at once
        ([MIDDLE], (4.0, 20.0)),
        ([batch(19.9, 19.5, 12.0, 12.0)], (4.0, 20.0)),  # 2 hits < min_hits = 3
        ([batch(19.9, 19.5)], (4.0, 20.0 + 8.0)),  # a batch smaller than min_hits: all of it
        ([batch()], (4.0, 20.0)),  # an empty round hits nothing
    ],
    ids=["upper", "lower-capped", "both", "middle", "too-few", "small-batch", "empty"],
)
def test_expansion_table(rounds, expected):
    new, records = BoundaryExpansion(patience=1)(space_1d(), rounds)
    assert tuple(new.bounds[:, 0]) == expected
    for r in records:
        assert r.new_bounds == expected
        assert r.old_bounds == (4.0, 20.0)


def test_record_says_why_with_numbers():
    _, (record,) = BoundaryExpansion(patience=1)(space_1d(), [AT_UPPER])
    assert record == Expansion("q", "upper", (4.0, 20.0), (4.0, 28.0), record.reason)
    assert "3 of 4 proposals" in record.reason
    assert "0.8" in record.reason and "to 28" in record.reason
    json.dumps(asdict(record))  # plain values only


def test_capped_at_the_hard_limit_and_says_so():
    space = space_1d(4.0, 20.0, (0.5, 24.0))
    _, (record,) = BoundaryExpansion(patience=1)(space, [AT_UPPER])
    assert record.new_bounds == (4.0, 24.0)
    assert "capped at the hard limit 24" in record.reason


def test_face_at_the_hard_limit_never_expands_and_says_nothing():
    space = space_1d(4.0, 20.0, (0.5, 20.0))
    new, records = BoundaryExpansion(patience=1)(space, [AT_UPPER, AT_UPPER])
    assert new == space
    assert records == ()


def test_not_expandable_parameter_never_expands():
    space = space_1d(expandable=False)
    new, records = BoundaryExpansion(patience=1)(space, [AT_UPPER])
    assert new == space and records == ()


@pytest.mark.parametrize(
    ("rounds", "expands"),
    [
        ([AT_UPPER], False),  # fewer rounds than the patience
        ([MIDDLE, AT_UPPER], False),  # only the last round hits
        ([AT_UPPER, MIDDLE], False),  # streak broken
        ([AT_UPPER, AT_UPPER], True),
        ([MIDDLE, AT_UPPER, AT_UPPER], True),  # only the last `patience` rounds count
    ],
)
def test_patience_counts_consecutive_rounds(rounds, expands):
    new, records = BoundaryExpansion(patience=2)(space_1d(), rounds)
    assert (len(records) == 1) is expands
    assert bool(new.bounds[1, 0] == 28.0) is expands


def test_incumbent_at_the_edge_makes_a_round_hit():
    rule = BoundaryExpansion(patience=2)
    incumbents = [np.array([19.8]), np.array([19.9])]
    _, (record,) = rule(space_1d(), [MIDDLE, MIDDLE], incumbents)
    assert record.face == "upper" and "incumbent at 19.9" in record.reason
    # but not when the rule is told to ignore incumbents, nor when one is missing
    ignore = BoundaryExpansion(patience=2, use_incumbent=False)
    assert ignore(space_1d(), [MIDDLE, MIDDLE], incumbents)[1] == ()
    assert rule(space_1d(), [MIDDLE, MIDDLE], [None, np.array([19.9])])[1] == ()


def test_after_a_widening_old_proposals_no_longer_count():
    rule = BoundaryExpansion(patience=2)
    rounds = [AT_UPPER, AT_UPPER]
    wider, records = rule(space_1d(), rounds)
    assert len(records) == 1
    again, more = rule(wider, rounds)
    assert again == wider and more == ()


def test_only_the_expandable_faces_of_a_multi_parameter_space_move():
    space = Space(
        (
            Parameter("a", 4.0, 20.0, 0.5, 80.0, expandable=True),
            Parameter("b", 10.0, 40.0, 10.0, 40.0),
            Parameter("c", 200.0, 1000.0, 100.0, 1000.0, expandable=True),
        )
    )
    proposals = np.array(
        [[20.0, 40.0, 1000.0], [19.9, 39.0, 210.0], [19.5, 40.0, 205.0], [10.0, 25.0, 600.0]]
    )
    new, records = BoundaryExpansion(patience=1)(space, [proposals])
    # a: upper widened; b: not expandable; c: upper at hard limit, lower has only 2 hits
    assert [(r.parameter, r.face) for r in records] == [("a", "upper")]
    np.testing.assert_array_equal(new.bounds, [[4.0, 10.0, 200.0], [28.0, 40.0, 1000.0]])


@settings(max_examples=60, deadline=None)
@given(
    lower=st.floats(1.0, 40.0),
    width=st.floats(1.0, 40.0),
    values=st.lists(st.floats(0.0, 1.0), min_size=0, max_size=15),
    rounds=st.integers(1, 3),
    grow=st.floats(0.05, 2.0),
    patience=st.integers(1, 3),
)
def test_never_shrinks_never_leaves_the_hard_limits(lower, width, values, rounds, grow, patience):
    space = space_1d(lower, lower + width, (0.5, 90.0))
    x = batch(*(lower + v * width for v in values))
    rule = BoundaryExpansion(patience=patience, grow_fraction=grow, min_hits=1)
    new, records = rule(space, [x] * rounds)
    (lo, hi) = new.bounds[:, 0]
    assert 0.5 <= lo <= lower and lower + width <= hi <= 90.0
    for r in records:
        assert r.new_bounds == (lo, hi)


def test_bad_settings_and_inputs_are_rejected():
    with pytest.raises(ValueError):
        BoundaryExpansion(edge_fraction=0.0)
    with pytest.raises(ValueError):
        BoundaryExpansion(patience=0)
    with pytest.raises(ValueError):
        BoundaryExpansion(grow_fraction=0.0)
    with pytest.raises(ValueError, match="incumbents"):
        BoundaryExpansion()(space_1d(), [AT_UPPER], [None, None])
    with pytest.raises(ValueError, match="columns"):
        BoundaryExpansion(patience=1)(space_1d(), [np.zeros((2, 3))])
