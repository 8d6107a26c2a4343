"""``sdl-agent report``: plots and one self-contained HTML page from a campaign journal.

:func:`read_campaign` gathers what a report shows from a journal opened
read-only (the file is never written, and a campaign still running may go on
writing it); :func:`write_report` draws the plots (:mod:`agent.report_plots`)
and writes them as PNG files beside ``index.html`` (:mod:`agent.report_html`),
which embeds the same images as ``data:`` URIs, so that one file can be mailed. ``docs/report.md``
says how to read each plot.

A journal that lacks something (an older one has no target spectrum or
configuration in ``meta``) gives a report that says what is missing instead of
failing. Input importance is the one a strategy stored in the journal, else
the report computes it (:mod:`agent.report_importance`: SHAP values of a
spectrum model trained on the journal's median spectra), else the page says
why there is none.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.explain import importance_table
from agent.export import chosen_labels, journal_labels
from agent.journal import Journal, JournalRefused

__all__ = [
    "CampaignRecord",
    "ConditionRow",
    "Plot",
    "ReportFiles",
    "StopRecord",
    "Target",
    "Widening",
    "read_campaign",
    "write_report",
]

Box = dict[str, tuple[float, float]]


@dataclass(frozen=True)
class ConditionRow:
    """One proposed condition as the journal holds it.

    ``index`` counts conditions in proposal order from 1; ``done`` is the
    journal sequence number at which it finished (None while it has not).
    ``replicate_losses`` are the losses of the replicates its median used,
    ``outlier_losses`` those of its final attempt rejected as outliers.
    """

    index: int
    condition: str
    round: int
    strategy: str
    status: str
    recipe: dict[str, float]
    median_loss: float | None
    loss_sd: float | None
    n_used: int
    n_rejected: int
    done: int | None
    median_spectrum: np.ndarray | None
    replicate_losses: tuple[float, ...] = ()
    outlier_losses: tuple[float, ...] = ()
    phase: tuple[str, float] | None = None


@dataclass(frozen=True)
class Widening:
    """One widening of the search box (a ``boundary_expanded`` announcement)."""

    round: int
    parameter: str
    face: str
    old: tuple[float, float]
    new: tuple[float, float]
    reason: str


@dataclass(frozen=True)
class StopRecord:
    """The ``campaign_stopped`` announcement: which rule, why, and its numbers."""

    rule: str
    reason: str
    numbers: dict[str, float]
    rounds: int | None
    conditions: int | None


@dataclass(frozen=True)
class Target:
    """The target spectrum on the campaign grid."""

    wavelengths: np.ndarray
    values: np.ndarray


@dataclass
class CampaignRecord:
    """Everything a report shows, read from one journal.

    ``importance`` is (round, output -> input -> value): stored by a strategy, or
    filled in by :func:`write_report` (``importance_computed``); ``importance_about``
    says what it is, ``importance_missing`` why there is none.
    """

    path: Path
    campaign_id: str
    seed: str
    created_at: float | None
    parameters: list[str]
    units: dict[str, str]
    hard_limits: dict[str, tuple[float, float]]
    conditions: list[ConditionRow]
    boxes: dict[int, Box]
    final_box: Box | None
    widenings: list[Widening]
    stop: StopRecord | None
    target: Target | None
    wavelengths: np.ndarray | None
    importance: tuple[int | None, dict[str, dict[str, float]]] | None
    rounds_proposed: int
    rounds_complete: int
    replicates_received: int
    replicates_refused: dict[str, int]
    missing: list[str] = field(default_factory=list)
    config: dict[str, Any] | None = None
    importance_about: str = ""
    importance_computed: bool = False
    importance_missing: str | None = None

    @property
    def complete(self) -> list[ConditionRow]:
        """Completed conditions with a finite median loss, in the order they finished."""
        done = [
            c
            for c in self.conditions
            if c.status == "complete" and c.median_loss is not None and c.done is not None
        ]
        return sorted(done, key=lambda c: c.done or 0)

    @property
    def best(self) -> ConditionRow | None:
        """The completed condition with the lowest median loss."""
        return min(self.complete, key=lambda c: c.median_loss or math.inf, default=None)

    @property
    def strategies(self) -> list[str]:
        """Strategy tags in order of first use."""
        return list(dict.fromkeys(c.strategy for c in self.conditions))

    @property
    def importance_inputs(self) -> list[str]:
        """The parameters every output of :attr:`importance` has a value for, in order."""
        if self.importance is None:
            return []
        outputs = self.importance[1].values()
        return [n for n in self.parameters if all(n in v for v in outputs)]


@dataclass(frozen=True)
class Plot:
    """One rendered plot: its file name, title, PNG bytes and how to read it."""

    name: str
    title: str
    png: bytes
    caption: str


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote."""

    index: Path
    images: tuple[Path, ...]
    table: Path | None = None


