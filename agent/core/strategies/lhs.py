"""The initial design: a Latin hypercube inside the box that respects the constraints.

:class:`LatinHypercube` proposes ``n`` recipes in the current box that satisfy
:meth:`~agent.core.space.Space.is_feasible` (box, hard limits, linear
constraints, pump channel limits) and are *separated*: no two proposals, and no
proposal and an already observed recipe, are closer than ``space.resolution``
in every coordinate (``|x_k - y_k| < res_k`` for all ``k`` makes a duplicate).

A design ``U`` (n, d) in the unit cube is *Latin* when each column holds one
point in each stratum ``[i/n, (i+1)/n)``; recipes are ``lo + U * (hi - lo)``.
The algorithm, deterministic given the generator:

1. Feasible pool: a scrambled Sobol' sample of 2^12 points of the box (2^16 if
   none is feasible). No feasible point -> :class:`StrategyError` naming the
   rules that exclude the box. Its feasible fraction goes in the notes.
2. Tries, at most ``max_tries``: draw an LHS design
   (``scipy.stats.qmc.LatinHypercube``, seeded from the generator). Rows that
   are infeasible or duplicates are *bad*. Bad rows are repaired by swapping a
   bad row's value in one column with another row's value in that column: a
   swap keeps every column's set of values, hence the Latin property, and is
   kept only if the number of bad rows drops. (All ``d * (n - 1)`` swaps of a
   bad row are evaluated at once; a budget of ``20 * n`` repair steps is
   shared by all tries.) The first design with no bad row is taken.
3. ``optimization="random-cd"``: the taken design is improved as scipy's
   random-cd does (swap two values within one column, keep the swap if the
   centred discrepancy ``CD`` falls), except that a swap is also kept only if
   the rows stay feasible and separated. Batches of 16 random swaps are scored
   at a time; it stops after 8 batches without improvement or 400 batches.
   (scipy's own optimiser ignores constraints and costs ~0.15 s per draw, too
   much to pay at every try.)
4. Fallback, if no try succeeds: keep the try with the fewest bad rows, keep
   its good rows, and replace each bad row, one at a time, by the feasible
   pool point farthest (Euclidean, unit box) from all kept rows, points already
   chosen and observed recipes, skipping points that would be duplicates
   (greedy maximin). If the 2^12 pool runs out, a 2^16 pool is used; if that
   runs out too, :class:`StrategyError`. The batch notes say ``latin=False``.

>>> from agent.core.space import Parameter, Space
>>> from agent.core.strategies.base import Observations
>>> space = Space((Parameter("a", 0, 1, 0, 1), Parameter("b", 0, 1, 0, 1)))
>>> batch = LatinHypercube().propose(space, Observations.empty(2), 4, np.random.default_rng(0))
>>> batch.x.shape, batch.strategy, batch.notes["latin"]
((4, 2), ('lhs', 'lhs', 'lhs', 'lhs'), True)
>>> sorted(np.floor(batch.x[:, 0] * 4).astype(int).tolist())
[0, 1, 2, 3]
"""

from __future__ import annotations

import numpy as np
from scipy.stats import qmc

from agent.core.space import Space
from agent.core.strategies.base import Batch, Observations, Strategy, StrategyError

__all__ = ["LatinHypercube"]

_POOL_LOG2 = 12  # 4096-point feasibility pool
_BIG_POOL_LOG2 = 16  # 65536 when the small one is not enough
_REPAIR_STEPS_PER_ROW = 20
_CD_BATCH = 16
_CD_NOCHANGE = 8
_CD_ITERS = 400


