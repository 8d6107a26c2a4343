"""``sdl-agent export``: a campaign journal as CSV (``conditions.csv``, ``replicates.csv``,
``labels.csv``).

Reads only; see ``docs/journal.md`` for the columns.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from agent.journal import Journal

__all__ = ["LABEL_COLUMNS", "chosen_labels", "condition_columns", "export_csv", "journal_labels"]

#: ``labels.csv``: every phase label received, in order, with what became of it
LABEL_COLUMNS = ["seq", "at", "condition", "phase", "confidence", "status", "reason"]


def journal_labels(j: Journal) -> list[dict[str, object]]:
    """Every phase label in the journal, in arrival order, as ``LABEL_COLUMNS`` rows.

    ``status``: ``accepted`` (attached to its condition), ``rejected`` (with the
    campaign's reason: unknown condition or phase, confidence outside [0, 1]),
    or ``unlabelled`` (no label came within the label timeout; phase empty).
    The campaign journals a label's input and then its verdict note.
    """
    rows: list[dict[str, object]] = []
    pending: dict[str, object] | None = None
    for seq, at, what, kind, cid, body in j.query(
        "SELECT seq, at, what, kind, condition, body FROM events WHERE "
        "(what = 'input' AND kind = 'phase_label') OR "
        "(what = 'note' AND kind IN ('phase_label', 'message_rejected', 'phase_unlabelled')) "
        "ORDER BY seq"
    ):
        b = json.loads(body)
        if what == "input":
            pending = {
                "seq": seq,
                "at": at,
                "condition": cid or b.get("condition", ""),
                "phase": b["phase"],
                "confidence": float(b["confidence"]),
                "status": "accepted",
                "reason": "",
            }
            rows.append(pending)
        elif kind == "phase_unlabelled":
            rows.append(
                {
                    "seq": seq,
                    "at": at,
                    "condition": cid,
                    "phase": "",
                    "confidence": "",
                    "status": "unlabelled",
                    "reason": f"no label within {b.get('timeout_s', '?')} s",
                }
            )
        elif pending is not None:
            if kind == "message_rejected" and b.get("kind") == "phase_label":
                pending["status"], pending["reason"] = "rejected", b.get("reason", "")
            elif kind == "phase_label" and "contradicts" in b:
                pending["reason"] = f"contradicts {b['contradicts']}; using {b.get('using')}"
            pending = None
    return rows


def chosen_labels(rows: list[dict[str, object]]) -> dict[str, tuple[str, float]]:
    """Condition -> the label the campaign uses: the most confident accepted one."""
    out: dict[str, tuple[str, float]] = {}
    for r in rows:
        if r["status"] != "accepted":
            continue
        cid, phase, conf = str(r["condition"]), str(r["phase"]), float(r["confidence"])  # type: ignore[arg-type]
        if cid not in out or conf > out[cid][1]:
            out[cid] = (phase, conf)
    return out


def condition_columns(names: list[str]) -> list[str]:
    """The header of ``conditions.csv`` (the run's and the export's), for parameters ``names``."""
    return [
        "condition",
        "round",
        "strategy",
        "status",
        *names,
        "n_used",
        "n_rejected",
        "median_loss",
        "loss_sd",
        "phase",
        "phase_confidence",
        "failure",
    ]


def export_csv(path: Path | str, out_dir: Path | str) -> tuple[Path, Path, Path]:
    """Write ``conditions.csv`` (one row per condition, the run's own columns; the
    phase is the label used), ``replicates.csv`` (one row per spectrum received:
    verdict, loss, absorbances) and ``labels.csv`` (every phase label received,
    see :func:`journal_labels`).

    Raises:
        JournalRefused: the journal is missing or unreadable.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with Journal.open(path, read_only=True) as j:
        names = json.loads(j.meta["parameters"])
        label_rows = journal_labels(j)
        labels = chosen_labels(label_rows)
        with (out / "labels.csv").open("w", newline="", encoding="utf-8") as fh:
            lw = csv.DictWriter(fh, LABEL_COLUMNS)
            lw.writeheader()
            lw.writerows(label_rows)
        started = {r[0] for r in j.query("SELECT DISTINCT condition FROM setpoints")}
        conditions = out / "conditions.csv"
        with conditions.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(condition_columns(names))
            for row in j.query(
                "SELECT condition, round, strategy, status, recipe, n_used, n_rejected, "
                "median_loss, loss_sd, failure FROM conditions ORDER BY round, idx"
            ):
                cid, rnd, strategy, status, recipe, n_used, n_rej, med, sd, failure = row
                recipe = json.loads(recipe)
                if status == "queued" and cid in started:
                    status = "interrupted"
                phase = labels.get(cid)
                w.writerow(
                    [
                        cid,
                        rnd,
                        strategy,
                        status,
                        *(f"{recipe[n]:.6g}" for n in names),
                        n_used or 0,
                        n_rej or 0,
                        "" if med is None else f"{med:.6f}",
                        "" if sd is None else f"{sd:.6f}",
                        phase[0] if phase else "",
                        f"{phase[1]:.3f}" if phase else "",
                        failure or "",
                    ]
                )
        replicates = out / "replicates.csv"
        final: dict[str, tuple[int | None, set[int], dict[int, str]]] = {}
        for cid, attempt, used, outliers in j.query(
            "SELECT condition, attempt, used, outliers FROM conditions WHERE done_seq IS NOT NULL"
        ):
            o = {int(k): why for k, _, why in json.loads(outliers or "[]")}
            final[cid] = (attempt, set(json.loads(used or "[]")), o)
        with replicates.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            header_done = False
            for row in j.query(
                "SELECT seq, condition, attempt, replicate, source, wl_start, wl_step, "
                "spectrum, loss, verdict, code, reason FROM replicates ORDER BY seq"
            ):
                seq, cid, attempt, k, source, wl0, dwl, blob, loss, verdict, code, reason = row
                values = np.frombuffer(blob, dtype="<f8")
                if not header_done:
                    wl = [wl0 + dwl * i for i in range(values.size)]
                    w.writerow(
                        [
                            "seq",
                            "condition",
                            "attempt",
                            "replicate",
                            "source",
                            "verdict",
                            "code",
                            "final",
                            "loss",
                            "reason",
                            *(f"a_{x:g}" for x in wl),
                        ]
                    )
                    header_done = True
                fin = final.get(cid)
                role = ""
                if fin is not None and fin[0] == attempt and verdict == "accepted":
                    role = "used" if k in fin[1] else "outlier" if k in fin[2] else ""
                if fin is not None and fin[0] == attempt and k in fin[2]:
                    role, reason = "outlier", fin[2][k]
                w.writerow(
                    [
                        seq,
                        cid,
                        "" if attempt is None else attempt,
                        k,
                        source,
                        verdict,
                        code or "",
                        role,
                        "" if loss is None else f"{loss:.6f}",
                        reason or "",
                        *(f"{v:.6g}" for v in values),
                    ]
                )
            if not header_done:
                w.writerow(["seq", "condition", "attempt", "replicate", "source", "verdict"])
    return conditions, replicates, out / "labels.csv"
