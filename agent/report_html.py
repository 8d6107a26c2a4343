"""The report's page: ``index.html`` with a summary, tables and every plot embedded.

One self-contained file (CSS inline, PNGs as ``data:`` URIs) to mail or
archive; everything shown is escaped. ``docs/report.md`` describes the page.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import math

from agent.explain import importance_table
from agent.report import CampaignRecord, Plot

__all__ = ["render_html"]

_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left;
         vertical-align: top; }
th { background: #f3f3f3; font-weight: 600; }
img { max-width: 100%; border: 1px solid #ddd; }
p.note { color: #8a4b00; background: #fff6e5; padding: 0.4em 0.7em; }
figcaption { color: #555; margin-top: 0.3em; }
"""


def render_html(record: CampaignRecord, figures: list[Plot]) -> str:
    """The report page: summary tables, then each figure as a ``data:`` URI."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Campaign report: {e(record.campaign_id)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Campaign report: {e(record.campaign_id)}</h1>",
        f"<p>From the journal <code>{e(str(record.path))}</code>, read-only.</p>",
    ]
    if record.missing:
        parts.append(
            '<p class="note">Not in this journal: '
            + "; ".join(e(m) for m in record.missing)
            + ".</p>"
        )
    parts.append("<h2>Summary</h2>")
    parts.append(_table(_summary_rows(record)))
    if record.conditions:
        parts.append("<h2>Rounds</h2>")
        parts.append(_table(_round_rows(record), header=True))
    if record.widenings:
        parts.append("<h2>Box widenings</h2>")
        rows = [["after round", "parameter", "face", "old", "new", "why"]]
        rows += [
            [
                str(w.round),
                w.parameter,
                w.face,
                _bounds(w.old),
                _bounds(w.new),
                w.reason,
            ]
            for w in record.widenings
        ]
        parts.append(_table(rows, header=True))
    for fig in figures:
        data = base64.b64encode(fig.png).decode("ascii")
        parts.append(f"<h2>{e(fig.title)}</h2>")
        parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{e(fig.title)}">'
            f"<figcaption>{e(fig.caption)}</figcaption></figure>"
        )
        if fig.name == "importance.png" and record.importance is not None:
            parts.append(_importance_rows(record))
    if not any(fig.name == "importance.png" for fig in figures):
        parts.append("<h2>Input importance</h2>")
        reason = record.importance_missing or "Not available."
        parts.append(f"<p>{e(reason)} See <code>docs/report.md</code>.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _summary_rows(r: CampaignRecord) -> list[list[str]]:
    n = {s: sum(c.status == s for c in r.conditions) for s in ("complete", "failed")}
    others = len(r.conditions) - n["complete"] - n["failed"]
    when = (
        dt.datetime.fromtimestamp(r.created_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if r.created_at is not None
        else "unknown"
    )
    rows = [
        ["campaign", r.campaign_id],
        ["started", when],
        ["seed", r.seed],
        [
            "rounds",
            f"{r.rounds_complete} complete of {r.rounds_proposed} proposed",
        ],
        [
            "conditions",
            f"{len(r.conditions)} proposed: {n['complete']} complete, {n['failed']} failed, "
            f"{others} not finished",
        ],
        [
            "replicates",
            f"{r.replicates_received} spectra received, "
            f"{sum(r.replicates_refused.values())} refused on arrival"
            + (
                " (" + ", ".join(f"{k} {v}" for k, v in sorted(r.replicates_refused.items())) + ")"
                if r.replicates_refused
                else ""
            )
            + f", {sum(c.n_used for c in r.conditions)} used in medians, "
            f"{sum(c.n_rejected for c in r.conditions)} rejected as outliers",
        ],
        ["strategies", ", ".join(r.strategies) or "none"],
    ]
    best = r.best
    if best is not None:
        recipe = ", ".join(
            f"{k} = {v:.4g}{(' ' + r.units[k]) if r.units.get(k) else ''}"
            for k, v in best.recipe.items()
        )
        phase = f"; phase {best.phase[0]} ({best.phase[1]:.2f})" if best.phase else ""
        rows += [
            ["best condition", f"{best.condition} (round {best.round}, {best.strategy})"],
            ["best median loss", f"{best.median_loss:.4f}" + _sd(best.loss_sd)],
            ["best recipe", recipe + phase],
        ]
    else:
        rows.append(["best condition", "none completed yet"])
    if r.stop is not None:
        nums = ", ".join(f"{k} = {v:.4g}" for k, v in r.stop.numbers.items())
        rows.append(
            ["stopped by", f"{r.stop.rule}: {r.stop.reason}" + (f" ({nums})" if nums else "")]
        )
    else:
        rows.append(
            [
                "stopped by",
                "not stopped: the journal ends without a campaign_stopped record "
                "(still running, or the agent was killed)",
            ]
        )
    widened = _widened(r)
    rows.append(["box widened", "; ".join(widened) if widened else "no"])
    return rows


def _round_rows(r: CampaignRecord) -> list[list[str]]:
    rows = [["round", "strategy", "complete", "failed", "best in round", "best so far"]]
    so_far = math.inf
    for rnd in sorted({c.round for c in r.conditions}):
        conds = [c for c in r.conditions if c.round == rnd]
        losses = [
            c.median_loss for c in conds if c.status == "complete" and c.median_loss is not None
        ]
        best = min(losses, default=math.inf)
        so_far = min(so_far, best)
        rows.append(
            [
                str(rnd),
                ", ".join(dict.fromkeys(c.strategy for c in conds)),
                str(sum(c.status == "complete" for c in conds)),
                str(sum(c.status == "failed" for c in conds)),
                f"{best:.4f}" if math.isfinite(best) else "",
                f"{so_far:.4f}" if math.isfinite(so_far) else "",
            ]
        )
    return rows


def _widened(r: CampaignRecord) -> list[str]:
    first = r.boxes.get(min(r.boxes)) if r.boxes else None
    if first is None or r.final_box is None:
        return [f"{w.parameter} {_bounds(w.old)} -> {_bounds(w.new)}" for w in r.widenings]
    return [
        f"{p} {_bounds(first[p])} -> {_bounds(r.final_box[p])}"
        for p in r.parameters
        if p in first and p in r.final_box and first[p] != r.final_box[p]
    ]


def _importance_rows(r: CampaignRecord) -> str:
    """The importance table (as ``input_importance.csv``), most important input first."""
    assert r.importance is not None
    outputs = r.importance[1]
    rows = [line.split(",") for line in importance_table(outputs, r.importance_inputs).splitlines()]
    units = {"loss": "mean |SHAP|, predicted loss", "peak_nm": "mean |SHAP|, predicted peak (nm)"}
    rows[0] = ["input", *(units.get(o, o) for o in outputs)]
    return _table(rows, header=True)


def _table(rows: list[list[str]], header: bool = False) -> str:
    e = html.escape
    out = ["<table>"]
    for i, row in enumerate(rows):
        if header and i == 0:
            out.append("<tr>" + "".join(f"<th>{e(c)}</th>" for c in row) + "</tr>")
        elif not header:
            cells = "".join(f"<td>{e(c)}</td>" for c in row[1:])
            out.append(f"<tr><th>{e(row[0])}</th>{cells}</tr>")
        else:
            out.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _bounds(b: tuple[float, float]) -> str:
    return f"[{b[0]:.4g}, {b[1]:.4g}]"


def _sd(sd: float | None) -> str:
    return "" if sd is None else f" (replicate sd {sd:.4f})"
