"""Stop rules on planted histories: each fires exactly when it should, with its numbers."""

from __future__ import annotations

import math

import pytest

from agent.core.campaign import Campaign, Result
from agent.core.stopping import (
    AllOf,
    AnyOf,
    Closeness,
    MaxConditions,
    MaxRounds,
    ModelAccuracy,
    ModelStability,
    NoImprovement,
    Progress,
    RegretBound,
    StopRule,
    TargetLoss,
    WallTime,
    closeness,
)
from agent.core.strategies.bo import LocalPenalizationEI
from agent.core.testing import toy_settings


def after(best_by_round: tuple[float, ...], **kw) -> Progress:
    """Progress after ``len(best_by_round)`` rounds of 15 with that best-loss history."""
    k = len(best_by_round)
    return Progress(k, 15 * k, best_by_round[-1] if k else None, best_by_round, **kw)


# --- one rule at a time: (rule, the progress the round before, the round it fires, numbers)

REGRET = {"ucb_min_measured": 0.215, "lcb_min_pool": 0.200, "regret_beta": 5.0}
CASES = [
    (
        MaxRounds(3),
        after((0.5, 0.4)),
        after((0.5, 0.4, 0.4)),
        {"rounds": 3, "max_rounds": 3},
    ),
    (
        MaxConditions(40),
        Progress(2, 39, 0.4),
        Progress(3, 40, 0.4),
        {"conditions": 40, "max_conditions": 40},
    ),
    (
        WallTime(3600.0),
        after((0.5,), elapsed_s=3599.9),
        after((0.5, 0.4), elapsed_s=3600.0),
        {"elapsed_s": 3600.0, "wall_time_s": 3600.0},
    ),
    (
        TargetLoss(0.1),
        after((0.5, 0.1001)),
        after((0.5, 0.1001, 0.1)),
        {"best_loss": 0.1, "target": 0.1},
    ),
    (
        # best 0.50 -> 0.30 -> 0.296 -> 0.293: over the last 2 rounds 0.30 - 0.293 = 0.007
        NoImprovement(window=2, min_delta=0.01),
        after((0.5, 0.30, 0.296)),  # over the last 2 rounds: 0.5 - 0.296 = 0.204
        after((0.5, 0.30, 0.296, 0.293)),
        {
            "improvement": 0.30 - 0.293,
            "min_delta": 0.01,
            "window": 2,
            "best_before": 0.30,
            "best_loss": 0.293,
        },
    ),
    (
        # the threshold is the replicate noise: the bound 0.015 < 0.02 fires, 0.025 does not
        RegretBound(),
        after((0.5, 0.3), metrics={**REGRET, "lcb_min_pool": 0.19}, replicate_sd=0.02),
        after((0.5, 0.3, 0.25), metrics=REGRET, replicate_sd=0.02),
        {
            "ucb_min_measured": 0.215,
            "lcb_min_pool": 0.2,
            "replicate_sd": 0.02,
            "regret_beta": 5.0,
            "regret_bound": 0.215 - 0.2,
            "threshold": 0.02,
        },
    ),
    (
        # a configured level wins over the noise; scale multiplies the noise otherwise
        RegretBound(level=0.016),
        after((0.5,), metrics={**REGRET, "ucb_min_measured": 0.217}, replicate_sd=0.001),
        after((0.5, 0.3), metrics=REGRET, replicate_sd=0.001),
        {
            "ucb_min_measured": 0.215,
            "lcb_min_pool": 0.2,
            "regret_beta": 5.0,
            "regret_bound": 0.215 - 0.2,
            "threshold": 0.016,
        },
    ),
    (
        # no replicate noise known (scalar ask/tell): the GP's learned noise, times scale
        RegretBound(scale=2.0),
        after((0.5,), metrics={**REGRET, "gp_noise_sd": 0.007}),  # 0.015 >= 0.014
        after((0.5, 0.3), metrics={**REGRET, "gp_noise_sd": 0.008}),
        {
            "ucb_min_measured": 0.215,
            "lcb_min_pool": 0.2,
            "gp_noise_sd": 0.008,
            "regret_beta": 5.0,
            "regret_bound": 0.215 - 0.2,
            "threshold": 0.016,
        },
    ),
    (
        ModelAccuracy(cosine=0.95, mse=0.01),
        after((0.5,), metrics={"model_cosine": 0.97, "model_mse": 0.011}),
        after((0.5, 0.4), metrics={"model_cosine": 0.95, "model_mse": 0.01}),
        {"model_cosine": 0.95, "min_cosine": 0.95, "model_mse": 0.01, "max_mse": 0.01},
    ),
    (
        ModelStability(0.98),
        after((0.5,), metrics={"model_stability": 0.979}),
        after((0.5, 0.4), metrics={"model_stability": 0.99}),
        {"model_stability": 0.99, "min_stability": 0.98},
    ),
]


