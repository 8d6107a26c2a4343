"""The replicate rule: per condition, which droplets count and when the median is done.

One condition (one recipe) is measured as a run of droplets, one spectrum
(*replicate*) each. :class:`ConditionReplicates` takes them one at a time and
answers, for each, :class:`Accepted` or :class:`Rejected` with a reason; it
keeps the record, judges outliers, and says when the median is complete.

Validity (checked in this order, each failure a :class:`Rejected` with ``code``):

- ``not_active``: the condition is already complete (late droplet);
- ``bad_index``: the replicate index is not an integer >= 0;
- ``duplicate``: the replicate index was already recorded;
- ``bad_values``: the values are not a 1-D array of numbers;
- ``wrong_grid``: ``(wl_start, wl_step, len(values))`` differ from the campaign
  :class:`Grid` by more than 1e-6;
- ``non_finite``: a value, or the loss computed from them, is NaN or infinite;
- ``loss_error``: the loss function refused the spectrum.

Outliers (``code="outlier"``), judged on all ``N`` valid replicates received so
far, again at every addition, once ``N >= 3``::

    med   = median(loss_1 .. loss_N)
    MAD   = max(median(|loss_i - med|), mad_floor)
    loss_i is an outlier  iff  |loss_i - med| > mad_threshold * 1.4826 * MAD

An outlier stays in the record (with its reason) but not in the median; a
droplet judged an outlier on arrival is answered ``Rejected("outlier")``, and a
later judgement may take it back in (or put an earlier one out):
:meth:`ConditionReplicates.status` always gives the current judgement. At least
half of the valid replicates are always used (``MAD`` bounds the median
deviation), so ``n_used >= 1`` whenever ``N >= 1``.

Completion. Let ``m_k`` be the median loss of the used replicates right after
the ``k``-th accepted (non-outlier) addition. The condition is *settled* at
addition ``k`` when::

    n_used >= min_count  and  |m_j - m_{j-1}| < settle_tolerance  for j = k-w+1 .. k

with ``w = settle_window`` (so ``k >= w + 1`` accepted additions are needed).
It is complete when settled (``reason="settled"``) or when ``N >= max_count``
valid replicates are in (``reason="max_count"``, settled or not). A complete
condition is frozen: later droplets are ``not_active``.

Spread, over the ``n`` used replicates with median ``m``::

    loss_sd   = 1.4826 * median(|loss_i - m|)        (droplet-to-droplet, robust)
    median_sd = sqrt(pi / 2) * loss_sd / sqrt(n)     (of the median itself)

Timeout. :meth:`ConditionReplicates.timed_out` is a stall timer: true when the
condition is not complete and ``now - t_last > timeout_s``, where ``t_last``
is the later of ``started_at`` and the arrival of the last *valid* replicate
(accepted or outlier; invalid droplets do not count as progress). A slow but
working instrument never times out (``max_count`` bounds the run); a silent or
garbage-sending one does. Retrying is the campaign's business: it starts a new
:class:`ConditionReplicates`.

>>> grid = Grid(380.0, 1.0, 3)
>>> reps = ConditionReplicates("c1", ReplicateSettings(min_count=3, settle_window=1),
...                            lambda s: float(s[1]), grid, started_at=0.0)
>>> [type(reps.add(k, np.array([0.0, v, 0.0]), 380.0, 1.0, now=1.0)).__name__
...  for k, v in enumerate([0.30, 0.301, 0.9, 0.302])]
['Accepted', 'Accepted', 'Rejected', 'Accepted']
>>> s = reps.status()
>>> (s.n_received, s.n_used, s.n_outliers, s.median_loss, s.complete, s.reason)
(4, 3, 1, 0.301, True, 'settled')
"""

from __future__ import annotations

import bisect
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

__all__ = [
    "REJECT_CODES",
    "Accepted",
    "ConditionReplicates",
    "Grid",
    "Rejected",
    "ReplicateSettings",
    "ReplicateStatus",
]

#: Every ``Rejected.code`` this module produces.
REJECT_CODES: tuple[str, ...] = (
    "not_active",
    "bad_index",
    "duplicate",
    "bad_values",
    "wrong_grid",
    "non_finite",
    "loss_error",
    "outlier",
)

