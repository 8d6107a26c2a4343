r"""Boundary expansion: widen the search box where the optimiser keeps hitting its edge.

The rule (:class:`BoundaryExpansion`), for every *expandable* parameter and each
of its two faces that is not yet at the hard limit:

* a round *hits* a face when at least ``min_hits`` of its proposals (or all of
  them, for a smaller batch) lie within ``edge_fraction * width`` of the face,
  or when the incumbent (the best measured recipe after that round) does;
* when each of the last ``patience`` rounds hits the face, the face moves out
  by ``grow_fraction * width`` (``width = upper - lower`` of the current box),
  capped at the hard limit.

Distances are measured against the *current* box, so after a widening the
earlier rounds' proposals (now well inside) no longer count and the streak
starts afresh. The box never shrinks, never leaves the hard limits, and a face
already at its hard limit never expands (and nothing is reported for it).

The rule is a pure function of its inputs (the space and the proposal history),
so it is deterministic, replays from a journal, and tests synchronously.

>>> import numpy as np
>>> from agent.core.space import Parameter, Space
>>> space = Space((Parameter("a", 0.0, 10.0, 0.0, 40.0, expandable=True),))
>>> rounds = [np.array([[9.9], [9.8], [9.7], [5.0]])]
>>> new, records = BoundaryExpansion()(space, rounds)
>>> new.bounds[:, 0].tolist(), records[0].face
([0.0, 15.0], 'upper')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from agent.core.space import Parameter, Space

__all__ = ["BoundaryExpansion", "Expansion"]

Face = Literal["lower", "upper"]

# Faces within this fraction of the hard range of their hard limit count as at it.
_AT_LIMIT_RTOL = 1e-9


@dataclass(frozen=True)
class Expansion:
    """One widened face.

    Attributes:
        parameter: the parameter's name.
        face: "lower" or "upper".
        old_bounds, new_bounds: the box of that parameter before and after.
        reason: why, with the numbers.
    """

    parameter: str
    face: Face
    old_bounds: tuple[float, float]
    new_bounds: tuple[float, float]
    reason: str


class BoundaryExpansion:
    r"""Widen a face of the box after ``patience`` consecutive rounds at its edge.

    For face ``F`` of a parameter with current box ``[lo, hi]``,
    ``w = hi - lo`` and band ``b = edge_fraction * w``, a round hits the upper
    face when ``#{x_i >= hi - b} >= min(min_hits, batch size)`` (lower face:
    ``x_i <= lo + b``), or the round's incumbent is in the band. After
    ``patience`` hitting rounds in a row the face moves to ``hi + grow_fraction * w``
    (lower: ``lo - grow_fraction * w``), clipped to the hard limit.

    Args:
        edge_fraction: band width as a fraction of the box width (default 0.05).
        min_hits: proposals in the band that make a round hit (default 3 of a
            batch of 15: a Latin hypercube of 15 puts at most one point in a 5 %
            band, so a space-filling round never triggers by its proposals; 2
            widened more often and did no better overall in the test below).
        patience: consecutive hitting rounds needed (default 1). On a 5-D test
            in the agnp space (LP-EI, 15 random recipes then 7 rounds of 15,
            12 seeds), with the optimum outside the box patience 1 ended at a
            mean best loss of 0.25 against 0.37 for patience 2 (0.74 without
            expansion); with the optimum inside, near two faces, it cost little
            (0.015 against 0.013 for patience 2 and 0.012 without expansion)
            despite 1-3 needless widenings a run.
        grow_fraction: how far a face moves, as a fraction of the width (default 0.5).
        use_incumbent: whether an incumbent in the band makes a round hit (default True).

    Call:
        ``(space, proposals, incumbents=None) -> (new_space, expansions)`` with
        ``proposals`` the per-round proposed recipes, oldest first, each
        (m_r, d) in physical units, and ``incumbents`` (same length, optional)
        the best measured recipe (d,) after each round, or None.
    """

    def __init__(
        self,
        *,
        edge_fraction: float = 0.05,
        min_hits: int = 3,
        patience: int = 1,
        grow_fraction: float = 0.5,
        use_incumbent: bool = True,
    ) -> None:
        if not 0.0 < edge_fraction < 0.5:
            raise ValueError("edge_fraction must be in (0, 0.5)")
        if min_hits < 1 or patience < 1:
            raise ValueError("min_hits and patience must be >= 1")
        if grow_fraction <= 0.0:
            raise ValueError("grow_fraction must be > 0")
        self.edge_fraction = float(edge_fraction)
        self.min_hits = int(min_hits)
        self.patience = int(patience)
        self.grow_fraction = float(grow_fraction)
        self.use_incumbent = bool(use_incumbent)

    def __call__(
        self,
        space: Space,
        proposals: Sequence[np.ndarray],
        incumbents: Sequence[np.ndarray | None] | None = None,
    ) -> tuple[Space, tuple[Expansion, ...]]:
        """The space with the faces that qualify widened, and one record per widened face."""
        if incumbents is not None and len(incumbents) != len(proposals):
            raise ValueError(
                f"{len(incumbents)} incumbents for {len(proposals)} rounds of proposals"
            )
        if len(proposals) < self.patience:
            return space, ()
        start = len(proposals) - self.patience
        rounds = [np.atleast_2d(np.asarray(p, dtype=float)) for p in proposals[start:]]
        best: list[np.ndarray | None] = (
            [None] * self.patience
            if incumbents is None or not self.use_incumbent
            else [None if b is None else np.asarray(b, dtype=float) for b in incumbents[start:]]
        )
        for r in rounds:
            if r.size and r.shape[1] != space.dim:
                raise ValueError(f"proposals have {r.shape[1]} columns, the space {space.dim}")

        records: list[Expansion] = []
        new_space = space
        for i, p in enumerate(space.parameters):
            if not p.expandable:
                continue
            lo, hi = p.lower, p.upper
            widened: list[tuple[Face, list[tuple[bool, str]]]] = []
            for face in ("lower", "upper"):
                if _at_limit(p, face):
                    continue
                evidence = [self._hits(r, b, i, p, face) for r, b in zip(rounds, best, strict=True)]
                if not all(hit for hit, _ in evidence):
                    continue
                width = p.upper - p.lower
                if face == "upper":
                    hi = min(p.upper + self.grow_fraction * width, p.hard_upper)
                else:
                    lo = max(p.lower - self.grow_fraction * width, p.hard_lower)
                widened.append((face, evidence))
            if widened:
                new_space = new_space.with_bounds(p.name, lo, hi)
                records.extend(self._record(p, face, (lo, hi), ev) for face, ev in widened)
        return new_space, tuple(records)

    def _hits(
        self, batch: np.ndarray, incumbent: np.ndarray | None, i: int, p: Parameter, face: Face
    ) -> tuple[bool, str]:
        """Whether one round hits ``face`` of parameter ``i``, and the evidence in words."""
        band = self.edge_fraction * (p.upper - p.lower)
        col = batch[:, i] if batch.size else np.zeros(0)
        near = col >= p.upper - band if face == "upper" else col <= p.lower + band
        count, size = int(np.sum(near)), len(col)
        needed = min(self.min_hits, size) if size else self.min_hits
        words = f"{count} of {size} proposals"
        hit = size > 0 and count >= needed
        if incumbent is not None:
            v = float(incumbent[i])
            in_band = v >= p.upper - band if face == "upper" else v <= p.lower + band
            if in_band:
                words += f", incumbent at {v:g}"
                hit = True
        return hit, words

    def _record(
        self,
        p: Parameter,
        face: Face,
        new_bounds: tuple[float, float],
        evidence: list[tuple[bool, str]],
    ) -> Expansion:
        width = p.upper - p.lower
        old_face, new_face, limit = (
            (p.upper, new_bounds[1], p.hard_upper)
            if face == "upper"
            else (p.lower, new_bounds[0], p.hard_lower)
        )
        capped = new_face == limit
        rounds = "; ".join(f"round -{len(evidence) - k}: {w}" for k, (_, w) in enumerate(evidence))
        reason = (
            f"{p.name} {face} face {old_face:g} hit in {len(evidence)} consecutive round(s) "
            f"(band {self.edge_fraction:.0%} of the width = {self.edge_fraction * width:g}; "
            f"{rounds}); moved by {self.grow_fraction:.0%} of the width {width:g} "
            f"to {new_face:g}" + (f" (capped at the hard limit {limit:g})" if capped else "")
        )
        return Expansion(
            parameter=p.name,
            face=face,
            old_bounds=(float(p.lower), float(p.upper)),
            new_bounds=(float(new_bounds[0]), float(new_bounds[1])),
            reason=reason,
        )


def _at_limit(p: Parameter, face: Face) -> bool:
    """Whether ``face`` of ``p`` already sits at its hard limit."""
    tol = _AT_LIMIT_RTOL * max(1.0, p.hard_upper - p.hard_lower)
    if face == "upper":
        return p.upper >= p.hard_upper - tol
    return p.lower <= p.hard_lower + tol
