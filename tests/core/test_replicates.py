"""Tests for agent.core.replicates: planted replicate sequences, driven synchronously.

Most tests use a 3-point grid and a loss that is the spectrum's first value, so a
sequence of losses can be planted directly.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.objective import AgnpLoss
from agent.core.replicates import (
    REJECT_CODES,
    Accepted,
    ConditionReplicates,
    Grid,
    Rejected,
    ReplicateSettings,
)

GRID = Grid(380.0, 1.0, 3)
SETTINGS = ReplicateSettings()  # min 5, max 48, per_acquire 5, MAD 3.5 / 0.005, settle 0.01 x 3


def first_value(spectrum: np.ndarray) -> float:
    return float(spectrum[0])


def spectrum(loss: float) -> np.ndarray:
    return np.array([loss, 0.5, 1.0])


def make(settings: ReplicateSettings = SETTINGS, started_at: float = 0.0) -> ConditionReplicates:
    return ConditionReplicates("r01-c01", settings, first_value, GRID, started_at=started_at)


def feed(reps: ConditionReplicates, losses: list[float], first: int = 0, now: float = 1.0) -> list:
    return [reps.add(first + k, spectrum(v), 380.0, 1.0, now=now) for k, v in enumerate(losses)]


def codes(verdicts: list) -> list[str]:
    return ["ok" if isinstance(v, Accepted) else v.code for v in verdicts]


# --- planted sequences ---------------------------------------------------------------

CLEAN = [0.300, 0.302, 0.298, 0.301, 0.299]
# medians after each: .300 .301 .300 .3005 .300 -> every step < 0.01 -> settled at 5
DRIFT = [0.10 + 0.03 * k for k in range(48)]
# the median moves by 0.015 at every addition: never settles; no outlier
# (max deviation ~ 24 steps, MAD ~ 12 steps, 24 < 3.5 * 1.4826 * 12)
BUBBLE = [0.30, 0.31, 0.29, 0.95, 0.30, 0.305]
# replicate 3 is a bubble droplet; medians of the used ones after each accepted one:
# .30 .305 .30 (bubble: no entry) .30 .30 -> 5 used and the last 3 steps < 0.01 at the 6th


@pytest.mark.parametrize(
    ("losses", "n_complete_at", "reason", "n_used", "median", "outliers"),
    [
        (CLEAN, 5, "settled", 5, 0.300, []),
        (DRIFT, 48, "max_count", 48, float(np.median(DRIFT)), []),
        (BUBBLE, 6, "settled", 5, 0.30, [3]),
    ],
    ids=["clean", "drift", "bubble"],
)
def test_planted_sequences(
    losses: list[float],
    n_complete_at: int,
    reason: str,
    n_used: int,
    median: float,
    outliers: list[int],
) -> None:
    reps = make()
    for k, loss in enumerate(losses):
        assert not reps.complete, f"complete too early, before droplet {k}"
        reps.add(k, spectrum(loss), 380.0, 1.0, now=float(k))
        assert reps.complete == (k + 1 >= n_complete_at)
    s = reps.status()
    assert (s.complete, s.reason, s.settled) == (True, reason, reason == "settled")
    assert (s.n_received, s.n_used, s.n_outliers) == (n_complete_at, n_used, len(outliers))
    assert s.median_loss == pytest.approx(median)
    assert [o[0] for o in s.outliers] == outliers
    assert s.median_spectrum is not None
    assert s.median_spectrum[0] == pytest.approx(median)  # elementwise median of used spectra
    assert s.loss_of_median_spectrum == pytest.approx(median)
    assert reps.need_more() == 0


def test_bubble_droplet_rejected_with_reason() -> None:
    reps = make()
    verdicts = feed(reps, BUBBLE)
    assert codes(verdicts) == ["ok", "ok", "ok", "outlier", "ok", "ok"]
    bubble = verdicts[3]
    assert isinstance(bubble, Rejected)
    # med of [.30 .31 .29 .95] = .305; |dev| = [.005 .005 .015 .645] -> MAD = .01;
    # limit = 3.5 * 1.4826 * .01 = .05189 < .645
    assert "replicate 3 is an outlier" in bubble.reason
    assert "0.95 - 0.305| = 0.645 > 3.5 * 1.4826 * MAD = 0.05189 (MAD 0.01" in bubble.reason
    s = reps.status()
    (rep, loss, why) = s.outliers[0]
    assert (rep, loss) == (3, 0.95) and "outlier" in why
    assert s.used == (0, 1, 2, 4, 5)
    assert s.n_invalid == 0  # an outlier is recorded, not invalid


def test_outliers_judged_only_from_three_and_rejudged() -> None:
    reps = make()
    # the bubble comes first: with fewer than 3 replicates nothing is judged
    assert codes(feed(reps, [0.95, 0.30])) == ["ok", "ok"]
    assert reps.status().n_outliers == 0
    # the third makes the bubble an outlier after the fact
    assert codes(feed(reps, [0.31], first=2)) == ["ok"]
    s = reps.status()
    assert s.outliers[0][0] == 0 and s.used == (1, 2)


def test_outlier_taken_back_when_the_set_moves() -> None:
    reps = make()
    # [.30 .30 .40]: med .30, MAD floor .005 -> .40 is an outlier
    assert codes(feed(reps, [0.30, 0.30, 0.40])) == ["ok", "ok", "outlier"]
    # three more at .40: med of [.3 .3 .4 .4 .4 .4] = .40 -> now the .30s are out
    feed(reps, [0.40, 0.40, 0.40], first=3)
    s = reps.status()
    assert s.used == (2, 3, 4, 5)
    assert [o[0] for o in s.outliers] == [0, 1]
    assert s.median_loss == pytest.approx(0.40)


def test_mad_floor_keeps_a_tight_set() -> None:
    # spread 0.001: without a floor 0.3015 would be 3 MADs out; with it, nothing is
    reps = make(replace(SETTINGS, mad_floor=0.005))
    feed(reps, [0.300, 0.3001, 0.2999, 0.3015])
    assert reps.status().n_outliers == 0
    reps = make(replace(SETTINGS, mad_floor=0.0))
    feed(reps, [0.300, 0.3001, 0.2999, 0.3015])
    assert reps.status().n_outliers == 1


def test_settling_needs_min_count_and_window() -> None:
    # identical losses: the median never moves, but min_count = 5 still holds
    reps = make()
    feed(reps, [0.3] * 4)
    assert not reps.complete and reps.status().reason == "pending"
    feed(reps, [0.3], first=4)
    assert reps.complete
    # window 0: settled as soon as min_count are used
    reps = make(replace(SETTINGS, min_count=2, settle_window=0))
    feed(reps, [0.1, 0.9])
    assert reps.status().reason == "settled"
    # a step of exactly the tolerance does not count as settled (strict <)
    reps = make(replace(SETTINGS, min_count=1, settle_window=1, settle_tolerance=0.25))
    feed(reps, [0.5, 1.0])  # medians .5 -> .75: moved .25
    assert not reps.complete


def test_median_loss_and_loss_of_median_spectrum_agree_with_agnp_loss() -> None:
    grid = Grid.from_range(380.0, 800.0, 1.0)
    wl = grid.wavelengths
    target = np.exp(-0.5 * ((wl - 640.0) / 40.0) ** 2)
    rng = np.random.default_rng(3)
    reps = ConditionReplicates("c", SETTINGS, AgnpLoss(target, wl), grid, started_at=0.0)
    k = 0
    while not reps.complete:
        droplet = 0.9 * np.exp(-0.5 * ((wl - 600.0) / 50.0) ** 2) + rng.normal(0, 0.005, wl.size)
        assert isinstance(reps.add(k, droplet, 380.0, 1.0, now=k), Accepted)
        k += 1
    s = reps.status()
    assert s.reason == "settled" and s.n_used == 5
    assert s.median_spectrum is not None and s.median_spectrum.shape == (421,)
    assert not s.median_spectrum.flags.writeable
    assert abs(s.median_loss - s.loss_of_median_spectrum) < 0.01
    assert 0 < s.loss_sd < 0.05


# --- invalid droplets ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("replicate", "values", "wl_start", "wl_step", "code", "in_reason"),
    [
        (0, spectrum(0.3), 380.0, 1.0, "duplicate", "replicate 0 was already received"),
        (-1, spectrum(0.3), 380.0, 1.0, "bad_index", "-1 is not an integer >= 0"),
        (1.5, spectrum(0.3), 380.0, 1.0, "bad_index", "1.5"),
        (True, spectrum(0.3), 380.0, 1.0, "bad_index", "True"),
        ("3", spectrum(0.3), 380.0, 1.0, "bad_index", "'3'"),
        (1, np.ones((2, 3)), 380.0, 1.0, "bad_values", "shape (2, 3)"),
        (1, ["a", "b", "c"], 380.0, 1.0, "bad_values", "not numbers"),
        (
            1,
            spectrum(0.3),
            381.0,
            1.0,
            "wrong_grid",
            "grid 381-383 nm step 1 (3 points), the campaign's is 380-382 nm step 1 (3 points)",
        ),
        (1, spectrum(0.3), 380.0, 2.0, "wrong_grid", "380-384 nm step 2 (3 points)"),
        (1, np.zeros(4), 380.0, 1.0, "wrong_grid", "380-383 nm step 1 (4 points)"),
        (1, spectrum(0.3), math.nan, 1.0, "wrong_grid", "nan"),
        (1, spectrum(0.3), "x", 1.0, "wrong_grid", "the campaign's is 380-382"),
        (1, np.array([0.3, math.nan, 1.0]), 380.0, 1.0, "non_finite", "1 of 3 values"),
        (1, np.array([math.inf, -math.inf, 1.0]), 380.0, 1.0, "non_finite", "2 of 3 values"),
    ],
)
def test_invalid_droplets_rejected(
    replicate: object,
    values: object,
    wl_start: object,
    wl_step: float,
    code: str,
    in_reason: str,
) -> None:
    reps = make()
    feed(reps, [0.3])
    before = reps.status()
    verdict = reps.add(replicate, values, wl_start, wl_step, now=5.0)  # type: ignore[arg-type]
    assert isinstance(verdict, Rejected)
    assert verdict.code == code and code in REJECT_CODES
    assert in_reason in verdict.reason
    assert "r01-c01" in verdict.reason
    after = reps.status()
    assert (after.n_received, after.used) == (before.n_received, before.used)  # nothing lost
    assert after.n_invalid == 1
    assert not reps.timed_out(100.0)  # 120 s from the last valid droplet at t = 1
    assert reps.timed_out(121.5)  # the invalid one at t = 5 did not reset the timer


def test_grid_tolerance() -> None:
    reps = make()
    assert isinstance(reps.add(0, spectrum(0.3), 380.0 + 5e-7, 1.0 - 5e-7, now=1.0), Accepted)
    assert reps.add(1, spectrum(0.3), 380.0 + 2e-6, 1.0, now=1.0).code == "wrong_grid"  # type: ignore[union-attr]


def test_non_finite_or_failing_loss() -> None:
    def loss(s: np.ndarray) -> float:
        if s[0] < 0:
            raise ValueError("negative")
        return math.inf if s[0] > 1 else float(s[0])

    reps = ConditionReplicates("c", SETTINGS, loss, GRID, started_at=0.0)
    v = reps.add(0, spectrum(2.0), 380.0, 1.0, now=0.0)
    assert isinstance(v, Rejected) and v.code == "non_finite" and "loss inf" in v.reason
    v = reps.add(1, spectrum(-1.0), 380.0, 1.0, now=0.0)
    assert isinstance(v, Rejected) and v.code == "loss_error" and "negative" in v.reason
    assert isinstance(reps.add(0, spectrum(0.3), 380.0, 1.0, now=0.0), Accepted)  # index free


def test_late_droplet_after_complete_is_not_active() -> None:
    reps = make()
    feed(reps, CLEAN)
    v = reps.add(5, spectrum(0.3), 380.0, 1.0, now=9.0)
    assert isinstance(v, Rejected) and v.code == "not_active"
    assert "already complete (settled)" in v.reason
    assert reps.status().n_received == 5


def test_a_complete_condition_keeps_only_its_used_spectra() -> None:
    """The buffer of ``max_count`` rows is given back at completion: what stays (for
    the agent's whole campaign) is the used spectra, once, shared by every status;
    found by bench/soak.py (the agent's RSS grew ~150 kB per condition)."""
    reps = make(replace(SETTINGS, max_count=48))
    feed(reps, BUBBLE)
    status = reps.status()
    assert status.complete and status.n_used == 5
    assert status.used_spectra[:, 0].tolist() == [0.30, 0.31, 0.29, 0.30, 0.305]  # not the bubble
    assert reps._spectra.nbytes == 5 * GRID.n * 8  # not 48 rows
    reps.add(9, spectrum(0.3), 380.0, 1.0, now=9.0)  # a late droplet: refused, a new status
    assert reps.status().used_spectra is status.used_spectra  # shared, not copied
    assert not status.used_spectra.flags.writeable


def test_accepted_carries_the_running_median() -> None:
    reps = make()
    v = feed(reps, CLEAN)
    assert [a.median_loss for a in v] == pytest.approx([0.300, 0.301, 0.300, 0.3005, 0.300])
    assert [a.n_used for a in v] == [1, 2, 3, 4, 5]
    assert [a.complete for a in v] == [False] * 4 + [True]
    assert reps.status().median_history == pytest.approx((0.300, 0.301, 0.300, 0.3005, 0.300))


# --- asking for more, timeouts ----------------------------------------------------------


def test_need_more() -> None:
    reps = make(replace(SETTINGS, max_count=7, per_acquire=5))
    assert reps.need_more() == 5
    assert reps.need_more(outstanding=5) == 2  # never beyond max_count
    feed(reps, [0.1, 0.5, 0.9])  # spread out: nothing settles
    assert reps.need_more() == 4  # 7 - 3
    reps.add(9, spectrum(math.nan), 380.0, 1.0, now=1.0)  # invalid: asked for again
    assert reps.need_more() == 4
    assert reps.need_more(outstanding=3) == 1
    assert reps.need_more(outstanding=10) == 0
    feed(reps, [0.2, 0.8, 0.3, 0.7], first=3)
    s = reps.status()
    assert (s.complete, s.reason, s.n_received) == (True, "max_count", 7)
    assert reps.need_more() == 0


def test_timed_out_is_a_stall_timer() -> None:
    reps = make(replace(SETTINGS, timeout_s=120.0), started_at=100.0)
    assert reps.deadline == 220.0
    assert not reps.timed_out(220.0)  # strictly more than timeout_s
    assert reps.timed_out(220.001)
    feed(reps, [0.3], now=200.0)  # a valid droplet resets the timer
    assert reps.deadline == 320.0
    assert not reps.timed_out(300.0) and reps.timed_out(321.0)
    feed(reps, [0.95, 0.3], first=1, now=250.0)  # outliers count as progress too
    assert reps.deadline == 370.0
    feed(reps, CLEAN[:3], first=3, now=260.0)
    assert reps.complete
    assert not reps.timed_out(10_000.0)  # nothing to wait for


# --- settings and grid ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_count": 0}, "min_count=0 < 1"),
        ({"min_count": 10, "max_count": 9}, "max_count=9 < min_count=10"),
        ({"per_acquire": 0}, "per_acquire=0 < 1"),
        ({"mad_threshold": 0.0}, "mad_threshold=0.0 must be > 0"),
        ({"mad_floor": -1.0}, "mad_floor"),
        ({"settle_tolerance": math.nan}, "settle_tolerance"),
        ({"settle_window": -1}, "settle_window=-1 < 0"),
        ({"timeout_s": math.inf}, "timeout_s=inf"),
        ({"retries": -1}, "retries=-1 < 0"),
    ],
)
def test_settings_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ReplicateSettings(**kwargs)