class LatinHypercube(Strategy):
    """A constrained, separated Latin hypercube design (see the module docstring).

    Args:
        optimization: ``"random-cd"`` to lower the centred discrepancy by
            constraint-respecting column swaps, or None.
        max_tries: LHS designs drawn before falling back to pool points.
    """

    name = "lhs"
    reads_spectra = False

    def __init__(self, *, optimization: str | None = "random-cd", max_tries: int = 200) -> None:
        if optimization not in (None, "random-cd"):
            raise ValueError(f"optimization must be 'random-cd' or None, got {optimization!r}")
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries}")
        self.optimization = optimization
        self.max_tries = int(max_tries)

    def __repr__(self) -> str:
        return f"LatinHypercube(optimization={self.optimization!r}, max_tries={self.max_tries})"

    def propose(self, space: Space, data: Observations, n: int, rng: np.random.Generator) -> Batch:
        """``n`` feasible, separated recipes in the current box, shape (n, d).

        Raises:
            StrategyError: ``n < 0``, the box holds no feasible point, or not
                enough separated feasible points could be found.
        """
        if n < 0:
            raise StrategyError(f"cannot propose {n} recipes")
        d = space.dim
        if n == 0:
            return Batch(x=np.zeros((0, d)), strategy=(), notes={"latin": True})
        seed_design, seed_pool, seed_swap = (int(s) for s in rng.integers(0, 2**62, size=3))
        res = space.resolution
        observed = np.asarray(data.x, dtype=float).reshape(-1, d) if len(data) else np.zeros((0, d))
        pool = _Pool(space, seed_pool)
        frac = pool.feasible_fraction()  # raises when the box holds no feasible point
        notes: dict[str, object] = {
            "optimization": self.optimization,
            "feasible_fraction": round(frac, 6),
        }

        engine = qmc.LatinHypercube(d, optimization=None, rng=np.random.default_rng(seed_design))
        swap_rng = np.random.default_rng(seed_swap)
        budget = [_REPAIR_STEPS_PER_ROW * n]
        best_u, best_bad = None, None
        for t in range(1, self.max_tries + 1):
            u = engine.random(n)
            bad = _bad_rows(space, u, observed, res)
            if bad.any() and budget[0] > 0:
                u, bad = _repair(space, u, bad, observed, res, swap_rng, budget)
            if not bad.any():
                if self.optimization == "random-cd":
                    u = _optimise_cd(space, u, observed, res, swap_rng)
                notes.update(latin=True, tries=t, replaced=0, discrepancy=_cd(u))
                return _batch(space, u, self.name, notes)
            if best_bad is None or bad.sum() < best_bad.sum():
                best_u, best_bad = u, bad

        assert best_u is not None and best_bad is not None
        u = _fill(space, best_u, best_bad, observed, res, pool)
        k = int(best_bad.sum())
        notes.update(
            latin=False,
            tries=self.max_tries,
            replaced=k,
            discrepancy=_cd(u),
            fallback=(
                f"no feasible separated Latin design in {self.max_tries} tries; kept the best "
                f"({n - k} of {n} rows) and replaced {k} by maximin points of a feasible pool"
            ),
        )
        return _batch(space, u, self.name, notes)


# --- private helpers ---------------------------------------------------------


class _Pool:
    """Scrambled Sobol' points of the box (unit coordinates), feasible ones only."""

    def __init__(self, space: Space, seed: int) -> None:
        self._space = space
        self._seed = seed
        self._cache: dict[int, np.ndarray] = {}

    def feasible(self, log2: int) -> np.ndarray:
        if log2 not in self._cache:
            sobol = qmc.Sobol(self._space.dim, rng=np.random.default_rng(self._seed))
            u = sobol.random_base2(log2)
            self._cache[log2] = u
        u = self._cache[log2]
        return u[self._space.is_feasible(self._space.from_unit(u))]

    def feasible_fraction(self) -> float:
        small = self.feasible(_POOL_LOG2)
        if len(small):
            return len(small) / 2**_POOL_LOG2
        big = self.feasible(_BIG_POOL_LOG2)
        if len(big):
            return len(big) / 2**_BIG_POOL_LOG2
        raise StrategyError(
            f"no feasible recipe in {2**_BIG_POOL_LOG2} samples of the box "
            f"{_describe_box(self._space)}: {_exclusion_summary(self._space, self._cache)}"
        )


def _batch(space: Space, u: np.ndarray, name: str, notes: dict[str, object]) -> Batch:
    x = space.from_unit(u)
    return Batch(x=x, strategy=(name,) * len(x), notes=notes)


