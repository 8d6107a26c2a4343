"""``sdl-agent report``: plots and one HTML page from a real journal, as a user runs it.

The journal is written by the offline toy campaign through the same seam the
runtime uses (:class:`JournalledLab`); the report runs as its own process.

Runtime: ~25 s, of which ~8 s the input importance the report computes (a fit
of the spectrum model and shap's import, in a process of its own and in this one).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from agent.core.campaign import Campaign
from agent.core.strategies.base import Batch
from agent.core.strategies.lhs import LatinHypercube
from agent.core.strategies.spectrum_model import ModelDiverged, SpectrumEnsemble
from agent.core.testing import TOY_GRID, TOY_TARGET, ToyLab, toy_settings
from agent.journal import Journal, JournalError, run_meta
from agent.report import read_campaign, write_report
from agent.report_importance import MIN_CONDITIONS

ROOT = Path(__file__).resolve().parents[2]
PLOTS = ("best_loss.png", "spectra.png", "parameters.png", "replicates.png", "phase_map.png")


def sdl_agent(
    *args: str, prefix: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *prefix,
            sys.executable,
            "-c",
            "import sys; from agent.cli import main; sys.exit(main())",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env=env,
    )


def toy_meta() -> dict[str, str]:
    """What a run stores (``run_meta``), for the toy campaign's two parameters."""
    config = {
        "parameters": [
            {"name": "a", "unit": "%", "bounds": [0.0, 1.0], "hard_limits": [0.0, 2.0]},
            {"name": "b", "unit": "", "bounds": [0.0, 1.0], "hard_limits": None},
        ]
    }
    target = {"wl_start": TOY_GRID.start, "wl_step": TOY_GRID.step, "values": TOY_TARGET.tolist()}
    return {"config": json.dumps(config), "target": json.dumps(target)}


class ImportanceLHS(LatinHypercube):
    """A Latin hypercube that reports input importance, as the two-step strategy will."""

    def __init__(self, importance: object) -> None:
        super().__init__()
        self.importance = importance

    def propose(self, space, data, n, rng) -> Batch:
        batch = super().propose(space, data, n, rng)
        return Batch(batch.x, batch.strategy, {**batch.notes, "importance": self.importance})


class JournalledLab(ToyLab):
    """Noisy toy instruments; every step goes core -> journal -> act, as in the runtime."""

    def __init__(self, campaign: Campaign, journal: Journal) -> None:
        super().__init__(campaign, noise=0.03, seed=5)
        self.j = journal

    def record(self, event, decisions, **kw) -> None:
        self.j.commit(self.c, event, decisions, self.now, **kw)


def write_journal(path: Path, *, meta: dict[str, str] | None, **settings) -> Campaign:
    campaign = Campaign(toy_settings(**settings), seed=4)
    args = dict(campaign_id="toy", config_hash="h" * 64, seed=4, parameters=["a", "b"])
    with Journal.create(path, **args, extra_meta=meta) as j:
        JournalledLab(campaign, j).run()
    return campaign


@pytest.fixture(scope="module")
def journal(tmp_path_factory) -> tuple[Path, Campaign]:
    path = tmp_path_factory.mktemp("campaign") / "journal.sqlite"
    return path, write_journal(path, meta=toy_meta(), rounds=3, batch_size=5)


