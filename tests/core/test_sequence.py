"""Per-source sequence numbers: in order, gaps, late (overtaken) and duplicates."""

from __future__ import annotations

import pytest

from agent.core.sequence import LATE_WINDOW, SequenceTracker


@pytest.mark.parametrize(
    ("seqs", "statuses"),
    [
        ([0, 1, 2], ["ok", "ok", "ok"]),
        ([0, 1, 1], ["ok", "ok", "duplicate"]),  # a duplicate
        ([0, 2, 1], ["ok", "gap", "late"]),  # reordered: 1 overtaken by 2
        ([0, 2, 1, 1], ["ok", "gap", "late", "duplicate"]),  # late only once
        ([0, 3, 2, 1, 0], ["ok", "gap", "late", "late", "duplicate"]),
        ([5, 4], ["ok", "duplicate"]),  # before the first seen is not a hole
    ],
)
def test_in_order_gap_late_and_duplicate(seqs, statuses):
    t = SequenceTracker()
    assert [t.observe("spectrometer", s).status for s in seqs] == statuses
    assert t.late == statuses.count("late")
    assert t.duplicates == statuses.count("duplicate")


def test_a_gap_counts_its_missing_and_a_late_one_is_accepted():
    t = SequenceTracker()
    t.observe("pump", 0)
    v = t.observe("pump", 4)
    assert v.status == "gap" and v.missing == 3 and v.accepted
    assert t.observe("pump", 2).accepted and t.gaps == 1 and t.missing == 3


def test_only_the_last_window_of_holes_is_remembered_and_sources_are_apart():
    t = SequenceTracker()
    t.observe("pump", 0)
    t.observe("pump", 2 * LATE_WINDOW)  # a gap wider than the window
    assert t.observe("pump", 1).status == "duplicate"  # too old to be remembered
    assert t.observe("pump", 2 * LATE_WINDOW - 1).status == "late"
    assert t.observe("xrd", 1).status == "ok"  # another source, its own numbers


def test_reset_forgets_a_source_and_its_holes():
    t = SequenceTracker()
    for s in (0, 3):
        t.observe("pump", s)
    t.reset("pump")
    assert [t.observe("pump", s).status for s in (0, 1, 2)] == ["ok", "ok", "ok"]