_MAD_TO_SD = 1.4826  # MAD -> standard deviation for normal data
_MEDIAN_SE = math.sqrt(math.pi / 2)  # sd(median of n) ~ sqrt(pi/2) * sd / sqrt(n), normal data
_GRID_TOL = 1e-6


@dataclass(frozen=True)
class Grid:
    """A uniform wavelength grid: ``start + step * k`` nm for ``k = 0 .. n-1``.

    >>> g = Grid.from_range(380.0, 800.0, 1.0)
    >>> g.n, g.stop, g.matches(380.0, 1.0, 421), g.matches(380.0, 0.5, 421)
    (421, 800.0, True, False)
    """

    start: float
    step: float
    n: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start) and math.isfinite(self.step) and self.step > 0):
            raise ValueError(f"grid needs a finite start and a step > 0, got {self}")
        if self.n < 1:
            raise ValueError(f"grid needs at least one point, got n={self.n}")

    @classmethod
    def from_range(cls, start: float, stop: float, step: float) -> Grid:
        """The grid from ``start`` to ``stop`` inclusive; ``stop`` must lie on it."""
        if not (math.isfinite(start) and math.isfinite(stop) and math.isfinite(step)):
            raise ValueError(f"grid needs finite start, stop, step, got {start}, {stop}, {step}")
        if not step > 0:
            raise ValueError(f"grid step must be > 0, got {step}")
        k = (stop - start) / step
        n = round(k) + 1
        if n < 1 or abs(k - round(k)) * step > _GRID_TOL:
            raise ValueError(f"stop {stop:g} is not on the grid {start:g} + k * {step:g}")
        return cls(float(start), float(step), int(n))

    @property
    def stop(self) -> float:
        """The last wavelength."""
        return self.start + self.step * (self.n - 1)

    @property
    def wavelengths(self) -> np.ndarray:
        """All wavelengths, shape (n,)."""
        return self.start + self.step * np.arange(self.n)

    def matches(self, start: float, step: float, n: int) -> bool:
        """Whether ``(start, step, n)`` is this grid (start and step within 1e-6)."""
        return (
            n == self.n
            and abs(start - self.start) <= _GRID_TOL
            and abs(step - self.step) <= _GRID_TOL
        )

    def __str__(self) -> str:
        return _describe_grid(self.start, self.step, self.n)


@dataclass(frozen=True)
class ReplicateSettings:
    """The replicate rule's knobs (see the module docstring for the formulas).

    Attributes:
        min_count: never complete with fewer used replicates.
        max_count: complete (settled or not) once this many valid replicates are in.
        per_acquire: droplets asked for in one acquire command.
        mad_threshold: outlier when ``|loss - med| > mad_threshold * 1.4826 * MAD``.
        mad_floor: ``MAD`` is never taken below this.
        settle_tolerance: the median moved less than this ...
        settle_window: ... at each of the last this-many accepted additions.
        timeout_s: stall timeout, seconds without a valid replicate.
        retries: how many times the campaign retries a timed-out condition.
        droplet_timeout_s: droplets asked for and not in after this many seconds
            without any droplet of the condition arriving are taken as lost, and
            asked for again (same attempt, nothing discarded, not a stall). Only
            useful below ``timeout_s``.
    """

    min_count: int = 5
    max_count: int = 48
    per_acquire: int = 5
    mad_threshold: float = 3.5
    mad_floor: float = 0.005
    settle_tolerance: float = 0.01
    settle_window: int = 3
    timeout_s: float = 120.0
    retries: int = 1
    droplet_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        problems = []
        if self.min_count < 1:
            problems.append(f"min_count={self.min_count} < 1")
        if self.max_count < self.min_count:
            problems.append(f"max_count={self.max_count} < min_count={self.min_count}")
        if self.per_acquire < 1:
            problems.append(f"per_acquire={self.per_acquire} < 1")
        if not self.mad_threshold > 0:
            problems.append(f"mad_threshold={self.mad_threshold} must be > 0")
        if not self.mad_floor >= 0:
            problems.append(f"mad_floor={self.mad_floor} must be >= 0")
        if not self.settle_tolerance >= 0:
            problems.append(f"settle_tolerance={self.settle_tolerance} must be >= 0")
        if self.settle_window < 0:
            problems.append(f"settle_window={self.settle_window} < 0")
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            problems.append(f"timeout_s={self.timeout_s} must be finite and > 0")
        if not (self.droplet_timeout_s > 0 and math.isfinite(self.droplet_timeout_s)):
            problems.append(f"droplet_timeout_s={self.droplet_timeout_s} must be finite and > 0")
        if self.retries < 0:
            problems.append(f"retries={self.retries} < 0")
        if problems:
            raise ValueError("bad replicate settings: " + "; ".join(problems))


