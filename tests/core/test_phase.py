"""Phase labels in the campaign: late labels across rounds, bad labels, contradictions
and the unlabelled timeout (the restore: tests/agent/test_journal.py). Pure core; ~2 s."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.core.campaign import Campaign, Result, TellError
from agent.core.events import Note, PhaseLabelIn, Tick
from agent.core.phase import PhaseSettings, feasible_value, label_problem
from agent.core.testing import ToyLab, toy_settings

PHASE = PhaseSettings(
    required="Ag-fcc", min_confidence=0.7, phases=("Ag-fcc", "Ag2O"), label_timeout_s=30.0
)


class LateXrd(ToyLab):
    """An XRD whose labels never come by themselves: the test hands them in later."""

    def label(self, condition: str) -> tuple[str, float] | None:
        return None


def notes(out: list, event: str) -> list[Note]:
    return [d for d in out if isinstance(d, Note) and d.event == event]


def run_rounds(rounds: int, lab_cls=LateXrd) -> tuple[Campaign, ToyLab]:
    c = Campaign(toy_settings(rounds=rounds, phase=PHASE), seed=0)
    lab = lab_cls(c)
    lab.run()
    return c, lab


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ([], math.nan),
        ([("Ag-fcc", 0.9)], 1.0),
        ([("Ag-fcc", 0.6)], 0.0),  # the right phase, but not confident enough
        ([("Ag2O", 0.95)], 0.0),
        ([("Ag-fcc", 0.8), ("Ag2O", 0.9)], 0.0),  # contradiction: the more confident wins
        ([("Ag2O", 0.7), ("Ag-fcc", 0.8)], 1.0),
    ],
)
def test_feasible_value_uses_the_most_confident_label(labels, expected) -> None:
    got = feasible_value(labels, PHASE)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


def test_late_labels_attach_to_their_condition_rounds_later_and_reach_the_model() -> None:
    c, lab = run_rounds(3)
    assert c.rounds_complete == 3
    assert all(not r.labels for r in c.conditions.values())
    assert np.all(np.isnan(c.observations.feasible))
    # round 1's labels arrive during round 3: each lands on its own condition
    out = []
    for i, cid in enumerate(["r01-c01", "r01-c02", "r01-c03"]):
        phase = "Ag-fcc" if i < 2 else "Ag2O"
        out += c.handle(PhaseLabelIn(cid, phase, 0.9, lab.now + 1))
    labelled = notes(out, "phase_label")
    assert [n.fields["rounds_late"] for n in labelled] == [2, 2, 2]
    assert c.conditions["r01-c03"].phase == ("Ag2O", 0.9)
    assert c.conditions["r02-c01"].labels == []
    feas = c.observations.feasible
    order = [c._round_ids[0].index(cid) for cid in ("r01-c01", "r01-c02", "r01-c03")]
    assert [feas[i] for i in order] == [1.0, 1.0, 0.0]
    assert int(np.sum(np.isnan(feas))) == len(feas) - 3  # the rest still unknown


@pytest.mark.parametrize(
    ("condition", "phase", "confidence", "code"),
    [
        ("nope", "Ag-fcc", 0.9, "unknown_condition"),
        ("r01-c01", "AgCl", 0.9, "unknown_phase"),
        ("r01-c01", "Ag-fcc", 1.5, "bad_confidence"),
        ("r01-c01", "Ag-fcc", -0.1, "bad_confidence"),
        ("r01-c01", "Ag-fcc", math.nan, "bad_confidence"),
    ],
)
def test_bad_labels_are_rejected_with_a_reason_and_change_nothing(
    condition, phase, confidence, code
) -> None:
    c, lab = run_rounds(1)
    out = c.handle(PhaseLabelIn(condition, phase, confidence, lab.now + 1))
    [rejected] = notes(out, "message_rejected")
    assert rejected.fields["code"] == code and rejected.fields["reason"]
    assert rejected.level == "warning"
    assert all(not r.labels for r in c.conditions.values())


def test_a_contradicting_label_is_kept_beside_the_first_and_the_more_confident_is_used() -> None:
    c, lab = run_rounds(1)
    c.handle(PhaseLabelIn("r01-c02", "Ag-fcc", 0.8, lab.now))
    out = c.handle(PhaseLabelIn("r01-c02", "Ag2O", 0.95, lab.now))
    [note] = notes(out, "phase_label")
    assert note.level == "warning"
    assert (note.fields["contradicts"], note.fields["using"]) == ("Ag-fcc", "Ag2O")
    assert c.conditions["r01-c02"].labels == [("Ag-fcc", 0.8), ("Ag2O", 0.95)]
    i = c._round_ids[0].index("r01-c02")
    assert c.observations.feasible[i] == 0.0


def test_a_label_that_never_comes_marks_the_condition_unlabelled_not_dropped() -> None:
    c, lab = run_rounds(1)
    n_obs = len(c.observations)
    early = c.handle(Tick(lab.now + 1.0))
    assert notes(early, "phase_unlabelled") == []
    out = c.handle(Tick(lab.now + PHASE.label_timeout_s + 1.0))
    marked = notes(out, "phase_unlabelled")
    assert sorted(n.fields["condition"] for n in marked) == sorted(c._round_ids[0])
    assert all(c.conditions[cid].unlabelled for cid in c._round_ids[0])
    assert len(c.observations) == n_obs  # still data for the loss model
    assert notes(c.handle(Tick(lab.now + 2 * PHASE.label_timeout_s)), "phase_unlabelled") == []
    # a label after the timeout still attaches
    out = c.handle(PhaseLabelIn("r01-c01", "Ag-fcc", 0.9, lab.now + 100))
    assert notes(out, "phase_label")[0].fields["after_timeout"] is True
    assert not c.conditions["r01-c01"].unlabelled


def test_offline_tell_takes_labels_and_refuses_bad_ones() -> None:
    c = Campaign(toy_settings(rounds=3, phase=PHASE), seed=0)
    batch = c.ask()
    bad = [Result(loss=0.5, phase=("AgCl", 0.9)) for _ in batch]
    with pytest.raises(TellError, match="not one of"):
        c.tell(batch, bad)
    good = [Result(loss=0.1 * i, phase=("Ag-fcc", 0.9)) for i in range(len(batch))]
    c.tell(batch, good)
    assert c.observations.feasible.tolist() == [1.0] * len(batch)


def test_label_problem_accepts_any_name_when_no_phases_are_listed() -> None:
    assert label_problem("anything", 0.5, PhaseSettings()) is None
    assert label_problem("anything", 2.0, PhaseSettings())[0] == "bad_confidence"
