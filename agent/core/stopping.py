"""Stop rules: small objects that look at the campaign's progress and return a
:class:`StopReason` or ``None``.

Every rule is a pure function of a :class:`Progress` snapshot, which the
campaign builds after each completed round (``now`` is passed in; nothing here
reads a clock). Rules compose with :class:`AnyOf` (the first member that fires)
and :class:`AllOf` (every member fires; the reason lists them all).

Families:

* budgets: :class:`MaxRounds`, :class:`MaxConditions`, :class:`WallTime`;
* the objective: :class:`TargetLoss`, :class:`NoImprovement`;
* the surrogate: :class:`RegretBound` (Makarova et al. 2022), from the numbers
  a Bayesian-optimisation strategy reports in ``Progress.metrics``;
* the spectrum model (issue 5): :class:`ModelAccuracy`, :class:`ModelStability`.

Rules that read ``Progress.metrics`` never fire while their keys are absent
(e.g. after a Latin-hypercube round). The keys, all in loss units unless said:

============================  ===================================================
``ucb_min_measured``          ``min_i UCB(x_i)`` over the measured recipes
``lcb_min_pool``              ``min_x LCB(x)`` over the candidate pool of the box
``regret_bound``              their difference
``regret_beta``               the ``beta`` of ``mu -/+ sqrt(beta) sigma``
``gp_noise_sd``               the GP's learned observation noise (sd)
``model_cosine``              spectrum model: mean cosine similarity of its
                              predicted and the measured spectra of conditions
                              it had not seen (0..1, 1 is perfect)
``model_mse``                 spectrum model: mean squared error of those
                              predictions (absorbance units squared)
``model_stability``           spectrum model: mean cosine similarity of the
                              spectra predicted by this and the previous model
                              on the same recipes (0..1, 1 is unchanged)
============================  ===================================================

>>> rule = AnyOf((MaxRounds(3), TargetLoss(0.1)))
>>> rule(Progress(rounds=3, conditions=45, best_loss=0.4)).rule
'max_rounds'
>>> rule(Progress(rounds=1, conditions=15, best_loss=0.5)) is None
True

Each rule also says how close it is to firing, for monitors: ``rule.closeness(progress)``
is a :class:`Closeness` (a fraction in 0..1, exactly 1 when the rule fires, and
the numbers behind it); :func:`closeness` lists them for a whole rule tree (an
:class:`AnyOf` lists each member, an :class:`AllOf` is one entry at the least
advanced of its members). The fractions are a progress gauge, not a forecast:

===================  ==========================================================
``max_rounds``       ``rounds / n``
``max_conditions``   ``conditions / n``
``wall_time``        ``elapsed_s / seconds`` (0 without a clock)
``target_loss``      ``(b_1 - best) / (b_1 - level)``, ``b_1`` the best after round 1
``no_improvement``   ``min(1, K / (window + 1)) * min(1, min_delta / improvement)``,
                     the improvement over the last ``window`` rounds (or all so far)
``regret_bound``     ``threshold / bound``
``model_accuracy``   ``model_cosine / cosine`` and ``mse / model_mse``, the smaller
``model_stability``  ``model_stability / level``
===================  ==========================================================

(each clipped to 0..1, and below 1 until the rule fires; 0 while an input is absent).

>>> [c.rule for c in closeness(rule, Progress(rounds=1, conditions=15, best_loss=0.5))]
['max_rounds', 'target_loss']
>>> closeness(rule, Progress(rounds=1, conditions=15, best_loss=0.5))[0].fraction
0.3333333333333333
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = [
    "AllOf",
    "AnyOf",
    "Closeness",
    "MaxConditions",
    "MaxRounds",
    "ModelAccuracy",
    "ModelStability",
    "NoImprovement",
    "Progress",
    "RegretBound",
    "StopReason",
    "StopRule",
    "TargetLoss",
    "WallTime",
    "closeness",
]


@dataclass(frozen=True)
class Progress:
    """What stop rules see: counts so far, the best median loss per round, the clock
    and the latest model numbers.

    Attributes:
        rounds: completed rounds.
        conditions: completed (not failed) conditions.
        best_loss: best median loss so far (None before any result).
        best_by_round: best median loss after each completed round.
        elapsed_s: campaign time since start (``now - start``), or None when the
            campaign has no clock (offline ``ask``/``tell`` without ``now``).
        metrics: finite numbers the strategy reported with the proposal of the
            latest round (keys in the module docstring); empty when it reported none.
        replicate_sd: median over the conditions of the standard error of the
            median loss (None when no condition has one).
    """

    rounds: int
    conditions: int
    best_loss: float | None
    best_by_round: tuple[float, ...] = ()
    elapsed_s: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    replicate_sd: float | None = None


@dataclass(frozen=True)
class StopReason:
    """Which rule fired, a sentence, and the numbers behind it."""

    rule: str
    reason: str
    numbers: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Closeness:
    """How far a rule is from firing: ``fraction`` in 0..1 (1: it fires), with the
    numbers behind it (the rule's inputs and thresholds; absent inputs are left out)."""

    rule: str
    fraction: float
    numbers: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class StopRule(Protocol):
    def __call__(self, progress: Progress) -> StopReason | None: ...


def closeness(rule: StopRule, progress: Progress) -> list[Closeness]:
    """How close each rule of ``rule`` is to firing: one entry per member of an
    :class:`AnyOf` (recursively), one for any other rule; a rule without a
    ``closeness`` method (a user's own) is left out."""
    if isinstance(rule, AnyOf):
        return [c for member in rule.rules for c in closeness(member, progress)]
    gauge = getattr(rule, "closeness", None)
    return [gauge(progress)] if callable(gauge) else []


@dataclass(frozen=True)
class MaxRounds:
    """Stop after ``n`` completed rounds: fires when ``rounds >= n``."""

    n: int

    def __call__(self, progress: Progress) -> StopReason | None:
        if progress.rounds >= self.n:
            return StopReason(
                "max_rounds",
                f"round budget spent: {progress.rounds} of {self.n} rounds",
                {"rounds": progress.rounds, "max_rounds": self.n},
            )
        return None

    def closeness(self, progress: Progress) -> Closeness:
        return _gauge(
            self,
            progress,
            "max_rounds",
            progress.rounds / self.n,
            {"rounds": progress.rounds, "max_rounds": self.n},
        )


@dataclass(frozen=True)
class MaxConditions:
    """Stop after ``n`` completed conditions: fires when ``conditions >= n``."""

    n: int

    def __call__(self, progress: Progress) -> StopReason | None:
        if progress.conditions >= self.n:
            return StopReason(
                "max_conditions",
                f"condition budget spent: {progress.conditions} of {self.n}",
                {"conditions": progress.conditions, "max_conditions": self.n},
            )
        return None

    def closeness(self, progress: Progress) -> Closeness:
        return _gauge(
            self,
            progress,
            "max_conditions",
            progress.conditions / self.n,
            {"conditions": progress.conditions, "max_conditions": self.n},
        )


@dataclass(frozen=True)
class WallTime:
    """Stop once the campaign has run ``seconds``: fires when ``elapsed_s >= seconds``.

    Checked when a round completes, so the campaign ends with the round during
    which the budget ran out. Never fires without a clock (``elapsed_s`` None).

    >>> WallTime(3600)(Progress(rounds=2, conditions=30, best_loss=0.3, elapsed_s=3600.0)).rule
    'wall_time'
    """

    seconds: float

    def __call__(self, progress: Progress) -> StopReason | None:
        elapsed = progress.elapsed_s
        if elapsed is not None and elapsed >= self.seconds:
            return StopReason(
                "wall_time",
                f"time budget spent: {elapsed:.0f} s of {self.seconds:.0f} s",
                {"elapsed_s": elapsed, "wall_time_s": self.seconds},
            )
        return None

    def closeness(self, progress: Progress) -> Closeness:
        elapsed = progress.elapsed_s
        numbers = {"wall_time_s": self.seconds}
        if elapsed is None:
            return _gauge(self, progress, "wall_time", 0.0, numbers)
        return _gauge(
            self, progress, "wall_time", elapsed / self.seconds, {"elapsed_s": elapsed, **numbers}
        )


@dataclass(frozen=True)
class TargetLoss:
    """Stop once the best median loss is at or below ``level``."""

    level: float

    def __call__(self, progress: Progress) -> StopReason | None:
        if progress.best_loss is not None and progress.best_loss <= self.level:
            return StopReason(
                "target_loss",
                f"best median loss {progress.best_loss:.4f} <= target {self.level:.4f}",
                {"best_loss": progress.best_loss, "target": self.level},
            )
        return None

    def closeness(self, progress: Progress) -> Closeness:
        best = progress.best_loss
        numbers = {"target": self.level}
        if best is None:
            return _gauge(self, progress, "target_loss", 0.0, numbers)
        numbers["best_loss"] = best
        first = progress.best_by_round[0] if progress.best_by_round else best
        span = first - self.level
        fraction = (first - best) / span if span > 0 else 1.0
        return _gauge(self, progress, "target_loss", fraction, numbers)


@dataclass(frozen=True)
class NoImprovement:
    """Stop when the best median loss improved by ``min_delta`` or less over the
    last ``window`` rounds.

    With ``b_k`` the best median loss after round ``k`` and ``K`` the rounds
    completed, it fires when ``K > window`` and
    ``b_{K - window} - b_K <= min_delta``.

    >>> rule = NoImprovement(window=2, min_delta=0.01)
    >>> rule(Progress(3, 45, 0.30, best_by_round=(0.5, 0.305, 0.30))) is None
    True
    >>> rule(Progress(4, 60, 0.30, best_by_round=(0.5, 0.305, 0.30, 0.30))).rule
    'no_improvement'
    """

    window: int
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.window < 1 or not self.min_delta >= 0:
            raise ValueError("NoImprovement needs window >= 1 and min_delta >= 0")

    def __call__(self, progress: Progress) -> StopReason | None:
        history = progress.best_by_round
        if len(history) <= self.window:
            return None
        before, now = history[-1 - self.window], history[-1]
        improvement = before - now
        if improvement > self.min_delta:
            return None
        return StopReason(
            "no_improvement",
            f"best median loss improved by {improvement:.4f} (<= {self.min_delta:.4f}) "
            f"over the last {self.window} rounds: {before:.4f} -> {now:.4f}",
            {
                "improvement": improvement,
                "min_delta": self.min_delta,
                "window": self.window,
                "best_before": before,
                "best_loss": now,
            },
        )

    def closeness(self, progress: Progress) -> Closeness:
        history = progress.best_by_round
        numbers: dict[str, float] = {
            "rounds": len(history),
            "window": self.window,
            "min_delta": self.min_delta,
        }
        if len(history) < 2:
            return _gauge(self, progress, "no_improvement", 0.0, numbers)
        before = history[max(0, len(history) - 1 - self.window)]
        improvement = before - history[-1]
        numbers["improvement"] = improvement
        ready = min(1.0, len(history) / (self.window + 1))
        if improvement <= self.min_delta:
            stalled = 1.0
        else:
            stalled = self.min_delta / improvement
        return _gauge(self, progress, "no_improvement", ready * stalled, numbers)


@dataclass(frozen=True)
class RegretBound:
    r"""Stop when the GP's bound on the simple regret falls below the noise
    (Makarova et al., "Automatic termination for hyperparameter optimization",
    AutoML 2022).

    With the loss GP's posterior mean ``mu`` and sd ``sigma`` (latent loss, no
    observation noise), ``UCB = mu + sqrt(beta) sigma``, ``LCB = mu - sqrt(beta) sigma``,
    the measured recipes ``G`` and the box ``X``, the regret of the best measured
    recipe is bounded, with high probability, by::

        r = min_{x in G} UCB(x) - min_{x in X} LCB(x)

    The strategy reports both terms (``ucb_min_measured``, ``lcb_min_pool``: the
    second over its candidate pool, see :mod:`agent.core.strategies.bo`); the rule
    fires when ``r < threshold``, the threshold being ``level`` when given, else
    ``scale`` times the replicate noise: ``Progress.replicate_sd`` (the median
    standard error of the median loss) or, when that is unknown, the GP's
    learned noise ``gp_noise_sd``. Below that level a better recipe could not be
    told from the best one by measuring it. Never fires without the numbers.

    >>> p = Progress(3, 45, 0.2, metrics={"ucb_min_measured": 0.21, "lcb_min_pool": 0.2},
    ...              replicate_sd=0.02)
    >>> RegretBound()(p).numbers["regret_bound"] < RegretBound()(p).numbers["threshold"]
    True
    """

    level: float | None = None
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.level is not None and not self.level > 0:
            raise ValueError("RegretBound level must be > 0")
        if not self.scale > 0:
            raise ValueError("RegretBound scale must be > 0")

    def __call__(self, progress: Progress) -> StopReason | None:
        ucb = _metric(progress, "ucb_min_measured")
        lcb = _metric(progress, "lcb_min_pool")
        if ucb is None or lcb is None:
            return None
        numbers: dict[str, float] = {"ucb_min_measured": ucb, "lcb_min_pool": lcb}
        if self.level is not None:
            threshold, source = self.level, "the configured level"
        elif progress.replicate_sd is not None and math.isfinite(progress.replicate_sd):
            threshold, source = self.scale * progress.replicate_sd, "the replicate noise"
            numbers["replicate_sd"] = progress.replicate_sd
        elif (noise := _metric(progress, "gp_noise_sd")) is not None:
            threshold, source = self.scale * noise, "the GP's noise"
            numbers["gp_noise_sd"] = noise
        else:
            return None
        bound = ucb - lcb
        if not bound < threshold:
            return None
        beta = _metric(progress, "regret_beta")
        if beta is not None:
            numbers["regret_beta"] = beta
        numbers.update(regret_bound=bound, threshold=threshold)
        return StopReason(
            "regret_bound",
            f"regret bound {bound:.4f} < {threshold:.4f} ({source}): "
            f"min UCB over measured {ucb:.4f}, min LCB over the box {lcb:.4f}",
            numbers,
        )

    def closeness(self, progress: Progress) -> Closeness:
        ucb = _metric(progress, "ucb_min_measured")
        lcb = _metric(progress, "lcb_min_pool")
        numbers: dict[str, float] = {}
        threshold = self.level
        if threshold is None and progress.replicate_sd is not None:
            if math.isfinite(progress.replicate_sd):
                threshold = self.scale * progress.replicate_sd
        if threshold is None and (noise := _metric(progress, "gp_noise_sd")) is not None:
            threshold = self.scale * noise
        if threshold is not None:
            numbers["threshold"] = threshold
        if ucb is None or lcb is None or threshold is None:
            return _gauge(self, progress, "regret_bound", 0.0, numbers)
        bound = ucb - lcb
        numbers["regret_bound"] = bound
        fraction = threshold / bound if bound > 0 else 1.0
        return _gauge(self, progress, "regret_bound", fraction, numbers)


@dataclass(frozen=True)
class ModelAccuracy:
    """Stop when the spectrum model predicts unseen conditions well enough:
    ``model_cosine >= cosine`` and ``model_mse <= mse`` (each only when set; at
    least one must be). Never fires while a needed metric is absent.

    >>> ModelAccuracy(cosine=0.95)(Progress(5, 75, 0.2, metrics={"model_cosine": 0.97})).rule
    'model_accuracy'
    """

    cosine: float | None = None
    mse: float | None = None

    def __post_init__(self) -> None:
        if self.cosine is None and self.mse is None:
            raise ValueError("ModelAccuracy needs a cosine or an mse threshold")

    def __call__(self, progress: Progress) -> StopReason | None:
        numbers: dict[str, float] = {}
        parts: list[str] = []
        if self.cosine is not None:
            cos = _metric(progress, "model_cosine")
            if cos is None or cos < self.cosine:
                return None
            numbers.update(model_cosine=cos, min_cosine=self.cosine)
            parts.append(f"cosine {cos:.4f} >= {self.cosine:.4f}")
        if self.mse is not None:
            mse = _metric(progress, "model_mse")
            if mse is None or mse > self.mse:
                return None
            numbers.update(model_mse=mse, max_mse=self.mse)
            parts.append(f"mse {mse:.3g} <= {self.mse:.3g}")
        return StopReason("model_accuracy", "spectrum model accurate: " + ", ".join(parts), numbers)

    def closeness(self, progress: Progress) -> Closeness:
        numbers: dict[str, float] = {}
        parts: list[float] = []
        if self.cosine is not None:
            numbers["min_cosine"] = self.cosine
            cos = _metric(progress, "model_cosine")
            if cos is not None:
                numbers["model_cosine"] = cos
            parts.append(0.0 if cos is None else cos / self.cosine)
        if self.mse is not None:
            numbers["max_mse"] = self.mse
            mse = _metric(progress, "model_mse")
            if mse is not None:
                numbers["model_mse"] = mse
            parts.append(0.0 if mse is None else (self.mse / mse if mse > 0 else 1.0))
        return _gauge(self, progress, "model_accuracy", min(parts), numbers)


@dataclass(frozen=True)
class ModelStability:
    """Stop when consecutive spectrum models agree: ``model_stability >= level``.

    >>> ModelStability(0.98)(Progress(5, 75, 0.2, metrics={"model_stability": 0.9})) is None
    True
    """

    level: float

    def __call__(self, progress: Progress) -> StopReason | None:
        value = _metric(progress, "model_stability")
        if value is None or value < self.level:
            return None
        return StopReason(
            "model_stability",
            f"consecutive spectrum models agree: stability {value:.4f} >= {self.level:.4f}",
            {"model_stability": value, "min_stability": self.level},
        )

    def closeness(self, progress: Progress) -> Closeness:
        value = _metric(progress, "model_stability")
        numbers = {"min_stability": self.level}
        if value is None:
            return _gauge(self, progress, "model_stability", 0.0, numbers)
        numbers["model_stability"] = value
        return _gauge(self, progress, "model_stability", value / self.level, numbers)


@dataclass(frozen=True)
class AnyOf:
    """Fires with the first member rule that fires."""

    rules: Sequence[StopRule]

    def __call__(self, progress: Progress) -> StopReason | None:
        for rule in self.rules:
            reason = rule(progress)
            if reason is not None:
                return reason
        return None


@dataclass(frozen=True)
class AllOf:
    """Fires when every member rule fires.

    The rule is ``all_of.<member>.<member>...``, the reason the members' joined
    by "and", and the numbers every member's, keyed ``<member>.<key>``.
    """

    rules: Sequence[StopRule]

    def __call__(self, progress: Progress) -> StopReason | None:
        fired: list[StopReason] = []
        for rule in self.rules:
            reason = rule(progress)
            if reason is None:
                return None
            fired.append(reason)
        if not fired:
            return None
        numbers: dict[str, float] = {}
        for r in fired:
            numbers.update({f"{r.rule}.{k}": v for k, v in r.numbers.items()})
        return StopReason(
            "all_of." + ".".join(r.rule for r in fired),
            " and ".join(r.reason for r in fired),
            numbers,
        )

    def closeness(self, progress: Progress) -> Closeness:
        """One entry, ``all_of.<member>...``, at the least advanced member's fraction;
        numbers keyed ``<member>.<key>``. A member that is itself an :class:`AnyOf`
        counts at its most advanced member."""
        names: list[str] = []
        fractions: list[float] = []
        numbers: dict[str, float] = {}
        for member in self.rules:
            entries = closeness(member, progress)
            if not entries:
                continue
            best = max(entries, key=lambda c: c.fraction)
            names.append(best.rule)
            fractions.append(best.fraction)
            numbers.update({f"{best.rule}.{k}": v for k, v in best.numbers.items()})
        fraction = min(fractions) if fractions else 0.0
        return _gauge(self, progress, "all_of." + ".".join(names), fraction, numbers)


def _metric(progress: Progress, key: str) -> float | None:
    """``progress.metrics[key]`` as a finite float, else None."""
    value = progress.metrics.get(key)
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


# Below 1 until the rule fires, so that a gauge at 1 always means "fires now".
_NOT_YET = 0.999


def _gauge(
    rule: StopRule, progress: Progress, name: str, fraction: float, numbers: dict[str, float]
) -> Closeness:
    """A :class:`Closeness` with ``fraction`` clipped to 0..1: exactly 1 when ``rule``
    fires on ``progress``, at most :data:`_NOT_YET` otherwise."""
    if rule(progress) is not None:
        fraction = 1.0
    elif not math.isfinite(fraction):
        fraction = 0.0
    else:
        fraction = min(max(fraction, 0.0), _NOT_YET)
    return Closeness(name, float(fraction), {k: float(v) for k, v in numbers.items()})