def read_campaign(path: Path | str) -> CampaignRecord:
    """Read what the report shows from the journal at ``path`` (read-only).

    Raises:
        JournalRefused: no such file, not a journal, corrupt, or rows that
            cannot be read back.
    """
    path = Path(path)
    with Journal.open(path, read_only=True) as j, j.snapshot():
        try:
            return _read(j, path)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise JournalRefused(f"journal {path} cannot be read back: {exc!r}") from None


def write_report(
    journal: Path | str, out_dir: Path | str, *, compute_importance: bool = True
) -> ReportFiles:
    """Write the report of ``journal`` into ``out_dir``: one PNG per plot,
    ``index.html`` with the same images embedded, and ``input_importance.csv``
    when there is input importance.

    Args:
        journal: the journal's path.
        out_dir: where to write (created if need be).
        compute_importance: when the journal holds no input importance, compute
            it (:func:`agent.report_importance.model_importance`, a few seconds);
            False skips that and the page says so.

    Raises:
        JournalRefused: the journal is missing or unreadable (nothing is written).
        OSError: ``out_dir`` cannot be written.
    """
    from agent import report_plots  # matplotlib is imported only when a report is drawn
    from agent.report_html import render_html

    record = read_campaign(journal)
    if record.importance is None:
        _add_model_importance(record, compute_importance)
    figures = report_plots.draw_all(record)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = []
    for fig in figures:
        p = out / fig.name
        p.write_bytes(fig.png)
        images.append(p)
    table = None
    if record.importance is not None and record.importance_inputs:
        table = out / "input_importance.csv"
        table.write_text(
            importance_table(record.importance[1], record.importance_inputs), encoding="utf-8"
        )
    index = out / "index.html"
    index.write_text(render_html(record, figures), encoding="utf-8")
    return ReportFiles(index, tuple(images), table)


def _add_model_importance(record: CampaignRecord, compute: bool) -> None:
    """Fill in the record's input importance from a model fitted on its spectra, or
    the one sentence that says why there is none."""
    if not compute:
        record.importance_missing = (
            "Not computed: skipped on request (sdl-agent report --no-importance), and no "
            "strategy of this campaign stored input importance in the journal."
        )
        return
    from agent.report_importance import ImportanceMissing, model_importance

    try:
        found = model_importance(record)
    except ImportanceMissing as exc:
        record.importance_missing = str(exc)
        return
    record.importance = (None, found.values)
    record.importance_about = found.describe()
    record.importance_computed = True


# --- reading ---------------------------------------------------------------------