def test_report_writes_pngs_and_one_html_page_that_embeds_them(journal, tmp_path):
    path, campaign = journal
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    out = tmp_path / "report"
    proc = sdl_agent("report", str(path), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert str(out / "index.html") in proc.stdout
    for name in PLOTS:
        image = imread(out / name)  # decodes, or raises
        assert image.shape[0] >= 300 and image.shape[1] >= 600
        assert float(np.std(image[..., :3])) > 0.05  # something is drawn
    assert not (out / "importance.png").exists() and not (out / "input_importance.csv").exists()
    page = (out / "index.html").read_text(encoding="utf-8")
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == len(PLOTS)
    assert base64.b64decode(embedded[0]) == (out / "best_loss.png").read_bytes()
    best_cid, best_loss = min(
        ((cid, r.median_loss) for cid, r in campaign.conditions.items() if r.state == "complete"),
        key=lambda t: t[1],
    )
    assert f"<td>{best_cid} (round " in page and f"<td>{best_loss:.4f}" in page
    assert "max_rounds" in page and "15 proposed: 15 complete" in page
    assert "<td>3</td><td>lhs</td><td>5</td><td>0</td>" in page  # the rounds table
    assert f"<td>{best_loss:.4f}</td></tr>" in page  # best so far, last round
    assert (  # 15 conditions: too few for the report to fit its own spectrum model
        "Input importance</h2>\n<p>Not available: 15 complete conditions with a median spectrum "
        f"on the target&#x27;s grid, and the report fits its spectrum model from {MIN_CONDITIONS}"
    ) in page
    assert "Not in this journal" not in page
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # read, never written


def test_the_record_matches_the_journal(journal):
    path, campaign = journal
    rec = read_campaign(path)
    assert [c.condition for c in rec.conditions] == list(campaign.conditions)
    assert rec.best is not None and rec.best.median_loss == pytest.approx(
        min(r.median_loss for r in campaign.conditions.values())
    )
    assert rec.rounds_complete == 3 and rec.stop is not None and rec.stop.rule == "max_rounds"
    assert sorted(rec.boxes) == [1, 2, 3] and rec.boxes[1]["a"] == (0.0, 1.0)
    assert rec.hard_limits == {"a": (0.0, 2.0), "b": (0.0, 1.0)}
    for c, live in zip(rec.conditions, campaign.conditions.values(), strict=True):
        assert len(c.replicate_losses) == live.n_used
        assert np.median(c.replicate_losses) == pytest.approx(live.median_loss)
    assert rec.target is not None and rec.target.values.tolist() == TOY_TARGET.tolist()


class PhasedLab(JournalledLab):
    """Silver oxide where ``a > 0.6``; some labels too unsure to count."""

    def label(self, condition):
        a = self.c.conditions[condition].recipe["a"]
        return ("Ag2O", 0.9) if a > 0.6 else ("Ag-fcc", 0.6 if a > 0.55 else 0.9)


def test_the_phase_map_shows_the_predicted_regions_and_the_measured_labels(tmp_path):
    from agent.core.phase import PhaseSettings
    from agent.report_phase import plot_phase_map

    meta = toy_meta()
    config = json.loads(meta["config"])
    meta["config"] = json.dumps({**config, "phase": {"required": "Ag-fcc", "min_confidence": 0.7}})
    path = tmp_path / "j.sqlite"
    campaign = Campaign(toy_settings(rounds=3, batch_size=8, phase=PhaseSettings("Ag-fcc")), seed=4)
    args = dict(campaign_id="toy", config_hash="h" * 64, seed=4, parameters=["a", "b"])
    with Journal.create(path, **args, extra_meta=meta) as j:
        PhasedLab(campaign, j).run()
    record = read_campaign(path)
    plot = plot_phase_map(record)
    assert plot is not None and plot.name == "phase_map.png"
    assert "classifier fitted on" in plot.caption
    image = imread(io.BytesIO(plot.png))
    assert image.shape[1] >= 300 and float(np.std(image[..., :3])) > 0.05
    # the model it draws: the oxide side improbable, the silver side probable
    from agent.report_phase import _space

    rows = [c for c in record.complete if c.phase]
    n_bad = sum(c.recipe["a"] > 0.55 for c in rows)
    assert 0 < n_bad < len(rows)
    assert "Ag-fcc" in plot.caption and f"{len(rows) - n_bad} Ag-fcc" in plot.caption
    assert _space(record, rows).names == ("a", "b")


def test_an_older_journal_without_target_or_config_still_gets_a_report(tmp_path):
    path = tmp_path / "old.sqlite"
    write_journal(path, meta=None, rounds=1, batch_size=3)
    files = write_report(path, tmp_path / "r")
    page = files.index.read_text(encoding="utf-8")
    assert "Not in this journal: the campaign configuration" in page
    assert "the target spectrum" in page
    assert "Not available: the journal holds no campaign configuration" in page
    assert len(files.images) == len(PLOTS) and files.table is None


@pytest.mark.parametrize(
    ("reported", "read"),
    [
        ({"a": 0.8, "b": 0.1}, {"importance": {"a": 0.8, "b": 0.1}}),
        ([0.8, 0.1], {"importance": {"a": 0.8, "b": 0.1}}),
        (
            {"loss": {"a": 0.2, "b": 0.05}, "peak_nm": {"a": 30.0, "b": 4.0}},
            {"loss": {"a": 0.2, "b": 0.05}, "peak_nm": {"a": 30.0, "b": 4.0}},
        ),
    ],
    ids=["by-name", "in-order", "per-output"],
)
def test_input_importance_is_plotted_when_a_strategy_reports_it(tmp_path, reported, read):
    path = tmp_path / "j.sqlite"
    strategy = ImportanceLHS(reported)
    write_journal(path, meta=toy_meta(), rounds=2, batch_size=3, strategy=strategy)
    rec = read_campaign(path)
    assert rec.importance == (2, read)
    files = write_report(path, tmp_path / "r")
    assert (tmp_path / "r" / "importance.png") in files.images
    assert imread(tmp_path / "r" / "importance.png").shape[0] > 100
    page = files.index.read_text(encoding="utf-8")
    assert "Input importance</h2>\n<figure>" in page
    assert "As the strategy reported it to the journal (round 2)" in page
    assert files.table is not None and files.table.read_text().splitlines()[1].startswith("a,")


def test_input_importance_journalled_as_a_note_is_found(tmp_path):
    path = tmp_path / "j.sqlite"
    write_journal(path, meta=toy_meta(), rounds=1, batch_size=3)
    with Journal.open(path) as j:
        j.note(9.0, "input_importance", {"loss": {"a": 0.3, "b": 0.1}, "peak_nm": [12.0, 2.0]})
    out = tmp_path / "r"
    write_report(path, out)
    assert read_campaign(path).importance == (
        None,
        {"loss": {"a": 0.3, "b": 0.1}, "peak_nm": {"a": 12.0, "b": 2.0}},
    )
    assert imread(out / "importance.png").shape[1] >= 600


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p: p.write_bytes(b"not a database " * 200), "not a journal"),
        (lambda p: sqlite3.connect(p).executescript("CREATE TABLE t (x);"), "not an sdl-agent"),
        (lambda p: None, "no journal at"),
    ],
    ids=["garbage", "another-sqlite", "missing"],
)
def test_a_missing_or_corrupt_journal_is_refused_with_exit_2(tmp_path, make, says):
    path = tmp_path / "j.sqlite"
    make(path)
    before = path.read_bytes() if path.exists() else None
    proc = sdl_agent("report", str(path), "--out", str(tmp_path / "r"))
    assert proc.returncode == 2
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()
    assert (path.read_bytes() if path.exists() else None) == before