def test_grid() -> None:
    g = Grid.from_range(380.0, 800.0, 1.0)
    assert (g.n, g.stop, str(g)) == (421, 800.0, "380-800 nm step 1 (421 points)")
    assert g.wavelengths[[0, 260, -1]].tolist() == [380.0, 640.0, 800.0]
    assert g.matches(380.0, 1.0, 421) and not g.matches(380.0, 1.0, 420)
    with pytest.raises(ValueError, match="not on the grid"):
        Grid.from_range(380.0, 800.5, 1.0)
    with pytest.raises(ValueError, match="step must be > 0"):
        Grid.from_range(380.0, 800.0, 0.0)
    with pytest.raises(ValueError, match="step > 0"):
        Grid(380.0, -1.0, 3)
    with pytest.raises(ValueError, match="at least one point"):
        Grid(380.0, 1.0, 0)


# --- properties ---------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=60),
    st.integers(1, 8),
    st.integers(0, 4),
)
def test_invariants(losses: list[float], min_count: int, window: int) -> None:
    s_ = ReplicateSettings(min_count=min_count, max_count=min_count + 10, settle_window=window)
    reps = make(s_)
    for k, loss in enumerate(losses):
        room = reps.need_more()
        was_complete = reps.complete
        v = reps.add(k, spectrum(loss), 380.0, 1.0, now=float(k))
        s = reps.status()
        if was_complete:
            assert isinstance(v, Rejected) and v.code == "not_active"
            continue
        assert room >= 1
        assert s.n_used + s.n_outliers == s.n_received <= s_.max_count
        assert s.n_used >= math.ceil(s.n_received / 2)  # MAD keeps at least half
        used = [losses[i] for i in s.used]
        assert s.median_loss == pytest.approx(float(np.median(used)))
        if s.complete:
            assert s.n_used >= min_count or s.n_received == s_.max_count
            assert s.reason in ("settled", "max_count")
        else:
            assert s.reason == "pending"


