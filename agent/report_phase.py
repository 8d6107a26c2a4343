"""The report's phase map: where the required phase forms, as the journal's labels say.

The feasibility model of the optimiser
(:func:`~agent.core.strategies.feasibility.fit_feasibility`) is fitted on the
labelled, completed conditions of the journal, over the final box; the figure
shows 2-D slices through the best recipe (the first parameter against each of
the next ones, the others held at the best recipe): top row ``P(required
phase)`` with its 0.05 / 0.5 / 0.95 contours, bottom row the posterior sd of
the latent feasibility (its uncertainty); measured labels on top of both
(projected onto the slice: circles the required phase, crosses anything else),
the best recipe as a star. The required phase is ``[phase] required`` of the
campaign file, else the best condition's phase.
"""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import torch
from matplotlib.figure import Figure

from agent.core.phase import PhaseSettings, feasible_value
from agent.core.space import Parameter, Space
from agent.core.strategies.base import Observations
from agent.core.strategies.feasibility import DTYPE, fit_feasibility
from agent.report import CampaignRecord, ConditionRow, Plot

__all__ = ["plot_phase_map"]

GRID = 40
MAX_PANELS = 4


def plot_phase_map(record: CampaignRecord) -> Plot | None:
    """The phase map, or None when no completed condition has a label (or one parameter)."""
    names = record.parameters
    rows = [c for c in record.complete if c.phase is not None]
    if not rows or len(names) < 2:
        return None
    settings = _phase_settings(record, rows)
    assert settings.required is not None
    space = _space(record, rows)
    x = np.array([[c.recipe[n] for n in names] for c in rows])
    feas = np.array([feasible_value([c.phase], settings) for c in rows])  # type: ignore[list-item]
    data = Observations(x, np.zeros(len(x)), np.full(len(x), np.nan), feasible=feas, p_floor=0.05)
    model = fit_feasibility(space, data, seed=0)
    best = _best(rows, record.best, settings)
    centre = np.array([best.recipe[n] for n in names])
    pairs = [(0, j) for j in range(1, len(names))][:MAX_PANELS]
    fig = Figure(figsize=(max(3.4 * len(pairs), 6.5), 6.4), dpi=100, layout="constrained")
    axes = fig.subplots(2, len(pairs), squeeze=False)
    lo, hi = space.bounds
    p_img = sd_img = None
    for k, (i, j) in enumerate(pairs):
        gi, gj = np.linspace(lo[i], hi[i], GRID), np.linspace(lo[j], hi[j], GRID)
        mi, mj = np.meshgrid(gi, gj)
        pts = np.repeat(centre[None, :], GRID * GRID, axis=0)
        pts[:, i], pts[:, j] = mi.ravel(), mj.ravel()
        top, bottom = axes[0, k], axes[1, k]
        if model is not None:
            u = torch.as_tensor(space.to_unit(pts), dtype=DTYPE)
            mean, sd = model.latent(u)
            p = torch.special.ndtr(mean / sd).numpy().reshape(GRID, GRID)
            p_img = top.contourf(mi, mj, p, levels=np.linspace(0, 1, 11), cmap="RdYlGn")
            cs = top.contour(mi, mj, p, levels=[0.05, 0.5, 0.95], colors="k", linewidths=0.8)
            top.clabel(cs, fmt="%.2f", fontsize=7)
            sd_img = bottom.contourf(mi, mj, sd.numpy().reshape(GRID, GRID), cmap="viridis")
        for ax in (top, bottom):
            _labels(ax, rows, names, i, j, settings)
            ax.plot(centre[i], centre[j], "*", color="gold", ms=14, mec="k", zorder=5)
            ax.set_xlabel(names[i])
            ax.set_ylabel(names[j])
            ax.set_xlim(lo[i], hi[i])
            ax.set_ylim(lo[j], hi[j])
    if p_img is not None:
        fig.colorbar(p_img, ax=axes[0, :].tolist(), label=f"P({settings.required})")
    if sd_img is not None:
        fig.colorbar(sd_img, ax=axes[1, :].tolist(), label="sd of latent feasibility")
    counts = Counter(c.phase[0] for c in rows if c.phase)  # type: ignore[index]
    measured = ", ".join(f"{k} {v}" for k, v in counts.most_common())
    fig.suptitle(f"{record.campaign_id}: phase map through {best.condition} ({measured})")
    if model is None:
        why = f"only one class among the labels ({measured}): no boundary to model yet"
    else:
        why = (
            f"classifier fitted on {model.n_feasible} {settings.required} and "
            f"{model.n_infeasible} other labels"
        )
    caption = (
        f"Predicted probability of {settings.required} (confidence >= "
        f"{settings.min_confidence:g}) on 2-D slices through {best.condition}, the others "
        f"held there; bottom: the model's uncertainty. Circles: measured {settings.required}; "
        f"crosses: another phase or too unsure; {why}."
    )
    return _plot(fig, "phase_map.png", "Phase map", caption)


def _plot(fig: Figure, name: str, title: str, caption: str) -> Plot:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return Plot(name, title, buf.getvalue(), caption)


def _phase_settings(record: CampaignRecord, rows: list[ConditionRow]) -> PhaseSettings:
    conf = (record.config or {}).get("phase") or {}
    required = conf.get("required")
    if required is None:
        best = record.best
        required = (best.phase[0] if best is not None and best.phase else None) or Counter(
            c.phase[0] for c in rows if c.phase
        ).most_common(1)[0][0]
    return PhaseSettings(required=required, min_confidence=float(conf.get("min_confidence", 0.5)))


def _space(record: CampaignRecord, rows: list[ConditionRow]) -> Space:
    params = []
    for n in record.parameters:
        vals = [c.recipe[n] for c in rows]
        lo, hi = (record.final_box or {}).get(n, (min(vals), max(vals)))
        lo, hi = min(lo, *vals), max(hi, *vals)
        if hi <= lo:
            hi = lo + 1.0
        hard = record.hard_limits.get(n, (lo, hi))
        params.append(Parameter(n, lo, hi, min(hard[0], lo), max(hard[1], hi)))
    return Space(tuple(params))


def _best(rows: list[ConditionRow], best: ConditionRow | None, s: PhaseSettings) -> ConditionRow:
    ok = [c for c in rows if c.phase and feasible_value([c.phase], s) == 1.0]
    pool = ok or rows
    if best is not None and best in pool:
        return best
    return min(pool, key=lambda c: c.median_loss if c.median_loss is not None else np.inf)


def _labels(ax, rows: list[ConditionRow], names: list[str], i: int, j: int, s: PhaseSettings):
    ok = np.array([feasible_value([c.phase], s) == 1.0 for c in rows])  # type: ignore[list-item]
    xy = np.array([[c.recipe[names[i]], c.recipe[names[j]]] for c in rows])
    ax.scatter(*xy[ok].T, marker="o", s=18, facecolors="none", edgecolors="k", lw=0.8)
    ax.scatter(*xy[~ok].T, marker="x", s=22, color="crimson", lw=1.0)