@dataclass(frozen=True)
class Accepted:
    """A replicate recorded and, for now, used in the median.

    Attributes:
        replicate: its index.
        loss: its loss.
        median_loss: median loss of the used replicates after it.
        n_used: used replicates after it.
        complete: whether the condition is complete after it.
    """

    replicate: int
    loss: float
    median_loss: float
    n_used: int
    complete: bool


@dataclass(frozen=True)
class Rejected:
    """A replicate not used; ``code`` is one of :data:`REJECT_CODES`.

    Only ``code == "outlier"`` is recorded (it may be taken back in later);
    every other rejection leaves the record as it was.
    """

    reason: str
    code: str


@dataclass(frozen=True, eq=False)
class ReplicateStatus:
    """One condition's replicates at a moment.

    ``median_spectrum`` and ``loss_of_median_spectrum`` are computed on first
    access (an elementwise median of up to ``max_count`` spectra), so that
    taking a status after every droplet stays cheap.

    Attributes:
        condition: the condition id.
        n_received: valid replicates recorded (used + outliers).
        n_used: replicates in the median.
        n_outliers: replicates judged outliers now.
        n_invalid: droplets rejected as invalid (not recorded).
        used: indices of the used replicates, in arrival order.
        outliers: ``(replicate, loss, reason)`` for each outlier, in arrival order.
        median_loss: median loss of the used replicates (NaN when none).
        loss_sd: robust droplet-to-droplet spread of the loss,
            ``1.4826 * median(|loss - median_loss|)`` over the used replicates
            (NaN with fewer than 2). The study's median over conditions: 0.022.
        median_sd: standard deviation of ``median_loss`` itself,
            ``sqrt(pi / 2) * loss_sd / sqrt(n_used)`` (normal data); the noise
            level of the median for a model.
        median_spectrum: elementwise median of the used spectra, shape (m,),
            read-only; None when none are used.
        loss_of_median_spectrum: the loss of ``median_spectrum`` (NaN when None);
            the study found it agrees closely with ``median_loss``.
        median_history: ``m_k`` after each accepted addition (settling is judged on it).
        complete: no more replicates needed.
        settled: the median settled (see the module docstring).
        reason: ``"settled"``, ``"max_count"``, or ``"pending"`` when not complete.
        used_spectra: the used spectra in arrival order, (n_used, m), read-only.
        loss_fn: the condition's loss function (for ``loss_of_median_spectrum``).
    """

    condition: str
    n_received: int
    n_used: int
    n_outliers: int
    n_invalid: int
    used: tuple[int, ...]
    outliers: tuple[tuple[int, float, str], ...]
    median_loss: float
    loss_sd: float
    median_sd: float
    median_history: tuple[float, ...]
    complete: bool
    settled: bool
    reason: str
    used_spectra: np.ndarray = field(repr=False)
    loss_fn: Callable[[np.ndarray], float] = field(repr=False)

    @cached_property
    def median_spectrum(self) -> np.ndarray | None:
        """Elementwise median of the used spectra, (m,), read-only; None if none."""
        if len(self.used_spectra) == 0:
            return None
        out = _median_rows(self.used_spectra)
        out.flags.writeable = False
        return out

    @cached_property
    def loss_of_median_spectrum(self) -> float:
        """The loss of :attr:`median_spectrum` (NaN when there is none)."""
        spectrum = self.median_spectrum
        if spectrum is None:
            return math.nan
        try:
            return float(self.loss_fn(spectrum))
        except (ValueError, ArithmeticError):
            return math.nan


