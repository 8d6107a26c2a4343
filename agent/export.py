"""``sdl-agent export``: a campaign journal as CSV (``conditions.csv``, ``replicates.csv``).

Reads only; see ``docs/journal.md`` for the columns.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from agent.journal import Journal

__all__ = ["condition_columns", "export_csv"]


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


def export_csv(path: Path | str, out_dir: Path | str) -> tuple[Path, Path]:
    """Write ``conditions.csv`` (one row per condition, the run's own columns) and
    ``replicates.csv`` (one row per spectrum received: verdict, loss, absorbances).

    Raises:
        JournalRefused: the journal is missing or unreadable.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with Journal.open(path, read_only=True) as j:
        names = json.loads(j.meta["parameters"])
        labels: dict[str, tuple[str, float]] = {}
        for cid, body in j.query(
            "SELECT condition, body FROM events WHERE what = 'input' AND kind = 'phase_label' "
            "ORDER BY seq"
        ):
            b = json.loads(body)
            best = labels.get(cid)
            if best is None or float(b["confidence"]) > best[1]:
                labels[cid] = (b["phase"], float(b["confidence"]))
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
    return conditions, replicates