@pytest.mark.parametrize(("rule", "before", "at", "numbers"), CASES, ids=lambda v: str(v)[:40])
def test_rule_fires_exactly_when_it_should_with_its_numbers(rule, before, at, numbers):
    assert isinstance(rule, StopRule)
    assert rule(before) is None
    reason = rule(at)
    assert reason is not None
    assert reason.reason
    assert reason.numbers.keys() == numbers.keys()
    for key, value in numbers.items():
        assert reason.numbers[key] == pytest.approx(value), key


@pytest.mark.parametrize(
    ("rule", "progress"),
    [
        # no clock (offline without now)
        (WallTime(1.0), after((0.5, 0.4), elapsed_s=None)),
        # not enough rounds for the window, however flat
        (NoImprovement(window=3), after((0.3, 0.3, 0.3))),
        # a Latin-hypercube round: no GP, no numbers
        (RegretBound(), after((0.5, 0.4), replicate_sd=0.5)),
        (RegretBound(level=1.0), after((0.5,), metrics={"ucb_min_measured": 0.2})),
        # numbers but no threshold: no level, no replicate noise, no GP noise
        (RegretBound(), after((0.5,), metrics=REGRET)),
        (RegretBound(), after((0.5,), metrics={**REGRET, "lcb_min_pool": math.nan})),
        # no spectrum model yet (issue 5)
        (ModelAccuracy(cosine=0.5), after((0.5,))),
        (ModelAccuracy(cosine=0.5, mse=1.0), after((0.5,), metrics={"model_cosine": 0.9})),
        (ModelStability(0.5), after((0.5,), metrics={"model_cosine": 1.0})),
        (TargetLoss(0.1), Progress(0, 0, None)),
    ],
)
def test_rule_never_fires_without_its_inputs(rule, progress):
    assert rule(progress) is None


def test_no_improvement_counts_any_improvement_above_min_delta():
    rule = NoImprovement(window=1)
    assert rule(after((0.5, 0.4999))) is None
    assert rule(after((0.5, 0.4999, 0.4999))).numbers["improvement"] == 0.0


@pytest.mark.parametrize(
    "make",
    [
        lambda: NoImprovement(window=0),
        lambda: NoImprovement(window=2, min_delta=-0.1),
        lambda: RegretBound(level=0.0),
        lambda: RegretBound(scale=-1.0),
        lambda: ModelAccuracy(),
    ],
)
def test_nonsense_settings_are_refused(make):
    with pytest.raises(ValueError):
        make()


# --- composition -----------------------------------------------------------------------


def test_any_of_reports_the_first_member_that_fires():
    rule = AnyOf((TargetLoss(0.1), NoImprovement(window=1), MaxRounds(3)))
    assert rule(after((0.5, 0.4))) is None
    assert rule(after((0.5, 0.4, 0.4))).rule == "no_improvement"  # before max_rounds
    assert rule(after((0.5, 0.4, 0.05))).rule == "target_loss"


def test_all_of_fires_only_when_every_member_does_and_carries_every_members_numbers():
    rule = AllOf(
        (ModelAccuracy(cosine=0.95), ModelStability(0.98), NoImprovement(2, min_delta=0.005))
    )
    good = {"model_cosine": 0.96, "model_stability": 0.99}
    flat = (0.5, 0.3, 0.298, 0.297)
    assert rule(after(flat, metrics={**good, "model_stability": 0.97})) is None
    assert rule(after((0.5, 0.3, 0.2, 0.197), metrics=good)) is None
    assert rule(after(flat)) is None
    reason = rule(after(flat, metrics=good))
    assert reason.rule == "all_of.model_accuracy.model_stability.no_improvement"
    assert reason.reason.count(" and ") == 2
    assert reason.numbers == pytest.approx(
        {
            "model_accuracy.model_cosine": 0.96,
            "model_accuracy.min_cosine": 0.95,
            "model_stability.model_stability": 0.99,
            "model_stability.min_stability": 0.98,
            "no_improvement.improvement": 0.003,
            "no_improvement.min_delta": 0.005,
            "no_improvement.window": 2,
            "no_improvement.best_before": 0.3,
            "no_improvement.best_loss": 0.297,
        }
    )
    assert AllOf(())(after(flat)) is None