class ConditionReplicates:
    """The replicates of one condition; mutable, owned by the campaign.

    Args:
        condition: the condition id (for reasons and the status).
        settings: the rule's knobs.
        loss_fn: spectrum (m,) -> loss; called once per valid spectrum.
        grid: the campaign's wavelength grid.
        started_at: when the condition's first acquire was sent (the clock of ``now``).

    After every :meth:`add`, accepted or not, check :attr:`complete` (or
    :meth:`status`) and :meth:`need_more`.
    """

    def __init__(
        self,
        condition: str,
        settings: ReplicateSettings,
        loss_fn: Callable[[np.ndarray], float],
        grid: Grid,
        started_at: float,
    ) -> None:
        self._condition = condition
        self._settings = settings
        self._loss_fn = loss_fn
        self._grid = grid
        self._started_at = float(started_at)
        self._last_progress = float(started_at)
        self._ids: list[int] = []
        self._seen: set[int] = set()
        self._losses: list[float] = []
        self._sorted: list[float] = []  # the same losses, in order (kept by _record)
        self._spectra = np.empty((settings.max_count, grid.n))
        self._outlier: list[bool] = []
        self._outlier_reason: dict[int, str] = {}  # position -> reason
        self._history: list[float] = []
        self._median_used = math.nan  # median loss of the used replicates, kept by _record
        self._n_invalid = 0
        self._complete = False
        self._settled = False
        self._reason = "pending"
        self._status: ReplicateStatus | None = None

    # --- properties ----------------------------------------------------------

    @property
    def condition(self) -> str:
        return self._condition

    @property
    def settings(self) -> ReplicateSettings:
        return self._settings

    @property
    def grid(self) -> Grid:
        return self._grid

    @property
    def started_at(self) -> float:
        return self._started_at

    @property
    def complete(self) -> bool:
        """Whether no more replicates are needed (cheap; see :meth:`status`)."""
        return self._complete

    @property
    def n_received(self) -> int:
        """Valid replicates recorded (used + outliers); cheap, as in :meth:`status`."""
        return len(self._losses)

    @property
    def n_outliers(self) -> int:
        """Replicates judged outliers now; cheap, as in :meth:`status`."""
        return len(self._outlier_reason)

    @property
    def n_invalid(self) -> int:
        """Droplets rejected as invalid; cheap, as in :meth:`status`."""
        return self._n_invalid

    @property
    def n_used(self) -> int:
        """Replicates in the median; cheap, as in :meth:`status`."""
        return len(self._losses) - len(self._outlier_reason)

    def median_loss(self) -> float:
        """Median loss of the used replicates (NaN when none): :attr:`ReplicateStatus.median_loss`
        without building the status (no copy of the spectra)."""
        return self._median_used

    @property
    def deadline(self) -> float:
        """When the stall timer runs out: ``t_last + timeout_s``."""
        return self._last_progress + self._settings.timeout_s

    # --- events --------------------------------------------------------------

    def add(
        self, replicate: int, values: np.ndarray, wl_start: float, wl_step: float, now: float
    ) -> Accepted | Rejected:
        """Take one droplet's spectrum; answer whether it counts, and why not.

        Args:
            replicate: the droplet's index within the condition (>= 0, unique).
            values: absorbance on the grid ``wl_start + wl_step * k``, shape (m,).
            wl_start, wl_step: the spectrum's grid, nm.
            now: arrival time (same clock as ``started_at``).

        Returns:
            :class:`Accepted`, or :class:`Rejected` with a code from :data:`REJECT_CODES`.
        """
        c = self._condition
        if self._complete:
            return self._invalid(
                "not_active",
                f"condition {c} is already complete ({self._reason}); "
                f"replicate {replicate!r} arrived late",
            )
        try:
            r = operator.index(replicate)
        except TypeError:
            r = -1
        if r < 0 or isinstance(replicate, bool):
            return self._invalid(
                "bad_index", f"condition {c}: replicate index {replicate!r} is not an integer >= 0"
            )
        if r in self._seen:
            return self._invalid("duplicate", f"condition {c}: replicate {r} was already received")
        try:
            v = np.asarray(values, dtype=float)
        except (TypeError, ValueError) as exc:
            return self._invalid(
                "bad_values", f"condition {c}: replicate {r} values are not numbers ({exc})"
            )
        if v.ndim != 1:
            return self._invalid(
                "bad_values",
                f"condition {c}: replicate {r} values have shape {v.shape}, need one spectrum",
            )
        try:
            start, step = float(wl_start), float(wl_step)
        except (TypeError, ValueError):
            start = step = math.nan
        if not self._grid.matches(start, step, v.size):
            return self._invalid(
                "wrong_grid",
                f"condition {c}: replicate {r} is on the grid "
                f"{_describe_grid(start, step, v.size)}, the campaign's is {self._grid}",
            )
        finite = np.isfinite(v)
        if not finite.all():
            bad = int(v.size - np.count_nonzero(finite))
            return self._invalid(
                "non_finite",
                f"condition {c}: replicate {r} has {bad} of {v.size} values NaN or infinite",
            )
        try:
            loss = float(self._loss_fn(v))
        except (ValueError, ArithmeticError) as exc:
            return self._invalid("loss_error", f"condition {c}: replicate {r}: loss failed ({exc})")
        if not math.isfinite(loss):
            return self._invalid(
                "non_finite", f"condition {c}: replicate {r} gives a non-finite loss {loss}"
            )
        return self._record(r, v, loss, float(now))

    def status(self) -> ReplicateStatus:
        """The current record (cached until the next :meth:`add`)."""
        if self._status is None:
            self._status = self._make_status()
        return self._status

    def loss_of(self, replicate: int) -> float | None:
        """The loss of an accepted (valid) replicate, None if it was not accepted."""
        try:
            return self._losses[self._ids.index(replicate)]
        except ValueError:
            return None

    def need_more(self, outstanding: int = 0) -> int:
        """How many droplets to ask for now.

        ``0`` when complete; else ``min(per_acquire, max_count - N - outstanding)``
        (at least 0), where ``N`` is the number of valid replicates in and
        ``outstanding`` the droplets already asked for and not yet in. Invalid
        droplets are not counted, so they are asked for again.
        """
        if self._complete:
            return 0
        s = self._settings
        room = s.max_count - len(self._losses) - max(int(outstanding), 0)
        return max(0, min(s.per_acquire, room))

    def timed_out(self, now: float) -> bool:
        """Stall timer: not complete and ``now - t_last > timeout_s`` (module docstring)."""
        return not self._complete and now - self._last_progress > self._settings.timeout_s

    # --- private ---------------------------------------------------------------

    def _invalid(self, code: str, reason: str) -> Rejected:
        self._n_invalid += 1
        self._status = None
        return Rejected(reason=reason, code=code)

    def _record(self, r: int, v: np.ndarray, loss: float, now: float) -> Accepted | Rejected:
        s = self._settings
        pos = len(self._losses)
        self._ids.append(r)
        self._seen.add(r)
        self._losses.append(loss)
        bisect.insort(self._sorted, loss)
        self._spectra[pos] = v
        self._outlier.append(False)
        self._last_progress = max(self._last_progress, now)
        self._status = None
        med = self._judge_outliers()
        if self._outlier_reason:
            used = [x for x, out in zip(self._losses, self._outlier, strict=True) if not out]
            med = _median(used)
        else:  # none out (the common case): the used losses are all of them
            used = self._losses
            if med is None:
                med = _median(used)
        self._median_used = med
        is_outlier = self._outlier[pos]
        if not is_outlier:
            self._history.append(med)
            h, w = self._history, s.settle_window
            self._settled = (
                len(used) >= s.min_count
                and len(h) >= w + 1
                and all(abs(h[-j] - h[-j - 1]) < s.settle_tolerance for j in range(1, w + 1))
            )
        if self._settled:
            self._complete, self._reason = True, "settled"
        elif len(self._losses) >= s.max_count:
            self._complete, self._reason = True, "max_count"
        if self._complete:  # nothing is added any more: keep the used rows, not max_count
            self._spectra = self._spectra[[p for p, out in enumerate(self._outlier) if not out]]
            self._spectra.flags.writeable = False  # shared with every status from now on
        if is_outlier:
            return Rejected(reason=self._outlier_reason[pos], code="outlier")
        return Accepted(
            replicate=r, loss=loss, median_loss=med, n_used=len(used), complete=self._complete
        )

    def _judge_outliers(self) -> float | None:
        """Re-judge every valid replicate against the whole set (module docstring).

        Returns the median of all the losses when it was computed (N >= 3), so
        that :meth:`_record` need not sort them again when none is an outlier.
        """
        losses = self._losses
        self._outlier_reason.clear()
        if len(losses) < 3:
            self._outlier = [False] * len(losses)
            return None
        s = self._settings
        ordered = self._sorted
        n, k = len(ordered), len(ordered) // 2
        med = ordered[k] if n % 2 else 0.5 * (ordered[k - 1] + ordered[k])  # = _median(losses)
        # C-level maps (x - med, |.|), the same float operations as a comprehension;
        # over the sorted losses the deviations fall, then rise: two runs to merge
        mad = max(_median(list(map(abs, map(med.__rsub__, ordered)))), s.mad_floor)
        limit = s.mad_threshold * _MAD_TO_SD * mad
        # the largest deviation is at an end of the sorted losses
        if abs(ordered[0] - med) <= limit and abs(ordered[-1] - med) <= limit:
            self._outlier = [False] * n
            return med
        dev = list(map(abs, map(med.__rsub__, losses)))
        flags = list(map(limit.__lt__, dev))
        self._outlier = flags
        for pos, flag in enumerate(flags):
            if flag:
                self._outlier_reason[pos] = (
                    f"condition {self._condition}: replicate {self._ids[pos]} is an outlier: "
                    f"|loss - median| = |{losses[pos]:.4g} - {med:.4g}| = {dev[pos]:.4g} "
                    f"> {s.mad_threshold:g} * 1.4826 * MAD = {limit:.4g} "
                    f"(MAD {mad:.4g}, {len(losses)} replicates)"
                )
        return med

    def _make_status(self) -> ReplicateStatus:
        pos_used = [p for p, out in enumerate(self._outlier) if not out]
        used_losses = [self._losses[p] for p in pos_used]
        med = _median(used_losses) if used_losses else math.nan
        if len(used_losses) >= 2:
            sd = _MAD_TO_SD * _median([abs(x - med) for x in used_losses])
            median_sd = _MEDIAN_SE * sd / math.sqrt(len(used_losses))
        else:
            sd = median_sd = math.nan
        # complete: the buffer holds just the used rows (read-only); else a copy (fancy indexing)
        used_spectra = self._spectra if self._complete else self._spectra[pos_used]
        used_spectra.flags.writeable = False
        outliers = tuple(
            (self._ids[p], self._losses[p], self._outlier_reason[p])
            for p in sorted(self._outlier_reason)
        )
        return ReplicateStatus(
            condition=self._condition,
            n_received=len(self._losses),
            n_used=len(pos_used),
            n_outliers=len(outliers),
            n_invalid=self._n_invalid,
            used=tuple(self._ids[p] for p in pos_used),
            outliers=outliers,
            median_loss=med,
            loss_sd=sd,
            median_sd=median_sd,
            median_history=tuple(self._history),
            complete=self._complete,
            settled=self._settled,
            reason=self._reason,
            used_spectra=used_spectra,
            loss_fn=self._loss_fn,
        )


def _median(xs: list[float]) -> float:
    """Median of a short non-empty list (sorting beats numpy below ~100 items)."""
    s = sorted(xs)
    k = len(s) // 2
    return s[k] if len(s) % 2 else 0.5 * (s[k - 1] + s[k])


def _median_rows(a: np.ndarray) -> np.ndarray:
    """Median over axis 0 of (n, m), n >= 1 (a sort is ~4x faster than np.median here)."""
    s = np.sort(a, axis=0)
    k = len(s) // 2
    return s[k].copy() if len(s) % 2 else 0.5 * (s[k - 1] + s[k])


def _describe_grid(start: float, step: float, n: int) -> str:
    stop = start + step * (n - 1)
    return f"{start:g}-{stop:g} nm step {step:g} ({n} points)"