def test_a_campaign_still_writing_its_journal_can_be_reported_and_goes_on(tmp_path):
    path = tmp_path / "live.sqlite"
    campaign = Campaign(toy_settings(rounds=1, batch_size=3), seed=1)
    args = dict(campaign_id="toy", config_hash="h" * 64, seed=1, parameters=["a", "b"])
    with Journal.create(path, **args, extra_meta=toy_meta()) as writer:
        JournalledLab(campaign, writer).run()  # committed to the WAL, the writer still open
        assert Path(f"{path}-wal").stat().st_size > 0
        proc = sdl_agent("report", str(path), "--out", str(tmp_path / "r"))
        assert proc.returncode == 0, proc.stderr
        assert "3 proposed: 3 complete" in (tmp_path / "r" / "index.html").read_text()
        writer.note(1.0, "after_the_report", {})  # the writer is not blocked
    with Journal.open(path, read_only=True) as j:
        assert any(k == "after_the_report" for (k,) in j.query("SELECT kind FROM events"))


def test_a_journal_in_a_directory_the_reader_cannot_write_is_still_read(journal):
    """E.g. the lab's journal read by another user, or an archive on read-only media."""
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:  # root writes anywhere: read as nobody instead
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv to drop privileges")
        prefix = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    base = Path(tempfile.mkdtemp())  # pytest's tmp_path is private to its owner
    try:
        base.chmod(0o755)
        (base / "archive").mkdir()
        shutil.copyfile(journal[0], base / "archive" / "journal.sqlite")
        (base / "archive").chmod(0o555)
        (base / "out").mkdir(mode=0o777)
        (base / "out").chmod(0o777)
        proc = sdl_agent(
            "report", str(base / "archive" / "journal.sqlite"), "--out", str(base / "out" / "r"),
            prefix=prefix, env={**os.environ, "MPLCONFIGDIR": str(base / "out" / "mpl")},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert "15 proposed: 15 complete" in (base / "out" / "r" / "index.html").read_text()
        assert sorted(p.name for p in (base / "archive").iterdir()) == ["journal.sqlite"]
    finally:
        (base / "archive").chmod(0o755)
        shutil.rmtree(base)


def test_a_read_only_journal_refuses_writes(journal):
    path, _ = journal
    with Journal.open(path, read_only=True) as j, pytest.raises(JournalError, match="readonly"):
        j.note(0.0, "should_not_land", {})


def test_a_run_stores_its_config_and_target_in_the_journal():
    from agent.config import CampaignConfig

    cfg = CampaignConfig.from_toml(ROOT / "examples" / "agnp.toml")
    meta = run_meta(cfg)
    target = json.loads(meta["target"])
    assert (target["wl_start"], target["wl_step"], len(target["values"])) == (380.0, 1.0, 421)
    assert max(target["values"]) == pytest.approx(float(cfg.target().max()))
    config = json.loads(meta["config"])
    assert [p["name"] for p in config["parameters"]] == [
        "q_agno3",
        "q_pva",
        "q_tsc",
        "q_seed",
        "q_tot",
    ]
    assert "bus" not in config


def test_help_says_what_the_report_writes():
    proc = sdl_agent("report", "--help")
    assert proc.returncode == 0
    words = ("best_loss.png", "parameters.png", "index.html", "read", "exit status")
    for word in (*words, "input_importance.csv", "--no-importance", f"{MIN_CONDITIONS} complete"):
        assert word in proc.stdout


# --- input importance the report computes -------------------------------------------


@pytest.fixture(scope="module")
def enough(tmp_path_factory) -> Path:
    """A journal of exactly MIN_CONDITIONS complete conditions, with spectra."""
    path = tmp_path_factory.mktemp("enough") / "journal.sqlite"
    write_journal(path, meta=toy_meta(), rounds=4, batch_size=MIN_CONDITIONS // 4)
    assert len(read_campaign(path).complete) == MIN_CONDITIONS
    return path


def test_the_report_computes_input_importance_from_the_journal_spectra(enough, tmp_path):
    out = tmp_path / "r"
    proc = sdl_agent("report", str(enough), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "importance.png" in proc.stdout and "input_importance.csv" in proc.stdout
    assert imread(out / "importance.png").shape[1] >= 600
    header, *rows = (out / "input_importance.csv").read_text().splitlines()
    assert header == "input,loss,peak_nm"
    table = {r.split(",")[0]: [float(v) for v in r.split(",")[1:]] for r in rows}
    assert sorted(table) == ["a", "b"]
    assert all(math.isfinite(v) and v >= 0 for v in table["a"] + table["b"])
    # the toy spectrum moves with a alone (its loss 0.023 against b's 0.005), and its peak
    # never leaves 420 nm whatever the recipe
    assert rows[0].startswith("a,") and table["a"][0] > 3 * table["b"][0]
    assert table["a"][1] == table["b"][1] == 0.0
    page = (out / "index.html").read_text(encoding="utf-8")
    assert len(re.findall(r'src="data:image/png;base64,', page)) == len(PLOTS) + 1
    assert (
        "predicted peak wavelength (nm) of a spectrum model (5 small neural networks) that the "
        f"report trained on the journal&#x27;s median spectra of {MIN_CONDITIONS} complete "
        "conditions"
    ) in page
    assert f"<tr><td>a</td><td>{rows[0].split(',')[1]}</td>" in page  # the table, as the CSV
    # deterministic: the same journal gives the same numbers in another process
    again = write_report(enough, tmp_path / "again")
    assert (
        again.table is not None
        and again.table.read_text() == (out / "input_importance.csv").read_text()
    )


def test_no_importance_skips_it_and_the_page_says_so(enough, tmp_path):
    out = tmp_path / "r"
    proc = sdl_agent("report", str(enough), "--out", str(out), "--no-importance")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([*PLOTS, "index.html"])
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "Input importance</h2>\n<p>Not computed: skipped on request (sdl-agent report " in page


@pytest.mark.parametrize(
    ("breaks", "says"),
    [
        (lambda mp: mp.setitem(sys.modules, "shap", None), "pip install &#x27;.[explain]&#x27;"),
        (
            lambda mp: mp.setattr(
                SpectrumEnsemble, "fit", lambda *a, **k: (_ for _ in ()).throw(
                    ModelDiverged("non-finite loss in member 2 at epoch 7")
                ),
            ),
            "could not be trained on this journal&#x27;s spectra (non-finite loss in member 2",
        ),
    ],
    ids=["shap-missing", "fit-diverged"],
)  # fmt: skip
def test_without_shap_or_with_a_diverged_fit_the_page_says_why(
    enough, tmp_path, monkeypatch, breaks, says
):
    breaks(monkeypatch)
    files = write_report(enough, tmp_path / "r")
    assert files.table is None and not (tmp_path / "r" / "importance.png").exists()
    page = files.index.read_text(encoding="utf-8")
    assert "Input importance</h2>\n<p>Not available: " in page and says in page
