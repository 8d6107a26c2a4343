"""The search space: parameters, box, hard limits, linear constraints, pump channels.

A recipe is a point ``x`` in physical units, ordered as :attr:`Space.names`.
The *box* is where the optimiser currently searches; the *hard limits* are
where it may ever go (the box never leaves them); linear constraints
``sum_i a_i x_i <= b`` and the pump's per-channel flow limits hold everywhere.

Spaces are immutable: widening the box returns a new :class:`Space`.

>>> space = Space(
...     parameters=(Parameter("a", 0, 1, 0, 2), Parameter("b", 0, 1, 0, 2)),
...     constraints=(LinearConstraint({"a": 1, "b": 1}, 1.5),),
... )
>>> bool(space.is_feasible(np.array([[0.5, 0.5]]))[0])
True
>>> space.violations({"a": 1.0, "b": 0.9})
['a + b = 1.9 > 1.5']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

__all__ = [
    "Channel",
    "ChannelMap",
    "LinearConstraint",
    "Parameter",
    "Space",
]

_EPS = 1e-9
_FLOW_TOL = 1e-7  # uL/min: flows within this of a limit count as on it


@dataclass(frozen=True)
class Parameter:
    """One controlled variable.

    Attributes:
        name: the recipe key, e.g. ``q_agno3``.
        lower, upper: the current box.
        hard_lower, hard_upper: limits never to be crossed.
        expandable: whether boundary expansion may widen the box.
        resolution: smallest meaningful difference (pump resolution); proposals
            closer than this in every coordinate count as duplicates.
        unit: for humans.
    """

    name: str
    lower: float
    upper: float
    hard_lower: float
    hard_upper: float
    expandable: bool = False
    resolution: float = 0.0
    unit: str = ""

    def __post_init__(self) -> None:
        if not (self.hard_lower <= self.lower < self.upper <= self.hard_upper):
            raise ValueError(
                f"{self.name}: need hard_lower <= lower < upper <= hard_upper, got "
                f"{self.hard_lower} <= {self.lower} < {self.upper} <= {self.hard_upper}"
            )
        if self.resolution < 0:
            raise ValueError(f"{self.name}: resolution must be >= 0")


@dataclass(frozen=True)
class LinearConstraint:
    """``sum_i coefficients[name_i] * x_i <= upper`` in physical units."""

    coefficients: Mapping[str, float]
    upper: float

    def describe(self) -> str:
        terms = []
        for name, c in self.coefficients.items():
            terms.append(name if c == 1 else f"{c:g}*{name}")
        return " + ".join(terms)


@dataclass(frozen=True)
class Channel:
    """One pump channel and how its flow (uL/min) follows from the recipe.

    ``flow = total * share / 100`` where ``share`` is the named recipe parameter
    (in % of the aqueous flow), or ``100 - sum(other shares)`` when
    ``share == "rest"``; or ``flow = total * ratio`` when ``ratio`` is set
    (e.g. the carrier oil). ``total`` is the recipe parameter holding the total
    aqueous flow. Exactly one of ``share`` and ``ratio`` is set. A "rest" flow
    is not clipped (only rounding noise below 1e-7 is set to 0): shares over
    100 % give a negative flow, which the channel's ``min_flow`` rejects.
    """

    name: str
    share: str | None = None
    ratio: float | None = None
    min_flow: float = 0.0
    max_flow: float = float("inf")

    def __post_init__(self) -> None:
        if (self.share is None) == (self.ratio is None):
            raise ValueError(f"channel {self.name}: set exactly one of share and ratio")
        if self.ratio is not None and not (0 <= self.ratio < float("inf")):
            raise ValueError(f"channel {self.name}: ratio must be finite and >= 0")
        if not (self.min_flow <= self.max_flow):
            raise ValueError(
                f"channel {self.name}: need min_flow <= max_flow, got "
                f"{self.min_flow} > {self.max_flow}"
            )


@dataclass(frozen=True)
class ChannelMap:
    """Recipe -> per-channel flows, with the pump's per-channel hard limits."""

    total: str
    channels: tuple[Channel, ...]

    def __post_init__(self) -> None:
        names = [c.name for c in self.channels]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate pump channel names in {names}")
        if sum(c.share == "rest" for c in self.channels) > 1:
            raise ValueError("at most one pump channel may take the rest of the flow")

    def flows(self, recipe: Mapping[str, float]) -> dict[str, float]:
        """Per-channel flows in uL/min for one recipe.

        >>> cm = ChannelMap("q", (Channel("a", share="s"), Channel("w", share="rest")))
        >>> cm.flows({"q": 200.0, "s": 25.0})
        {'a': 50.0, 'w': 150.0}
        """
        total = float(recipe[self.total])
        shares = [c.share for c in self.channels if c.share not in (None, "rest")]
        used = sum(float(recipe[s]) for s in shares)
        out: dict[str, float] = {}
        for c in self.channels:
            if c.ratio is not None:
                out[c.name] = total * c.ratio
            elif c.share == "rest":
                rest = total * (100.0 - used) / 100.0
                out[c.name] = 0.0 if -_FLOW_TOL < rest < 0.0 else rest
            elif c.share is not None:
                out[c.name] = total * float(recipe[c.share]) / 100.0
        return out

    def flow_matrix(self, names: Sequence[str], x: np.ndarray) -> np.ndarray:
        """Flows for each row of ``x`` (n, d) -> (n, n_channels)."""
        x = np.atleast_2d(x)
        idx = {n: i for i, n in enumerate(names)}
        total = x[:, idx[self.total]]
        used = np.zeros(len(x))
        for c in self.channels:
            if c.share not in (None, "rest"):
                used += x[:, idx[c.share]]
        cols = []
        for c in self.channels:
            if c.ratio is not None:
                cols.append(total * c.ratio)
            elif c.share == "rest":
                rest = total * (100.0 - used) / 100.0
                cols.append(np.where((rest < 0.0) & (rest > -_FLOW_TOL), 0.0, rest))
            else:
                cols.append(total * x[:, idx[c.share]] / 100.0)
        return np.stack(cols, axis=1)

    def limits(self) -> tuple[np.ndarray, np.ndarray]:
        lo = np.array([c.min_flow for c in self.channels])
        hi = np.array([c.max_flow for c in self.channels])
        return lo, hi