def _read(j: Journal, path: Path) -> CampaignRecord:
    meta = j.meta
    names: list[str] = list(json.loads(meta["parameters"]))
    missing: list[str] = []
    config = _json_meta(meta, "config")
    units: dict[str, str] = {}
    hard: dict[str, tuple[float, float]] = {}
    if config is None:
        missing.append("the campaign configuration (journal written before it was stored)")
    else:
        for p in config.get("parameters", []):
            units[p["name"]] = p.get("unit", "")
            lim = p.get("hard_limits") or p.get("bounds")
            hard[p["name"]] = (float(lim[0]), float(lim[1]))
    target = None
    t = _json_meta(meta, "target")
    if t is None:
        missing.append("the target spectrum (journal written before it was stored)")
    else:
        values = np.asarray(t["values"], dtype=float)
        wl = float(t["wl_start"]) + float(t["wl_step"]) * np.arange(values.size)
        target = Target(wl, values)

    labels = chosen_labels(journal_labels(j))  # rejected labels left out

    reps = _replicate_losses(j)
    started = {r[0] for r in j.query("SELECT DISTINCT condition FROM setpoints")}
    conditions: list[ConditionRow] = []
    for i, row in enumerate(
        j.query(
            "SELECT condition, round, strategy, status, recipe, median_loss, loss_sd, n_used, "
            "n_rejected, done_seq, median_spectrum, attempt, used, outliers FROM conditions "
            "ORDER BY round, idx"
        ),
        start=1,
    ):
        cid, rnd, strategy, status, recipe, med, sd, n_used, n_rej, done, spec, att, used, outl = (
            row
        )
        if status == "queued" and cid in started:
            status = "interrupted"
        by_k = reps.get((cid, att), {})
        used_k = [int(k) for k in json.loads(used or "[]")]
        out_k = [int(o[0]) for o in json.loads(outl or "[]")]
        conditions.append(
            ConditionRow(
                index=i,
                condition=cid,
                round=int(rnd),
                strategy=str(strategy),
                status=str(status),
                recipe={k: float(v) for k, v in json.loads(recipe).items()},
                median_loss=None if med is None else float(med),
                loss_sd=None if sd is None else float(sd),
                n_used=int(n_used or 0),
                n_rejected=int(n_rej or 0),
                done=None if done is None else int(done),
                median_spectrum=None if spec is None else np.frombuffer(spec, dtype="<f8").copy(),
                replicate_losses=tuple(by_k[k] for k in used_k if k in by_k),
                outlier_losses=tuple(by_k[k] for k in out_k if k in by_k),
                phase=labels.get(cid),
            )
        )

    wavelengths = target.wavelengths if target is not None else None
    if wavelengths is None:
        grid = next(
            j.query(
                "SELECT wl_start, wl_step, length(spectrum) / 8 FROM replicates "
                "WHERE verdict = 'accepted' LIMIT 1"
            ),
            None,
        )
        if grid is not None and grid[0] is not None:
            wavelengths = float(grid[0]) + float(grid[1]) * np.arange(int(grid[2]))

    widenings = [
        Widening(
            int(b["round"]),
            str(b["parameter"]),
            str(b["face"]),
            (float(b["old_bounds"][0]), float(b["old_bounds"][1])),
            (float(b["new_bounds"][0]), float(b["new_bounds"][1])),
            str(b.get("reason", "")),
        )
        for b in _announcements(j, "boundary_expanded")
    ]
    boxes = _boxes(j, names, config, widenings)
    final_box = None
    if boxes:
        final_box = dict(boxes[max(boxes)])
        for w in widenings:
            if w.round >= max(boxes):
                final_box[w.parameter] = w.new

    stop = None
    for b in _announcements(j, "campaign_stopped"):
        stop = StopRecord(
            str(b.get("rule", "")),
            str(b.get("reason", "")),
            {
                str(k): float(v)
                for k, v in (b.get("numbers") or {}).items()
                if isinstance(v, int | float)
            },
            b.get("rounds"),
            b.get("conditions"),
        )

    importance = _latest_importance(j, names)
    about = ""
    if importance is not None:
        when = f"round {importance[0]}" if importance[0] is not None else "its last report"
        about = f"As the strategy reported it to the journal ({when}), per predicted output."

    received = j.count("replicates")
    refused = {
        str(code): int(n)
        for code, n in j.query(
            "SELECT coalesce(code, '?'), count(*) FROM replicates WHERE verdict = 'rejected' "
            "AND code IS NOT 'outlier' GROUP BY code"
        )
    }
    created = meta.get("created_at")
    return CampaignRecord(
        path=path,
        campaign_id=meta["campaign_id"],
        seed=meta.get("seed", ""),
        created_at=float(created) if created else None,
        parameters=names,
        units=units,
        hard_limits=hard,
        conditions=conditions,
        boxes=boxes,
        final_box=final_box,
        widenings=widenings,
        stop=stop,
        target=target,
        wavelengths=wavelengths,
        importance=importance,
        rounds_proposed=j.count("rounds"),
        rounds_complete=len(_announcements(j, "round_complete")),
        replicates_received=int(received),
        replicates_refused=refused,
        missing=missing,
        config=config,
        importance_about=about,
    )


def _json_meta(meta: Mapping[str, str], key: str) -> Any:
    raw = meta.get(key)
    return None if raw is None else json.loads(raw)


