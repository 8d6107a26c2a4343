"""Tests for agent.core.strategies.two_step: the BO -> BO + DNN schedule.

Runtime: ~5 s (small ensembles; a Latin hypercube stands in for BO but in one test).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.core.campaign import Campaign, Result
from agent.core.objective import AgnpLoss
from agent.core.stopping import ModelAccuracy, ModelStability
from agent.core.strategies.base import Observations
from agent.core.strategies.bo import LocalPenalizationEI
from agent.core.strategies.lhs import LatinHypercube
from agent.core.strategies.spectrum_model import SpectrumEnsemble
from agent.core.strategies.two_step import TwoStep
from agent.core.testing import TOY_GRID, agnp_space, toy_settings, toy_spectrum

WL = np.linspace(380.0, 800.0, 106)
LOSS = AgnpLoss(0.9 * np.exp(-0.5 * ((WL - 640.0) / 40.0) ** 2), WL)


def world(x: np.ndarray) -> np.ndarray:
    """A band whose centre follows the AgNO3 share and height the seed share."""
    centre = 500.0 + 10.0 * (x[:, :1] - 4.0)
    height = 0.5 + 0.03 * x[:, 3:4]
    return height * np.exp(-0.5 * ((WL - centre) / 40.0) ** 2)


def rounds_of_data(sizes: tuple[int, ...], seed: int = 0) -> Observations:
    space = agnp_space()
    rng = np.random.default_rng(seed)
    x = space.from_unit(rng.random((20 * sum(sizes), 5)))
    x = x[space.is_feasible(x)][: sum(sizes)]
    spectra = world(x)
    rounds = np.repeat(np.arange(1, len(sizes) + 1), sizes)
    return Observations(x, LOSS(spectra), np.full(len(x), np.nan), spectra, rounds)


def two_step(**kw: object) -> TwoStep:
    # a Latin hypercube stands in for BO (any strategy will do; a GP fit costs
    # seconds on this machine); the metrics test uses LP-EI
    settings: dict[str, object] = {
        "bo": LatinHypercube(),
        "dnn_points": 7,
        "model": SpectrumEnsemble(members=2, max_epochs=200),
    }
    settings.update(kw)
    return TwoStep(LOSS, **settings)  # type: ignore[arg-type]


def propose(strategy: TwoStep, data: Observations, n: int = 15):
    return strategy.propose(agnp_space(), data, n, np.random.default_rng(7))


def test_bo_only_while_there_is_no_unseen_round_to_check_on() -> None:
    batch = propose(two_step(trust_cosine=0.01), rounds_of_data((20,)))
    assert batch.strategy == ("lhs",) * 15
    assert batch.notes["schedule"] == "bo"
    assert "no unseen round" in str(batch.notes["check"])
    assert not any(k.startswith("model_") for k in batch.notes["metrics"])  # type: ignore[union-attr]


def test_the_schedule_switches_exactly_when_the_check_passes() -> None:
    data = rounds_of_data((20, 15))
    first = propose(two_step(trust_cosine=1.0), data)
    cos = first.notes["metrics"]["model_cosine"]  # type: ignore[index]
    assert 0.5 < cos < 1.0
    assert first.strategy == ("lhs",) * 15  # cosine < 1.0: not trusted
    # the same data and seed give the same model: a threshold at the measured
    # cosine passes the check, one a hair above it does not
    passed = propose(two_step(trust_cosine=cos), data)
    failed = propose(two_step(trust_cosine=math.nextafter(cos, 2.0)), data)
    assert passed.notes["metrics"]["model_cosine"] == cos  # type: ignore[index]
    assert passed.strategy == ("lhs",) * 8 + ("dnn",) * 7
    assert passed.notes["schedule"] == "bo+dnn"
    assert passed.notes["split"] == {"lhs": 8, "dnn": 7}
    assert failed.strategy == ("lhs",) * 15
    assert failed.notes["schedule"] == "bo"
    # the BO share is the same points either way
    assert np.array_equal(passed.x[:8], failed.x[:8])
    # an mse limit is part of the check too
    mse = passed.notes["metrics"]["model_mse"]  # type: ignore[index]
    assert propose(two_step(trust_cosine=cos, trust_mse=mse * 0.99), data).notes["schedule"] == "bo"


def test_metrics_are_the_stop_rules_keys_and_they_fire() -> None:
    lp_ei = LocalPenalizationEI(
        pool_size=256, local_samples=0, acq_samples=0, face_snap=0, fit_maxiter=20
    )
    batch = propose(two_step(trust_cosine=0.5, dnn_points=3, bo=lp_ei), rounds_of_data((20, 15)))
    assert batch.strategy == ("lp-ei",) * 12 + ("dnn",) * 3
    metrics = batch.notes["metrics"]
    assert isinstance(metrics, dict)
    assert {"model_mse", "model_cosine", "model_stability"} <= set(metrics)
    assert "regret_bound" in metrics  # BO's numbers are kept
    assert 0.0 < metrics["model_stability"] <= 1.0 + 1e-9
    from agent.core.stopping import Progress

    progress = Progress(3, 35, 0.1, metrics=metrics)
    assert ModelAccuracy(cosine=metrics["model_cosine"])(progress) is not None
    assert ModelStability(metrics["model_stability"] + 1e-6)(progress) is None
    space = agnp_space()
    assert space.is_feasible(batch.x).all()


def test_a_diverged_fit_falls_back_to_bo_and_says_why() -> None:
    diverging = SpectrumEnsemble(members=2, lr=1e30, max_epochs=50)
    batch = propose(two_step(trust_cosine=0.01, model=diverging), rounds_of_data((20, 15)))
    assert batch.strategy == ("lhs",) * 15
    assert "diverged" in str(batch.notes["fallback"])
    assert not any(k.startswith("model_") for k in batch.notes["metrics"])  # type: ignore[union-attr]


def test_spectra_on_another_grid_fall_back_to_bo_with_the_reason() -> None:
    data = rounds_of_data((20, 15))
    off_grid = Observations(data.x, data.loss, data.loss_sd, data.spectra[:, :50], data.round)
    batch = propose(two_step(trust_cosine=0.01), off_grid)
    assert batch.strategy == ("lhs",) * 15
    assert "refused rather than mixed" in str(batch.notes["fallback"])


def test_in_a_campaign_the_metrics_reach_progress_and_the_best_strategy_is_known() -> None:
    strategy = TwoStep(
        AgnpLoss(np.array([0.0, 0.4, 1.0, 0.4, 0.0]), TOY_GRID.wavelengths),
        bo=LatinHypercube(),
        dnn_points=3,
        trust_cosine=0.5,
        model=SpectrumEnsemble(members=2, max_epochs=200),
        min_train=8,
    )
    campaign = Campaign(toy_settings(rounds=3, batch_size=8, strategy=strategy), seed=0)
    while not campaign.stopped:
        batch = campaign.ask()
        results = [
            Result(loss=float(LOSS_TOY(toy_spectrum(r))), spectrum=toy_spectrum(r)) for r in batch
        ]
        campaign.tell(batch, results)
    assert {"model_mse", "model_cosine", "model_stability"} <= set(campaign.progress().metrics)
    assert campaign.best_strategy in ("lhs", "dnn")
    assert campaign.observations.spectra is not None


LOSS_TOY = AgnpLoss(np.array([0.0, 0.4, 1.0, 0.4, 0.0]), TOY_GRID.wavelengths)


@pytest.mark.parametrize("bad", [{"dnn_points": -1}, {"trust_cosine": 0.0}, {"trust_mse": -1.0}])
def test_bad_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TwoStep(LOSS, **bad)  # type: ignore[arg-type]


def test_the_stop_note_names_the_strategy_that_found_the_best() -> None:
    from agent.core.events import Note
    from agent.core.testing import ToyLab

    lab = ToyLab(Campaign(toy_settings(rounds=2), seed=0))
    lab.run()
    note = next(d for d in lab.log if isinstance(d, Note) and d.event == "campaign_stopped")
    best = min(
        (c for c in lab.c.conditions.values() if c.median_loss is not None),
        key=lambda c: c.median_loss,  # type: ignore[arg-type,return-value]
    )
    assert note.fields["best_condition"] == best.condition
    assert note.fields["best_strategy"] == best.strategy == lab.c.best_strategy == "lhs"


def test_nothing_is_carried_between_rounds_so_a_resume_proposes_the_same() -> None:
    # the schedule is a function of the data and the generator alone: the same
    # object asked twice, or a fresh one (a resumed campaign), proposes the same batch
    data = rounds_of_data((20, 15))
    strategy = two_step(trust_cosine=0.5)
    first, again = propose(strategy, data), propose(strategy, data)
    fresh = propose(two_step(trust_cosine=0.5), data)
    assert first.strategy == again.strategy == fresh.strategy
    assert "dnn" in first.strategy
    assert np.array_equal(first.x, again.x) and np.array_equal(first.x, fresh.x)