def _close(a: np.ndarray, b: np.ndarray, res: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) mask: closer than ``res`` in every coordinate."""
    if len(a) == 0 or len(b) == 0 or not np.all(res > 0):
        return np.zeros((len(a), len(b)), dtype=bool)
    return np.all(np.abs(a[:, None, :] - b[None, :, :]) < res, axis=2)


def _bad_rows(space: Space, u: np.ndarray, observed: np.ndarray, res: np.ndarray) -> np.ndarray:
    """Rows that are infeasible, duplicate an observed recipe, or duplicate an
    earlier good row."""
    x = space.from_unit(u)
    bad = ~space.is_feasible(x)
    if not np.all(res > 0):
        return bad
    if len(observed):
        bad |= _close(x, observed, res).any(axis=1)
    close = _close(x, x, res)
    for i in range(len(x)):
        if not bad[i]:
            bad[i + 1 :] |= close[i, i + 1 :]
    return bad


def _repair(
    space: Space,
    u: np.ndarray,
    bad: np.ndarray,
    observed: np.ndarray,
    res: np.ndarray,
    rng: np.random.Generator,
    budget: list[int],
) -> tuple[np.ndarray, np.ndarray]:
    """Fix bad rows by within-column swaps (keeps the Latin property).

    A pass visits each bad row once, in random order; for row ``i`` every swap
    ``(k, j)`` of ``u[i, k]`` and ``u[j, k]`` is scored, one that makes row
    ``i`` feasible without making a good row ``j`` infeasible is drawn (one that
    also fixes a bad ``j`` preferred), and kept if the count of bad rows drops.
    Passes repeat while they fix something; each row visit costs one unit of
    the shared ``budget``.
    """
    n, d = u.shape
    if n < 2:
        return u, bad
    u = u.copy()
    progress = True
    while progress and bad.any() and budget[0] > 0:
        progress = False
        for i in rng.permutation(np.flatnonzero(bad)):
            if not bad[i] or budget[0] <= 0:
                continue
            budget[0] -= 1
            js = np.array([j for j in range(n) if j != i])
            jj = np.tile(js, d)  # candidate c swaps column kk[c] of rows i and jj[c]
            kk = np.repeat(np.arange(d), n - 1)
            new_i = np.repeat(u[i][None, :], len(jj), axis=0)
            new_j = u[jj].copy()
            c = np.arange(len(jj))
            new_i[c, kk] = u[jj, kk]
            new_j[c, kk] = u[i, kk]
            feas = space.is_feasible(space.from_unit(np.vstack([new_i, new_j])))
            fi, fj = feas[: len(jj)], feas[len(jj) :]
            ok = fi & (fj | bad[jj])
            both = ok & fj & bad[jj]
            choice = np.flatnonzero(both) if both.any() else np.flatnonzero(ok)
            if len(choice) == 0:
                continue
            pick = int(rng.choice(choice))
            trial = u.copy()
            trial[i], trial[jj[pick]] = new_i[pick], new_j[pick]
            trial_bad = _bad_rows(space, trial, observed, res)
            if trial_bad.sum() < bad.sum():
                u, bad, progress = trial, trial_bad, True
    return u, bad


def _optimise_cd(
    space: Space,
    u: np.ndarray,
    observed: np.ndarray,
    res: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Constrained random-cd: within-column swaps kept when ``CD`` falls and the
    rows stay feasible and separated."""
    n, d = u.shape
    if n < 2:
        return u
    best = _cd(u)
    nochange = 0
    b = np.arange(_CD_BATCH)
    for _ in range(_CD_ITERS):
        ks = rng.integers(d, size=_CD_BATCH)
        ii = rng.integers(n, size=_CD_BATCH)
        jj = (ii + rng.integers(1, n, size=_CD_BATCH)) % n
        new_i, new_j = u[ii].copy(), u[jj].copy()
        new_i[b, ks] = u[jj, ks]
        new_j[b, ks] = u[ii, ks]
        feas = space.is_feasible(space.from_unit(np.vstack([new_i, new_j])))
        ok = feas[:_CD_BATCH] & feas[_CD_BATCH:]
        cand_best, cand_u = best, None
        for c in np.flatnonzero(ok):
            trial = u.copy()
            trial[ii[c]], trial[jj[c]] = new_i[c], new_j[c]
            value = _cd(trial)
            if value < cand_best:
                cand_best, cand_u = value, trial
        if cand_u is not None and not _bad_rows(space, cand_u, observed, res).any():
            u, best, nochange = cand_u, cand_best, 0
        else:
            nochange += 1
            if nochange >= _CD_NOCHANGE:
                break
    return u


