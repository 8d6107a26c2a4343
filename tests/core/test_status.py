"""What a monitor is told: campaign_status and condition_progress built from a live campaign."""

from __future__ import annotations

import math

import pytest

from agent.core.campaign import Campaign
from agent.core.events import Decision, Event, SpectrumIn
from agent.core.status import campaign_status, condition_progress
from agent.core.stopping import AllOf, AnyOf, MaxRounds, NoImprovement, TargetLoss
from agent.core.testing import ToyLab, toy_settings
from protocols import messages as m

ENVELOPE = {"msg_id": "x", "source": "agent", "seq": 0, "ts": 0.0, "campaign": "toy"}


class WatchedLab(ToyLab):
    """A :class:`ToyLab` that takes a status snapshot after every step, as the shell
    would publish it, and a progress record after every replicate."""

    def __init__(self, campaign: Campaign) -> None:
        super().__init__(campaign, noise=0.002)
        self.snapshots: list[m.CampaignStatus] = []
        self.progress: list[m.ConditionProgress] = []

    def record(self, event: Event | None, decisions: list[Decision], **kw: object) -> None:
        fields = campaign_status(self.c, self.now)
        self.snapshots.append(m.CampaignStatus(**fields, **ENVELOPE))  # within the wire bounds
        if isinstance(event, SpectrumIn):
            prog = condition_progress(self.c, event.condition, self.now)
            assert prog is not None
            self.progress.append(m.ConditionProgress(**prog, **ENVELOPE))


def run_lab(rule=None) -> tuple[Campaign, WatchedLab]:
    rule = rule or AnyOf(
        (TargetLoss(1e-6), AllOf((NoImprovement(1), TargetLoss(1e-5))), MaxRounds(2))
    )
    campaign = Campaign(toy_settings(stop_rule=rule), seed=0)
    lab = WatchedLab(campaign)
    lab.run()
    return campaign, lab


def test_status_follows_rounds_conditions_and_the_best_loss():
    campaign, lab = run_lab()
    snaps = lab.snapshots
    assert campaign.stopped and campaign.rounds_complete == 2
    assert [s.round for s in snaps] == sorted(s.round for s in snaps)  # never goes back
    assert {s.round for s in snaps} == {0, 1, 2}
    # within a round, conditions_done only grows, up to the batch of 4
    for r in (1, 2):
        done = [s.conditions_done for s in snaps if s.round == r]
        assert done == sorted(done) and done[-1] == 4
        assert {s.conditions_total for s in snaps if s.round == r} == {4}
    measuring = [s for s in snaps if s.active and s.active[0].state == "measuring"]
    assert measuring and all(len(s.active) == 1 for s in measuring)
    assert max(s.active[0].n_accepted for s in measuring) >= 2  # the 3rd completes it
    last = snaps[-1]
    assert last.state == "stopped" and last.active == []
    losses = {c: r.median_loss for c, r in campaign.conditions.items()}
    assert last.best_condition == min(losses, key=losses.get)
    assert last.best_loss == pytest.approx(min(losses.values()))
    assert last.box == {"a": (0.0, 1.0), "b": (0.0, 1.0)}
    assert 0 < last.elapsed_s <= lab.now  # campaign time, from start
    # the best loss seen by a monitor is live: it moves before the round is told
    first_best = next(s for s in snaps if s.best_loss is not None)
    assert first_best.round == 1 and first_best.rounds_complete == 0


def test_status_says_how_close_each_stop_rule_is():
    campaign, lab = run_lab()
    names = ["target_loss", "all_of.no_improvement.target_loss", "max_rounds"]
    for s in lab.snapshots:
        assert [g.rule for g in s.stop] == names
        assert all(0.0 <= g.fraction <= 1.0 for g in s.stop)
    after_one = next(s for s in lab.snapshots if s.rounds_complete == 1)
    gauge = {g.rule: g for g in after_one.stop}["max_rounds"]
    assert gauge.fraction == pytest.approx(0.5)
    assert gauge.numbers == {"rounds": 1.0, "max_rounds": 2.0}
    final = {g.rule: g for g in lab.snapshots[-1].stop}
    assert final["max_rounds"].fraction == 1.0  # the rule that stopped it
    assert campaign.stop_reason.rule == "max_rounds"
    assert final["target_loss"].fraction < 1.0
    assert "no_improvement.window" in final["all_of.no_improvement.target_loss"].numbers


def test_condition_progress_counts_replicates_against_the_rule():
    campaign, lab = run_lab()
    by_condition: dict[str, list[m.ConditionProgress]] = {}
    for p in lab.progress:
        by_condition.setdefault(p.condition, []).append(p)
    assert set(by_condition) == set(campaign.conditions)
    for cid, seen in by_condition.items():
        counts = [p.n_accepted + p.n_rejected for p in seen]
        assert counts == sorted(counts)  # every replicate filed moves it on
        assert {(p.n_min, p.n_max) for p in seen} == {(3, 6)}
        assert seen[-1].complete and not any(p.complete for p in seen[:-1])
        assert seen[-1].n_accepted == campaign.conditions[cid].n_used
        assert seen[-1].median_loss is not None and math.isfinite(seen[-1].median_loss)
        assert all(p.elapsed_s >= 0 for p in seen)


def test_condition_progress_is_none_before_measuring():
    campaign = Campaign(toy_settings(), seed=0)
    assert condition_progress(campaign, "r01-c01", 0.0) is None
    status = m.CampaignStatus(**campaign_status(campaign, None), **ENVELOPE)
    assert (status.state, status.round, status.best_loss, status.elapsed_s) == (
        "waiting",
        0,
        None,
        None,
    )
    assert [g.rule for g in status.stop] == ["max_rounds"]