def test_spread_by_hand() -> None:
    reps = make()
    feed(reps, CLEAN)
    s = reps.status()
    # med .300; |loss - med| = [0, .002, .002, .001, .001] -> MAD .001
    assert s.loss_sd == pytest.approx(1.4826 * 0.001)
    # sd of the median = sqrt(pi / 2) * loss_sd / sqrt(5)
    assert s.median_sd == pytest.approx(math.sqrt(math.pi / 2) * 1.4826 * 0.001 / math.sqrt(5))
    assert s.used_spectra.shape == (5, 3) and not s.used_spectra.flags.writeable
    one = make()
    feed(one, [0.3])
    assert math.isnan(one.status().loss_sd) and math.isnan(one.status().median_sd)
    empty = make().status()
    assert empty.median_spectrum is None and math.isnan(empty.loss_of_median_spectrum)
    assert math.isnan(empty.median_loss) and empty.reason == "pending"


def _naive_median(xs: list[float]) -> float:
    s = sorted(xs)
    k = len(s) // 2
    return s[k] if len(s) % 2 else 0.5 * (s[k - 1] + s[k])


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.one_of(st.floats(0.29, 0.31), st.floats(-5.0, 5.0), st.sampled_from([0.3, 0.31, 0.9])),
        min_size=1,
        max_size=48,
    ),
    st.sampled_from([0.0, 0.005, 0.05]),
)
def test_judgement_is_exactly_the_documented_formula(losses: list[float], floor: float) -> None:
    """Outliers, the used median and its history, float for float, against the module
    docstring's formulas written out naively (the rule shortcuts the case with no
    outlier; that shortcut must not change a single bit)."""
    s_ = ReplicateSettings(min_count=48, max_count=48, settle_tolerance=0.0, mad_floor=floor)
    reps = make(s_)
    history: list[float] = []
    for k, loss in enumerate(losses):
        v = reps.add(k, spectrum(loss), 380.0, 1.0, now=float(k))
        seen = losses[: k + 1]
        out = [False] * len(seen)
        if len(seen) >= 3:
            med = _naive_median(seen)
            dev = [abs(x - med) for x in seen]
            limit = s_.mad_threshold * 1.4826 * max(_naive_median(dev), floor)
            out = [d > limit for d in dev]
        used = [x for x, o in zip(seen, out, strict=True) if not o]
        st_ = reps.status()
        assert [o[0] for o in st_.outliers] == [i for i, o in enumerate(out) if o]
        assert reps.median_loss() == st_.median_loss == _naive_median(used)
        if out[k]:
            assert isinstance(v, Rejected) and v.code == "outlier"
        else:
            history.append(_naive_median(used))
            assert isinstance(v, Accepted) and v.median_loss == history[-1]
        assert st_.median_history == tuple(history)