def _cd(u: np.ndarray) -> float:
    """Centred L2 discrepancy of a unit design (scipy's ``method="CD"``)."""
    return float(qmc.discrepancy(np.clip(u, 0.0, 1.0), method="CD"))


def _fill(
    space: Space,
    u: np.ndarray,
    bad: np.ndarray,
    observed: np.ndarray,
    res: np.ndarray,
    pool: _Pool,
) -> np.ndarray:
    """Replace bad rows by greedy-maximin feasible pool points (module docstring, 4)."""
    n_bad = int(bad.sum())
    anchors_u = np.vstack([u[~bad], space.to_unit(observed)]) if len(observed) else u[~bad]
    anchors_x = space.from_unit(anchors_u)
    for log2 in (_POOL_LOG2, _BIG_POOL_LOG2):
        cand_u = pool.feasible(log2)
        cand_x = space.from_unit(cand_u)
        usable = ~_close(cand_x, anchors_x, res).any(axis=1)
        if len(anchors_u):
            dmin = np.min(np.linalg.norm(cand_u[:, None] - anchors_u[None], axis=2), axis=1)
        else:
            dmin = np.full(len(cand_u), np.inf)
        dmin = np.where(usable, dmin, -np.inf)
        picks: list[int] = []
        for _ in range(n_bad):
            c = int(np.argmax(dmin)) if len(dmin) else -1
            if c < 0 or dmin[c] == -np.inf:
                break
            picks.append(c)
            dmin = np.minimum(dmin, np.linalg.norm(cand_u - cand_u[c], axis=1))
            dmin[_close(cand_x, cand_x[c : c + 1], res)[:, 0]] = -np.inf
            dmin[c] = -np.inf
        if len(picks) == n_bad:
            out = u.copy()
            out[bad] = cand_u[picks]
            return out
    raise StrategyError(
        f"the feasible part of the box {_describe_box(space)} is too small for "
        f"{len(u)} recipes separated by the resolution {space.resolution.tolist()}"
    )


def _describe_box(space: Space) -> str:
    return ", ".join(f"{p.name} [{p.lower:g}, {p.upper:g}]" for p in space.parameters)


def _exclusion_summary(space: Space, pools: dict[int, np.ndarray]) -> str:
    """Which rules reject how much of the sampled box, e.g. for an error message."""
    u = pools[max(pools)]
    x = space.from_unit(u)
    parts = []
    hlo, hhi = space.hard_bounds
    outside = ~np.all((x >= hlo - 1e-9) & (x <= hhi + 1e-9), axis=1)
    if outside.any():
        parts.append(f"outside the hard limits {outside.mean():.0%}")
    if space.constraints:
        a, b = space.constraint_matrix()
        lhs = x @ a.T
        for k, c in enumerate(space.constraints):
            parts.append(
                f"{c.describe()} <= {c.upper:g} fails for {np.mean(lhs[:, k] > b[k] + 1e-7):.0%}"
            )
    if space.channels is not None:
        f = space.channels.flow_matrix(space.names, x)
        flo, fhi = space.channels.limits()
        for k, ch in enumerate(space.channels.channels):
            fail = np.mean((f[:, k] < flo[k] - 1e-7) | (f[:, k] > fhi[k] + 1e-7))
            if fail > 0:
                parts.append(
                    f"channel {ch.name} flow within [{ch.min_flow:g}, {ch.max_flow:g}] uL/min "
                    f"fails for {fail:.0%}"
                )
    return "; ".join(parts) if parts else "no rule singled out"