def test_any_of_all_of_nest():
    rule = AnyOf((MaxRounds(10), AllOf((NoImprovement(1), TargetLoss(0.3)))))
    assert rule(after((0.5, 0.5))) is None  # stalled, but not good enough
    assert rule(after((0.5, 0.3, 0.3))).rule == "all_of.no_improvement.target_loss"


# --- closeness: how far each rule is from firing ---------------------------------------


@pytest.mark.parametrize(("rule", "before", "at", "numbers"), CASES, ids=lambda v: str(v)[:40])
def test_closeness_is_below_one_until_the_rule_fires_and_one_when_it_does(
    rule, before, at, numbers
):
    gauge = rule.closeness(before)
    assert isinstance(gauge, Closeness)
    assert 0.0 <= gauge.fraction < 1.0
    assert gauge.rule == rule(at).rule  # the same name as the reason it will give
    assert rule.closeness(at).fraction == 1.0
    assert all(math.isfinite(v) for v in gauge.numbers.values())


@pytest.mark.parametrize(
    ("rule", "progress", "fraction", "numbers"),
    [
        (MaxRounds(4), after((0.5,)), 0.25, {"rounds": 1, "max_rounds": 4}),
        (MaxConditions(60), Progress(1, 15, 0.5), 0.25, {"conditions": 15, "max_conditions": 60}),
        (WallTime(100.0), after((0.5,), elapsed_s=40.0), 0.4, {"elapsed_s": 40.0}),
        (WallTime(100.0), after((0.5,)), 0.0, {"wall_time_s": 100.0}),  # no clock
        # halfway from round 1's best (0.5) to the target (0.1)
        (TargetLoss(0.1), after((0.5, 0.3)), 0.5, {"best_loss": 0.3, "target": 0.1}),
        (TargetLoss(0.1), Progress(0, 0, None), 0.0, {"target": 0.1}),
        # 2 of the 3 rounds it needs; improved 0.2 over them where 0.01 would stall: 2/3 * 0.05
        (NoImprovement(2, 0.01), after((0.5, 0.3)), 2 / 3 * 0.05, {"improvement": 0.2}),
        # enough rounds, improvement 0.02 against min_delta 0.01
        (NoImprovement(2, 0.01), after((0.5, 0.32, 0.31, 0.30)), 0.5, {"improvement": 0.02}),
        (
            NoImprovement(1),
            after((0.5, 0.4, 0.3)),
            0.0,
            {"window": 1},
        ),  # min_delta 0: all or nothing
        # bound 0.04 against the replicate noise 0.02
        (
            RegretBound(),
            after((0.5,), metrics={**REGRET, "ucb_min_measured": 0.24}, replicate_sd=0.02),
            0.5,
            {"regret_bound": 0.04, "threshold": 0.02},
        ),
        (RegretBound(), after((0.5,)), 0.0, {}),  # a Latin-hypercube round: no numbers
        (
            ModelAccuracy(cosine=0.8, mse=0.01),
            after((0.5,), metrics={"model_cosine": 0.6, "model_mse": 0.04}),
            0.25,  # the mse is the further of the two
            {"model_cosine": 0.6, "model_mse": 0.04},
        ),
        (ModelStability(0.9), after((0.5,), metrics={"model_stability": 0.45}), 0.5, {}),
        (ModelStability(0.9), after((0.5,)), 0.0, {"min_stability": 0.9}),
    ],
)
def test_closeness_of_each_rule_on_planted_progress(rule, progress, fraction, numbers):
    gauge = rule.closeness(progress)
    assert gauge.fraction == pytest.approx(fraction)
    for key, value in numbers.items():
        assert gauge.numbers[key] == pytest.approx(value), key


def test_closeness_lists_any_of_members_and_gauges_all_of_at_its_least_advanced_member():
    rule = AnyOf(
        (
            TargetLoss(0.1),
            AllOf((ModelStability(0.9), NoImprovement(2, min_delta=0.01))),
            MaxRounds(5),
        )
    )
    progress = after((0.5, 0.32, 0.31, 0.30), metrics={"model_stability": 0.81})
    gauges = closeness(rule, progress)
    assert [g.rule for g in gauges] == [
        "target_loss",
        "all_of.model_stability.no_improvement",
        "max_rounds",
    ]
    group = gauges[1]
    assert group.fraction == pytest.approx(0.5)  # no_improvement at 0.5, stability at 0.9
    assert group.numbers["model_stability.model_stability"] == pytest.approx(0.81)
    assert group.numbers["no_improvement.improvement"] == pytest.approx(0.02)
    assert gauges[2].fraction == pytest.approx(0.8)
    assert closeness(MaxRounds(4), progress)[0].fraction == 1.0  # 4 of 4 rounds: fires
    fired = after((0.5, 0.305, 0.3, 0.3), metrics={"model_stability": 0.95})
    assert closeness(rule, fired)[1].fraction == 1.0


