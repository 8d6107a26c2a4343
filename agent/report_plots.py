"""The report's plots, drawn with matplotlib's Agg renderer into PNG bytes.

Each ``plot_*`` function takes a :class:`~agent.report.CampaignRecord` and
returns a :class:`~agent.report.Plot`. Figures are built with
:class:`matplotlib.figure.Figure` directly, never through ``pyplot``: no GUI
backend, no global figure state, nothing left open. ``docs/report.md`` says how
to read each one.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from agent.explain import importance_figure
from agent.report import CampaignRecord, ConditionRow, Plot
from agent.report_phase import plot_phase_map

__all__ = [
    "draw_all",
    "plot_best_loss",
    "plot_importance",
    "plot_parameters",
    "plot_replicates",
    "plot_spectra",
]

DPI = 100
N_BEST_SPECTRA = 4
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def draw_all(record: CampaignRecord) -> list[Plot]:
    """Every plot the record has data for (input importance only when the record has it)."""
    plots: list[Callable[[CampaignRecord], Plot]] = [
        plot_best_loss,
        plot_spectra,
        plot_parameters,
        plot_replicates,
    ]
    if record.importance is not None and record.importance_inputs:
        plots.append(plot_importance)
    out = [p(record) for p in plots]
    phase_map = plot_phase_map(record)  # None without phase labels
    return out if phase_map is None else [*out, phase_map]


def plot_best_loss(record: CampaignRecord) -> Plot:
    """Best median loss so far against the number of conditions measured."""
    fig = Figure(figsize=(8.0, 4.2), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    done = record.complete
    style = _styles(record)
    if not done:
        _empty(ax, "no condition completed yet")
    else:
        n = np.arange(1, len(done) + 1)
        losses = np.array([c.median_loss for c in done], dtype=float)
        best = np.minimum.accumulate(losses)
        ax.step(n, best, where="post", color="black", lw=1.6, label="best so far", zorder=3)
        for tag in record.strategies:
            idx = [i for i, c in enumerate(done) if c.strategy == tag]
            if not idx:
                continue
            colour, marker = style[tag]
            ax.scatter(
                n[idx], losses[idx], color=colour, marker=marker, s=22, alpha=0.45,
                label=f"{tag} (each condition)",
            )  # fmt: skip
            new_best = [
                i for i in idx if losses[i] <= best[i] and (i == 0 or best[i] < best[i - 1])
            ]
            ax.scatter(
                n[new_best], losses[new_best], color=colour, marker=marker, s=70,
                edgecolor="black", zorder=4, label=f"{tag}: new best",
            )  # fmt: skip
        _round_edges(ax, [c.round for c in done])
        ax.set_xlim(0.5, len(done) + 0.5)
        ax.legend(loc="upper right", fontsize=8, ncols=2)
        ax.annotate(
            f"best {best[-1]:.4f}",
            (n[-1], best[-1]),
            xytext=(-8, 10),
            textcoords="offset points",
            ha="right",
            fontsize=9,
        )
    ax.set_xlabel("conditions measured (in the order they finished)")
    ax.set_ylabel("median loss (lower is better)")
    ax.set_title(f"{record.campaign_id}: best loss so far")
    ax.grid(alpha=0.3)
    return _plot(
        fig,
        "best_loss.png",
        "Best loss against conditions measured",
        "Black steps: the lowest median loss after each condition. Markers: each condition's "
        "median loss, by the strategy that proposed it; large markers set a new best. Dotted "
        "lines separate rounds.",
    )


def plot_spectra(record: CampaignRecord) -> Plot:
    """Median spectra of the best conditions against the target."""
    fig = Figure(figsize=(8.0, 4.2), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    best = sorted(
        (c for c in record.complete if c.median_spectrum is not None),
        key=lambda c: c.median_loss or math.inf,
    )[:N_BEST_SPECTRA]
    wl = record.wavelengths
    if record.target is not None:
        ax.plot(
            record.target.wavelengths, record.target.values, color="black", lw=2.2, ls="--",
            label="target",
        )  # fmt: skip
    for i, c in enumerate(best):
        spec = c.median_spectrum
        assert spec is not None
        x = wl if wl is not None and len(wl) == len(spec) else np.arange(len(spec))
        ax.plot(
            x, spec, color=_COLOURS[i % len(_COLOURS)], lw=1.4,
            label=f"{c.condition} ({c.strategy}): loss {c.median_loss:.4f}",
        )  # fmt: skip
    if not best and record.target is None:
        _empty(ax, "no median spectrum and no target in this journal")
    elif not best:
        _empty(ax, "no condition completed yet")
    title = f"median spectra of the best {len(best)} conditions"
    if record.target is None:
        title += " (target not in this journal)"
    ax.set_title(title)
    ax.set_xlabel("wavelength (nm)" if wl is not None else "grid point")
    ax.set_ylabel("absorbance")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _plot(
        fig,
        "spectra.png",
        "Best conditions against the target",
        "The elementwise median of each best condition's used replicate spectra, against the "
        "target spectrum (dashed) on the campaign's wavelength grid.",
    )


def plot_parameters(record: CampaignRecord) -> Plot:
    """Each parameter against condition index, inside the search box of its round."""
    names = record.parameters
    fig = Figure(figsize=(8.0, 1.55 * len(names) + 0.9), dpi=DPI, layout="constrained")
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    conds = record.conditions
    style = _styles(record)
    best = record.best
    starts = _round_starts(conds)
    for ax, name in zip(axes, names, strict=True):
        seen: list[float] = [c.recipe[name] for c in conds if name in c.recipe]
        if record.boxes and starts:
            xs, lo, hi = _box_steps(record, name, starts, len(conds))
            ax.fill_between(xs, lo, hi, step="post", color="#d9d9d9", alpha=0.6, lw=0)
            ax.step(xs, lo, where="post", color="#525252", lw=1.1)
            ax.step(xs, hi, where="post", color="#525252", lw=1.1)
            seen += [v for v in lo + hi if math.isfinite(v)]
        for tag in record.strategies:
            pts = [c for c in conds if c.strategy == tag and name in c.recipe]
            colour, marker = style[tag]
            ax.scatter(
                [c.index for c in pts], [c.recipe[name] for c in pts], s=16, color=colour,
                marker=marker, label=tag, zorder=3,
            )  # fmt: skip
        if best is not None and name in best.recipe:
            ax.scatter(
                [best.index], [best.recipe[name]], marker="*", s=180, color="gold",
                edgecolor="black", zorder=4, label=f"best ({best.condition})",
            )  # fmt: skip
        for w in record.widenings:
            if w.parameter == name:
                x = _after_round(starts, w.round, len(conds))
                face = 0 if w.face == "lower" else 1
                ax.annotate(
                    "", xy=(x, w.new[face]), xytext=(x, w.old[face]),
                    arrowprops={"arrowstyle": "->", "color": "#e6550d", "lw": 1.5},
                )  # fmt: skip
        if seen:  # zoom on the box and the recipes; a hard limit far away would flatten them
            lo_v, hi_v = min(seen), max(seen)
            pad = 0.08 * (hi_v - lo_v or abs(hi_v) or 1.0)
            ax.set_ylim(lo_v - pad, hi_v + pad)
        for v in record.hard_limits.get(name, ()):
            if seen and min(seen) - 1e-9 <= v <= max(seen) + 1e-9:
                ax.axhline(v, color="#e6550d", lw=0.9, ls="--")
        unit = record.units.get(name, "")
        ax.set_ylabel(f"{name}\n({unit})" if unit else name, fontsize=9)
        ax.grid(alpha=0.3)
    if not conds:
        _empty(axes[0], "no condition proposed yet")
    axes[-1].set_xlabel("condition (in proposal order)")
    if conds:
        axes[0].legend(fontsize=7, ncols=4, loc="lower left", bbox_to_anchor=(0.0, 1.0))
    fig.suptitle(
        f"{record.campaign_id}: recipes in the search box "
        f"({len(record.widenings)} widening{'s' if len(record.widenings) != 1 else ''})",
        fontsize=11,
    )
    return _plot(
        fig,
        "parameters.png",
        "Parameters and the search box",
        "Each proposed recipe's value per parameter, by strategy. Grey band: the search box "
        "each round was proposed in (the last step is the box after the final widening); "
        "orange arrows: widenings; dashed orange: a hard limit the box has reached; star: the "
        "best condition.",
    )


def plot_replicates(record: CampaignRecord) -> Plot:
    """Replicate losses of each condition: used ones, outliers and the median."""
    fig = Figure(figsize=(8.0, 4.2), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    conds = [c for c in record.conditions if c.replicate_losses or c.outlier_losses]
    if not conds:
        _empty(ax, "no replicate scored yet")
    else:
        xu = [c.index for c in conds for _ in c.replicate_losses]
        yu = [v for c in conds for v in c.replicate_losses]
        ax.scatter(xu, yu, s=9, color="#3182bd", alpha=0.55, label="replicate used")
        xo = [c.index for c in conds for _ in c.outlier_losses]
        yo = [v for c in conds for v in c.outlier_losses]
        if xo:
            ax.scatter(xo, yo, s=22, color="#d62728", marker="x", label="outlier (rejected)")
        med = [c for c in conds if c.median_loss is not None]
        ax.scatter(
            [c.index for c in med], [c.median_loss for c in med], s=140, marker="_",
            color="black", lw=1.8, label="median loss", zorder=3,
        )  # fmt: skip
        failed = [c for c in record.conditions if c.status == "failed"]
        if failed:
            top = max(yu + yo) if (yu or yo) else 1.0
            ax.scatter(
                [c.index for c in failed], [top] * len(failed), marker="v", color="grey",
                label="failed",
            )  # fmt: skip
        _round_edges(ax, [c.round for c in record.conditions])
        ax.set_xlim(0.5, len(record.conditions) + 0.5)
        ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=4)
    ax.set_xlabel("condition (in proposal order)")
    ax.set_ylabel("loss of each replicate")
    ax.set_title(f"{record.campaign_id}: replicate spread per condition", loc="left")
    ax.grid(alpha=0.3)
    return _plot(
        fig,
        "replicates.png",
        "Replicate spread per condition",
        "Each dot is one droplet's loss in the attempt that completed the condition; red "
        "crosses were rejected as outliers (median/MAD rule); the black dash is the median "
        "loss the optimiser was told.",
    )


def plot_importance(record: CampaignRecord) -> Plot:
    """Input importance, stored by a strategy or computed by the report: one panel per
    predicted output (the figure of :func:`agent.explain.importance_figure`)."""
    assert record.importance is not None
    rnd, outputs = record.importance
    if record.importance_computed:
        when = "SHAP of the report's spectrum model"
    else:
        when = f"round {rnd}" if rnd is not None else "last report"
    fig = importance_figure(
        outputs,
        record.importance_inputs,
        title=f"{record.campaign_id}: input importance ({when})",
    )
    return _plot(fig, "importance.png", "Input importance", record.importance_about)


# --- helpers ---------------------------------------------------------------------


def _plot(fig: Figure, name: str, title: str, caption: str) -> Plot:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return Plot(name, title, buf.getvalue(), caption)


def _styles(record: CampaignRecord) -> dict[str, tuple[str, str]]:
    return {
        tag: (_COLOURS[i % len(_COLOURS)], _MARKERS[i % len(_MARKERS)])
        for i, tag in enumerate(record.strategies)
    }


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def _round_edges(ax: Axes, rounds: list[int]) -> None:
    """Dotted lines between rounds, for x = 1..len(rounds) in that order."""
    for i in range(1, len(rounds)):
        if rounds[i] != rounds[i - 1]:
            ax.axvline(i + 0.5, color="grey", lw=0.8, ls=":")


def _round_starts(conds: list[ConditionRow]) -> dict[int, tuple[int, int]]:
    """Round -> (first, last) condition index."""
    out: dict[int, tuple[int, int]] = {}
    for c in conds:
        a, _ = out.get(c.round, (c.index, c.index))
        out[c.round] = (a, c.index)
    return out


def _after_round(starts: dict[int, tuple[int, int]], rnd: int, n: int) -> float:
    return (starts[rnd][1] if rnd in starts else n) + 0.5


def _box_steps(
    record: CampaignRecord, name: str, starts: dict[int, tuple[int, int]], n: int
) -> tuple[list[float], list[float], list[float]]:
    """Step-line points of the box of ``name``: each round's box over its conditions,
    then the box after the last widening over one more slot."""
    xs: list[float] = []
    lo: list[float] = []
    hi: list[float] = []
    for rnd in sorted(starts):
        box = record.boxes.get(rnd)
        if box is None or name not in box:
            continue
        xs.append(starts[rnd][0] - 0.5)
        lo.append(box[name][0])
        hi.append(box[name][1])
    final = record.final_box
    if final is not None and name in final:
        xs.append(n + 0.5)
        lo.append(final[name][0])
        hi.append(final[name][1])
        xs.append(n + 1.5)
    else:
        xs.append(n + 0.5)
    lo.append(lo[-1] if lo else math.nan)
    hi.append(hi[-1] if hi else math.nan)
    return xs, lo, hi
