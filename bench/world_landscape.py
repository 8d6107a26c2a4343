"""Landscape of a simulated world: the best loss in the initial box and within the hard limits.

For the campaign file's search space (initial box, hard limits, linear
constraints, recipe -> pump-channel mapping) and target, this finds the lowest
noise-free loss (``agnp_loss`` of the model's mean spectrum) in four regions:

- ``box``: the initial box (where round 1 and the first BO rounds search);
- ``hard``: the hard limits (where boundary expansion may lead);
- ``hard, Ag-fcc``: the hard limits, right phase only (what a phase-aware
  campaign can reach);
- ``hard, Ag2O``: the hard limits, wrong phase only (what a phase-blind
  campaign may report instead).

Each region: differential evolution (scipy, Sobol initialisation, the linear
constraints as a ``LinearConstraint``, the phase as a penalty) from a few
seeds, then an SLSQP polish. Printed per region: loss, recipe, peak wavelength
and absorbance of the mean spectrum, XRD phase and confidence. ``--plot``
draws loss slices through the optimum (docs/world.md shows them).

    python bench/world_landscape.py
    python bench/world_landscape.py --model mypkg.mod:my_world --plot /tmp/l.png
    python bench/world_landscape.py --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import LinearConstraint, differential_evolution, minimize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.core.objective import agnp_loss  # noqa: E402
from drivers.world import ForwardModel, load_model  # noqa: E402

__all__ = ["Landscape", "Optimum", "main"]

WRONG_PHASE = "Ag2O"
RIGHT_PHASE = "Ag-fcc"


@dataclass(frozen=True)
class Optimum:
    """The best recipe found in one region."""

    region: str
    loss: float
    recipe: dict[str, float]
    peak_nm: float
    peak_absorbance: float
    phase: str
    confidence: float


class Landscape:
    """A campaign file's space and target over a forward model.

    Args:
        campaign: path to the campaign TOML (parameters, constraints, pump, objective).
        model: the forward model.
    """

    def __init__(self, campaign: Path, model: ForwardModel) -> None:
        cfg = tomllib.loads(campaign.read_text())
        self.model = model
        self.names = [p["name"] for p in cfg["parameters"]]
        self.box = np.array([p["bounds"] for p in cfg["parameters"]], dtype=float)
        self.hard = np.array([p["hard_limits"] for p in cfg["parameters"]], dtype=float)
        self.a_ub = np.array(
            [
                [c["coefficients"].get(n, 0.0) for n in self.names]
                for c in cfg.get("constraints", [])
            ]
        ).reshape(-1, len(self.names))
        self.b_ub = np.array([c["upper"] for c in cfg.get("constraints", [])], dtype=float)
        self.pump = cfg["pump"]
        obj = cfg["objective"]
        self.wl = np.arange(obj["wl_start"], obj["wl_stop"] + obj["wl_step"] / 2, obj["wl_step"])
        data = np.loadtxt(campaign.parent / obj["target"], delimiter=",", skiprows=1)
        self.target = np.interp(self.wl, data[:, 0], data[:, 1])
        self.low = float(obj.get("amplitude_low", 0.7))
        self.high = float(obj.get("amplitude_high", 1.2))

    def flows(self, x: np.ndarray) -> dict[str, float]:
        """Pump flows (uL/min) for a recipe, as the campaign's [pump] table maps them."""
        rec = dict(zip(self.names, (float(v) for v in x), strict=True))
        total = rec[self.pump["total"]]
        out: dict[str, float] = {}
        for ch in self.pump["channels"]:
            if "ratio" in ch:
                out[ch["name"]] = total * float(ch["ratio"])
            elif ch.get("share") != "rest":
                out[ch["name"]] = total * rec[ch["share"]] / 100.0
        shared = sum(
            out[ch["name"]] for ch in self.pump["channels"] if ch.get("share") not in (None, "rest")
        )
        for ch in self.pump["channels"]:
            if ch.get("share") == "rest":
                out[ch["name"]] = max(total - shared, 0.0)
        return out

    def loss(self, x: np.ndarray) -> float:
        """Noise-free loss of a recipe."""
        s = self.model.spectrum(self.flows(x), self.wl)
        return float(agnp_loss(s, self.target, self.low, self.high))

    def describe(self, region: str, x: np.ndarray) -> Optimum:
        """Loss, peak and phase of a recipe."""
        f = self.flows(x)
        s = self.model.spectrum(f, self.wl)
        phase, conf = self.model.phase(f)
        return Optimum(
            region=region,
            loss=float(agnp_loss(s, self.target, self.low, self.high)),
            recipe={n: round(float(v), 2) for n, v in zip(self.names, x, strict=True)},
            peak_nm=float(self.wl[int(np.argmax(s))]),
            peak_absorbance=float(s.max()),
            phase=phase,
            confidence=float(conf),
        )

    def best(
        self, bounds: np.ndarray, phase: str | None = None, seeds: int = 3, maxiter: int = 120
    ) -> np.ndarray:
        """Lowest-loss recipe in ``bounds`` under the constraints (and phase, if given)."""

        def f(x: np.ndarray) -> float:
            val = self.loss(x)
            if phase is not None and self.model.phase(self.flows(x))[0] != phase:
                val += 1.0
            return val

        cons = (LinearConstraint(self.a_ub, -np.inf, self.b_ub),) if self.b_ub.size else ()
        best_x, best_f = None, np.inf
        for seed in range(seeds):
            r = differential_evolution(
                f, bounds, constraints=cons, seed=seed, popsize=15, maxiter=maxiter,
                tol=1e-8, init="sobol", polish=False,
            )  # fmt: skip
            if r.fun < best_f:
                best_x, best_f = r.x, r.fun
        assert best_x is not None
        return self._polish(f, best_x, bounds)

    def _polish(
        self, f: Callable[[np.ndarray], float], x0: np.ndarray, bounds: np.ndarray
    ) -> np.ndarray:
        """SLSQP in unit-scaled coordinates; kept only if it improves and stays feasible."""
        lo, span = bounds[:, 0], bounds[:, 1] - bounds[:, 0]
        cons = [
            {"type": "ineq", "fun": lambda u, a=a, b=b: b - a @ (lo + u * span)}
            for a, b in zip(self.a_ub, self.b_ub, strict=True)
        ]
        r = minimize(
            lambda u: f(lo + u * span), (x0 - lo) / span, method="SLSQP",
            bounds=[(0.0, 1.0)] * len(lo), constraints=cons, options={"maxiter": 200},
        )  # fmt: skip
        x1 = lo + np.clip(r.x, 0.0, 1.0) * span
        feasible = not self.b_ub.size or bool(np.all(self.a_ub @ x1 <= self.b_ub + 1e-9))
        return x1 if feasible and f(x1) < f(x0) else x0

    def _reach(self, x: np.ndarray, i: int) -> float:
        """How far parameter ``i`` may go with the others at ``x`` (hard limit, constraints)."""
        top = self.hard[i, 1]
        for a, b in zip(self.a_ub, self.b_ub, strict=True):
            if a[i] > 0:
                top = min(top, (b - a @ x + a[i] * x[i]) / a[i])
        return float(max(top, self.hard[i, 0] + 1e-6))

    def plot(self, path: Path, opt: np.ndarray, box_opt: np.ndarray, n: int = 61) -> None:
        """Loss slices through ``opt`` (box dashed, wrong phase hatched) and the spectra."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        idx = {name: i for i, name in enumerate(self.names)}
        pairs = [("q_agno3", "q_seed"), ("q_tsc", "q_seed"), ("q_agno3", "q_tsc"),
                 ("q_agno3", "q_pva"), ("q_tot", "q_agno3")]  # fmt: skip
        pairs = [(a, b) for a, b in pairs if a in idx and b in idx]
        fig, axes = plt.subplots(2, 3, figsize=(15, 9.5))
        for ax, (xa, ya) in zip(axes.flat, pairs, strict=False):
            i, j = idx[xa], idx[ya]
            xs = np.linspace(self.hard[i, 0], self._reach(opt, i), n)
            ys = np.linspace(self.hard[j, 0], self._reach(opt, j), n)
            loss = np.full((n, n), np.nan)
            wrong = np.zeros((n, n))
            for a, xv in enumerate(xs):
                for b, yv in enumerate(ys):
                    x = opt.copy()
                    x[i], x[j] = xv, yv
                    if self.b_ub.size and np.any(self.a_ub @ x > self.b_ub):
                        continue
                    loss[b, a] = self.loss(x)
                    wrong[b, a] = self.model.phase(self.flows(x))[0] == WRONG_PHASE
            cs = ax.contourf(xs, ys, loss, levels=np.linspace(0, 1, 21), cmap="viridis_r")
            ax.contour(xs, ys, loss, levels=[0.1, 0.25, 0.5], colors="w", linewidths=0.7)
            if wrong.any():
                ax.contourf(xs, ys, wrong, levels=[0.5, 1.5], colors="none", hatches=["//"])
                ax.contour(xs, ys, wrong, levels=[0.5], colors="r", linewidths=1.2)
            ax.add_patch(
                plt.Rectangle(
                    (self.box[i, 0], self.box[j, 0]), self.box[i, 1] - self.box[i, 0],
                    self.box[j, 1] - self.box[j, 0], fill=False, ls="--", color="k",
                )
            )  # fmt: skip
            ax.plot(opt[i], opt[j], "r*", ms=14)
            ax.set_xlabel(xa)
            ax.set_ylabel(ya)
            ax.set_title(f"loss, others at the optimum ({xa} x {ya})", fontsize=9)
            fig.colorbar(cs, ax=ax, shrink=0.8)
        ax = axes.flat[len(pairs)]
        ax.plot(self.wl, self.target, "k", lw=2, label="target")
        for label, x in (("best in box", box_opt), ("global best", opt)):
            d = self.describe(label, x)
            ax.plot(self.wl, self.model.spectrum(self.flows(x), self.wl),
                    label=f"{label}: loss {d.loss:.3f}")  # fmt: skip
        ax.set_xlabel("wavelength (nm)")
        ax.set_ylabel("absorbance")
        ax.legend(fontsize=8)
        fig.suptitle("Loss landscape (red star: global best; dashed: initial box; hatched: Ag2O)")
        fig.tight_layout()
        fig.savefig(path, dpi=90)


def time_spectrum(model: ForwardModel, flows: Mapping[str, float], wl: np.ndarray) -> float:
    """Mean wall time of one ``spectrum`` call, in ms."""
    model.spectrum(flows, wl)
    n, t0 = 300, time.perf_counter()
    for _ in range(n):
        model.spectrum(flows, wl)
    return (time.perf_counter() - t0) / n * 1e3


def main(argv: list[str] | None = None) -> int:
    """Run the landscape search and print (or dump as JSON) the optima."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--campaign", type=Path, default=ROOT / "examples" / "agnp.toml")
    ap.add_argument("--model", default="drivers.world:agnp_world", help="module:callable")
    ap.add_argument("--seed", type=int, default=0, help="passed to the model factory")
    ap.add_argument("--restarts", type=int, default=3, help="DE runs per region")
    ap.add_argument("--quick", action="store_true", help="one short DE run per region")
    ap.add_argument("--plot", type=Path, default=None, help="write loss slices (PNG)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)

    land = Landscape(args.campaign, load_model(args.model, seed=args.seed))
    seeds, maxiter = (1, 40) if args.quick else (args.restarts, 150)
    t0 = time.perf_counter()
    xs = {
        "box": land.best(land.box, None, seeds, maxiter),
        "hard": land.best(land.hard, None, seeds, maxiter),
        f"hard, {RIGHT_PHASE}": land.best(land.hard, RIGHT_PHASE, seeds, maxiter),
        f"hard, {WRONG_PHASE}": land.best(land.hard, WRONG_PHASE, seeds, maxiter),
    }
    rows = [land.describe(k, x) for k, x in xs.items()]
    ms = time_spectrum(land.model, land.flows(xs["hard"]), land.wl)
    if args.json:
        print(json.dumps({"optima": [r.__dict__ for r in rows], "spectrum_ms": ms}, indent=2))
    else:
        took = time.perf_counter() - t0
        print(f"model {args.model}  campaign {args.campaign.name}  search {took:.0f} s")
        head = f"{'region':<14} {'loss':>6}  {'peak nm':>7} {'A_max':>6}  {'phase':<7} {'conf':>5}"
        print(head + "  recipe")
        for r in rows:
            rec = " ".join(f"{k}={v:g}" for k, v in r.recipe.items())
            print(
                f"{r.region:<14} {r.loss:6.3f}  {r.peak_nm:7.0f} {r.peak_absorbance:6.3f}  "
                f"{r.phase:<7} {r.confidence:5.2f}  {rec}"
            )
        print(f"one spectrum call ({land.wl.size} wavelengths): {ms:.2f} ms")
    if args.plot is not None:
        land.plot(args.plot, xs["hard"], xs["box"])
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