def _announcements(j: Journal, kind: str) -> list[dict[str, Any]]:
    return [
        json.loads(body)
        for (body,) in j.query(
            "SELECT body FROM events WHERE what = 'announce' AND kind = ? ORDER BY seq", (kind,)
        )
    ]


def _replicate_losses(j: Journal) -> dict[tuple[str, int | None], dict[int, float]]:
    """Loss of each scored replicate, by (condition, attempt) and replicate number."""
    out: dict[tuple[str, int | None], dict[int, float]] = {}
    for cid, attempt, k, loss in j.query(
        "SELECT condition, attempt, replicate, loss FROM replicates WHERE loss IS NOT NULL "
        "ORDER BY seq"
    ):
        out.setdefault((cid, attempt), {})[int(k)] = float(loss)
    return out


def _boxes(
    j: Journal, names: list[str], config: dict[str, Any] | None, widenings: list[Widening]
) -> dict[int, Box]:
    """The search box each round was proposed in: from the ``round_proposed`` record,
    else the configured box with the widenings announced before that round."""
    boxes: dict[int, Box] = {}
    for rnd, body in j.query(
        "SELECT round, body FROM events WHERE what = 'note' AND kind = 'round_proposed' "
        "ORDER BY seq"
    ):
        box = json.loads(body).get("box")
        if rnd is not None and isinstance(box, dict) and set(names) <= set(box):
            boxes[int(rnd)] = {n: (float(box[n][0]), float(box[n][1])) for n in names}
    rounds = [int(r) for (r,) in j.query("SELECT round FROM rounds ORDER BY round")]
    if config is not None and any(r not in boxes for r in rounds):
        for rnd in rounds:
            if rnd in boxes:
                continue
            box = {
                p["name"]: (float(p["bounds"][0]), float(p["bounds"][1]))
                for p in config["parameters"]
            }
            for w in widenings:
                if w.round < rnd:
                    box[w.parameter] = w.new
            boxes[rnd] = box
    return boxes


def _latest_importance(
    j: Journal, names: list[str]
) -> tuple[int | None, dict[str, dict[str, float]]] | None:
    """The last input importance the journal holds: in a round's notes, or in a note
    event ``input_importance`` / ``importance`` (with its round)."""
    found: list[tuple[int, int | None, dict[str, dict[str, float]]]] = []
    for seq, rnd, notes in j.query("SELECT seq, round, notes FROM rounds"):
        imp = _importance(json.loads(notes), names)
        if imp is not None:
            found.append((int(seq), int(rnd), imp))
    for seq, rnd, body in j.query(
        "SELECT seq, round, body FROM events WHERE what = 'note' "
        "AND kind IN ('input_importance', 'importance')"
    ):
        b = json.loads(body)
        imp = _importance(b, names) or _outputs(b, names)
        if imp is not None:
            found.append((int(seq), None if rnd is None else int(rnd), imp))
    if not found:
        return None
    _, rnd, imp = max(found, key=lambda f: f[0])
    return rnd, imp


def _importance(notes: Any, names: list[str]) -> dict[str, dict[str, float]] | None:
    """``importance`` (or ``input_importance``) in ``notes``, at the top level or under
    ``metrics``: a mapping parameter -> number, a list in parameter order, or a mapping
    output (e.g. ``loss``, ``peak_nm``) -> either of those."""
    if not isinstance(notes, dict):
        return None
    for holder in (notes, notes.get("metrics")):
        if not isinstance(holder, dict):
            continue
        for key in ("importance", "input_importance"):
            value = holder.get(key)
            flat = _by_name(value, names)
            if flat is not None:
                return {"importance": flat}
            nested = _outputs(value, names)
            if nested is not None:
                return nested
    return None


def _outputs(value: Any, names: list[str]) -> dict[str, dict[str, float]] | None:
    if not isinstance(value, dict):
        return None
    out = {str(k): v for k, v in ((k, _by_name(v, names)) for k, v in value.items()) if v}
    return out or None


def _by_name(value: Any, names: list[str]) -> dict[str, float] | None:
    if isinstance(value, list) and len(value) == len(names):
        value = dict(zip(names, value, strict=True))
    if not isinstance(value, dict):
        return None
    clean = {
        str(k): float(v)
        for k, v in value.items()
        if k in names and isinstance(v, int | float) and math.isfinite(v)
    }
    return clean or None