def test_closeness_leaves_out_a_rule_that_cannot_say():
    def my_rule(progress: Progress):
        return None

    assert closeness(AnyOf((my_rule, MaxRounds(2))), after((0.5,)))[0].rule == "max_rounds"


# --- in an ask/tell campaign -----------------------------------------------------------


def run(campaign: Campaign, loss, max_rounds: int = 12) -> list:
    """ask/tell until the campaign stops; returns the Progress after every round."""
    seen = []
    while not campaign.stopped and len(seen) < max_rounds:
        batch = campaign.ask()
        k = campaign.round
        campaign.tell(batch, [loss(k, i, r) for i, r in enumerate(batch)])
        seen.append(campaign.progress())
    return seen


def test_ask_tell_campaign_stops_when_the_best_loss_stalls():
    rule = AnyOf((NoImprovement(window=2, min_delta=0.01), MaxRounds(10)))
    campaign = Campaign(toy_settings(stop_rule=rule), seed=0)
    best = {1: 0.5, 2: 0.3, 3: 0.295, 4: 0.292, 5: 0.1}  # stalls after round 2

    seen = run(campaign, lambda k, i, r: Result(loss=best[k] + 0.1 * i))

    assert campaign.stopped and campaign.rounds_complete == 4
    assert [p.best_loss for p in seen] == pytest.approx([0.5, 0.3, 0.295, 0.292])
    reason = campaign.stop_reason
    assert reason.rule == "no_improvement"
    assert reason.numbers["best_before"] == pytest.approx(0.3)
    assert reason.numbers["improvement"] == pytest.approx(0.008)
    assert rule(seen[2]) is None  # round 3: 0.5 -> 0.295 over the window


def test_ask_tell_campaign_stops_when_the_regret_bound_falls_below_the_replicate_noise():
    strategy = LocalPenalizationEI(pool_size=256, local_samples=64, acq_samples=64)
    rule = AnyOf((RegretBound(), MaxRounds(8)))
    campaign = Campaign(toy_settings(strategy=strategy, stop_rule=rule, batch_size=6), seed=0)

    def bowl(k, i, r):
        return Result(loss=(r["a"] - 0.7) ** 2 + 0.5 * (r["b"] - 0.3) ** 2, loss_sd=0.01)

    seen = run(campaign, bowl)

    assert campaign.stopped and campaign.stop_reason.rule == "regret_bound"
    assert 2 < campaign.rounds_complete < 8
    assert seen[0].metrics == {}  # round 1 is a Latin hypercube: no GP, no bound
    for p in seen[1:]:
        assert p.metrics["regret_bound"] == pytest.approx(
            p.metrics["ucb_min_measured"] - p.metrics["lcb_min_pool"]
        )
        assert p.metrics["regret_bound"] > 0 and p.replicate_sd == pytest.approx(0.01)
    assert all(p.metrics["regret_bound"] >= 0.01 for p in seen[1:-1])  # the rounds before
    numbers = campaign.stop_reason.numbers
    assert numbers["regret_bound"] == pytest.approx(seen[-1].metrics["regret_bound"])
    assert numbers["regret_bound"] < numbers["threshold"] == pytest.approx(0.01)
    assert numbers["replicate_sd"] == pytest.approx(0.01)


def test_ask_tell_wall_time_uses_the_clock_it_is_given():
    rule = AnyOf((WallTime(100.0), MaxRounds(10)))
    campaign = Campaign(toy_settings(stop_rule=rule), seed=0)
    batch = campaign.ask(now=1000.0)
    campaign.tell(batch, [Result(loss=0.5)] * len(batch), now=1099.0)
    assert campaign.progress(1099.0).elapsed_s == pytest.approx(99.0)
    assert not campaign.stopped
    batch = campaign.ask(now=1099.5)  # the clock started at the first ask
    campaign.tell(batch, [Result(loss=0.5)] * len(batch), now=1100.0)
    assert campaign.stopped and campaign.stop_reason.rule == "wall_time"
    assert campaign.stop_reason.numbers == {"elapsed_s": 100.0, "wall_time_s": 100.0}


def test_ask_tell_without_a_clock_never_spends_the_time_budget():
    campaign = Campaign(toy_settings(stop_rule=AnyOf((WallTime(1e-9), MaxRounds(2)))), seed=0)
    run(campaign, lambda k, i, r: Result(loss=0.5 - 0.1 * k - 0.01 * i))
    assert campaign.progress().elapsed_s is None
    assert campaign.stop_reason.rule == "max_rounds"