@dataclass(frozen=True)
class Space:
    """Parameters, the current box, hard limits, constraints and pump channels."""

    parameters: tuple[Parameter, ...]
    constraints: tuple[LinearConstraint, ...] = ()
    channels: ChannelMap | None = None
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [p.name for p in self.parameters]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate parameter names in {names}")
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(names)})
        for c in self.constraints:
            unknown = set(c.coefficients) - set(names)
            if unknown:
                raise ValueError(f"constraint names unknown parameters {sorted(unknown)}")
        if self.channels is not None:
            refs = {self.channels.total} | {
                c.share for c in self.channels.channels if c.share not in (None, "rest")
            }
            unknown = refs - set(names)
            if unknown:
                raise ValueError(f"pump channels name unknown parameters {sorted(unknown)}")

    # --- shape ------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    @property
    def dim(self) -> int:
        return len(self.parameters)

    @property
    def bounds(self) -> np.ndarray:
        """The current box, shape (2, d): row 0 lower, row 1 upper."""
        return np.array([[p.lower for p in self.parameters], [p.upper for p in self.parameters]])

    @property
    def hard_bounds(self) -> np.ndarray:
        """The hard limits, shape (2, d)."""
        return np.array(
            [[p.hard_lower for p in self.parameters], [p.hard_upper for p in self.parameters]]
        )

    @property
    def resolution(self) -> np.ndarray:
        return np.array([p.resolution for p in self.parameters])

    def index(self, name: str) -> int:
        return self._index[name]

    # --- conversions --------------------------------------------------------

    def to_array(self, recipes: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Recipes (dicts) -> array (n, d) in the order of :attr:`names`."""
        out = np.empty((len(recipes), self.dim))
        for i, r in enumerate(recipes):
            missing = set(self.names) - set(r)
            extra = set(r) - set(self.names)
            if missing or extra:
                raise ValueError(
                    f"recipe keys do not match the space: missing {sorted(missing)}, "
                    f"unknown {sorted(extra)}"
                )
            out[i] = [float(r[n]) for n in self.names]
        return out

    def to_recipes(self, x: np.ndarray) -> list[dict[str, float]]:
        """Array (n, d) -> recipes (dicts of plain floats)."""
        return [{n: float(v) for n, v in zip(self.names, row, strict=True)} for row in x]

    def to_unit(self, x: np.ndarray) -> np.ndarray:
        """Physical -> [0, 1]^d relative to the current box."""
        lo, hi = self.bounds
        return (np.asarray(x, dtype=float) - lo) / (hi - lo)

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        """[0, 1]^d relative to the current box -> physical."""
        lo, hi = self.bounds
        return lo + np.asarray(u, dtype=float) * (hi - lo)

    def constraint_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """Linear constraints as ``A x <= b`` in physical units: (m, d), (m,)."""
        a = np.zeros((len(self.constraints), self.dim))
        b = np.zeros(len(self.constraints))
        for k, c in enumerate(self.constraints):
            for name, coef in c.coefficients.items():
                a[k, self._index[name]] = coef
            b[k] = c.upper
        return a, b

    # --- feasibility --------------------------------------------------------

    def is_feasible(self, x: np.ndarray, *, in_box: bool = True) -> np.ndarray:
        """Boolean mask over rows of ``x`` (n, d): hard limits, constraints, channels,
        and (``in_box``) the current box."""
        x = np.atleast_2d(np.asarray(x, dtype=float))
        lo, hi = self.bounds if in_box else self.hard_bounds
        hlo, hhi = self.hard_bounds
        ok = np.all(np.isfinite(x), axis=1)
        ok &= np.all((x >= lo - _EPS) & (x <= hi + _EPS), axis=1)
        ok &= np.all((x >= hlo - _EPS) & (x <= hhi + _EPS), axis=1)
        # rows failing so far are out anyway; zero them so that the products below
        # raise no floating-point warnings (inf * 0, overflow)
        x = np.where(ok[:, None], x, 0.0)
        if self.constraints:
            a, b = self.constraint_matrix()
            ok &= np.all(x @ a.T <= b + 1e-7, axis=1)
        if self.channels is not None:
            f = self.channels.flow_matrix(self.names, x)
            flo, fhi = self.channels.limits()
            ok &= np.all((f >= flo - 1e-7) & (f <= fhi + 1e-7), axis=1)
        return ok

    def violations(self, recipe: Mapping[str, float], *, in_box: bool = False) -> list[str]:
        """Human-readable reasons why ``recipe`` is not allowed ([] when it is)."""
        try:
            x = self.to_array([recipe])[0]
        except (ValueError, TypeError) as exc:
            return [str(exc)]
        out = []
        for p, v in zip(self.parameters, x, strict=True):
            if not np.isfinite(v):
                out.append(f"{p.name} is not finite")
            elif v < p.hard_lower - _EPS or v > p.hard_upper + _EPS:
                out.append(
                    f"{p.name}={v:g} outside hard limits [{p.hard_lower:g}, {p.hard_upper:g}]"
                )
            elif in_box and (v < p.lower - _EPS or v > p.upper + _EPS):
                out.append(f"{p.name}={v:g} outside the box [{p.lower:g}, {p.upper:g}]")
        for c in self.constraints:
            lhs = sum(coef * x[self._index[n]] for n, coef in c.coefficients.items())
            if lhs > c.upper + 1e-7:
                out.append(f"{c.describe()} = {lhs:g} > {c.upper:g}")
        if self.channels is not None and not out:
            flows = self.channels.flows(recipe)
            for ch in self.channels.channels:
                f = flows[ch.name]
                if f < ch.min_flow - 1e-7 or f > ch.max_flow + 1e-7:
                    out.append(
                        f"channel {ch.name} flow {f:g} uL/min outside "
                        f"[{ch.min_flow:g}, {ch.max_flow:g}]"
                    )
        return out

    # --- change -------------------------------------------------------------

    def with_bounds(self, name: str, lower: float, upper: float) -> Space:
        """A new space with parameter ``name``'s box set to [lower, upper],
        clipped to its hard limits."""
        i = self._index[name]
        p = self.parameters[i]
        new = replace(
            p, lower=max(float(lower), p.hard_lower), upper=min(float(upper), p.hard_upper)
        )
        params = (*self.parameters[:i], new, *self.parameters[i + 1 :])
        return replace(self, parameters=params)
