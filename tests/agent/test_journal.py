"""The journal: round trip, restore at every step, refusals, WAL, export.

A toy campaign is driven through the same seam the runtime uses (feed the
core, :meth:`Journal.commit` the step, then act), by perfect in-test
instruments; the restore is checked against the live campaign at every step.
"""

from __future__ import annotations

import csv
import signal
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import structlog

from agent.cli import main
from agent.core.campaign import Campaign
from agent.core.events import (
    Announce,
    DriverUp,
    Note,
    PhaseLabelIn,
    RequestProposal,
    SendSetpoint,
    SpectrumIn,
)
from agent.core.replicates import ReplicateSettings
from agent.core.testing import TOY_GRID, SilentDriverLab, ToyLab, toy_settings
from agent.export import export_csv
from agent.journal import Journal, JournalError, JournalRefused

ROLES = ("pump", "spectrometer", "xrd")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agnp.toml"


@pytest.fixture(autouse=True)
def _keep_logging():
    """``main(["run", ...])`` configures structlog onto pytest's captured stderr; put it back."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def new_journal(path: Path, **kw) -> Journal:
    args = dict(campaign_id="toy", config_hash="h" * 64, seed=0, parameters=["a", "b"])
    args.update(kw)
    return Journal.create(path, **args)


class JournalledLab(ToyLab):
    """Perfect instruments; every step goes core -> journal -> act, as in the runtime."""

    def __init__(self, campaign: Campaign, journal: Journal, on_step=None) -> None:
        super().__init__(campaign, noise=0.02, seed=5)
        self.j = journal
        self.on_step = on_step or (lambda lab, decisions: None)

    def record(self, event, decisions, **kw) -> None:
        self.j.commit(self.c, event, decisions, self.now, **kw)
        self.on_step(self, decisions)


def outcome(c: Campaign) -> dict:
    return {
        cid: (r.state, r.median_loss, r.median_sd, r.n_used, r.failure, tuple(r.labels))
        for cid, r in c.conditions.items()
        if r.state in ("complete", "failed")
    }


def same_state(restored: Campaign, live: Campaign) -> None:
    assert restored.round == live.round
    assert restored.rounds_complete == live.rounds_complete
    assert restored.best_by_round == live.best_by_round
    assert outcome(restored) == outcome(live)
    assert restored.space.bounds[0].tolist() == live.space.bounds[0].tolist()
    assert restored.space.bounds[1].tolist() == live.space.bounds[1].tolist()
    assert len(restored.expansions) == len(live.expansions)
    assert restored.stopped == live.stopped
    assert list(restored.conditions) == list(live.conditions)
    obs_r, obs_l = restored.observations, live.observations
    np.testing.assert_array_equal(obs_r.x, obs_l.x)
    np.testing.assert_array_equal(obs_r.loss, obs_l.loss)


def test_a_full_campaign_round_trips_through_the_journal(tmp_path):
    settings = toy_settings(rounds=3, batch_size=4)
    live = Campaign(settings, seed=3)
    with new_journal(tmp_path / "j.sqlite") as j:
        JournalledLab(live, j).run()
    assert live.stopped and live.rounds_complete == 3
    with Journal.open(tmp_path / "j.sqlite", campaign_id="toy", config_hash="h" * 64) as j:
        restored = Campaign.restore(settings, 3, j.facts())
        assert j.count("conditions") == 12 and j.count("rounds") == 3
        assert j.count("replicates") >= 12 * 3
    same_state(restored, live)


def test_late_labels_are_restored_on_their_condition_and_rejected_ones_stay_out(tmp_path):
    from agent.core.phase import PhaseSettings

    phase = PhaseSettings(required="Ag-fcc", phases=("Ag-fcc", "Ag2O"))
    settings = toy_settings(rounds=2, batch_size=3, phase=phase)
    live = Campaign(settings, seed=3)

    class LateLab(JournalledLab):
        def label(self, condition):
            return None

    with new_journal(tmp_path / "j.sqlite") as j:
        lab = LateLab(live, j)
        lab.run()
        lab.feed(PhaseLabelIn("r01-c02", "Ag2O", 0.9, lab.now))  # a round late
        lab.feed(PhaseLabelIn("r01-c03", "AgCl", 0.9, lab.now))  # unknown: rejected
        lab.feed(PhaseLabelIn("r09-c01", "Ag-fcc", 0.9, lab.now))  # no such condition
        lab.feed(PhaseLabelIn("r01-c02", "Ag-fcc", 0.6, lab.now))  # contradicts, less sure
    with Journal.open(tmp_path / "j.sqlite", campaign_id="toy", config_hash="h" * 64) as j:
        restored = Campaign.restore(settings, 3, j.facts())
    assert restored.conditions["r01-c02"].labels == [("Ag2O", 0.9), ("Ag-fcc", 0.6)]
    assert restored.conditions["r01-c03"].labels == []
    np.testing.assert_array_equal(restored.observations.feasible, live.observations.feasible)
    same_state(restored, live)
    _, _, labels = export_csv(tmp_path / "j.sqlite", tmp_path / "csv")
    rows = list(csv.DictReader(labels.read_text().splitlines()))
    assert [(r["condition"], r["phase"], r["status"]) for r in rows] == [
        ("r01-c02", "Ag2O", "accepted"),
        ("r01-c03", "AgCl", "rejected"),
        ("r09-c01", "Ag-fcc", "rejected"),
        ("r01-c02", "Ag-fcc", "accepted"),
    ]
    assert "not one of" in rows[1]["reason"] and rows[2]["reason"] == "unknown condition"
    assert "contradicts Ag2O" in rows[3]["reason"]
    text = (tmp_path / "csv" / "conditions.csv").read_text()
    cond = {r["condition"]: r for r in csv.DictReader(text.splitlines())}
    assert (cond["r01-c02"]["phase"], cond["r01-c03"]["phase"]) == ("Ag2O", "")


class LossyLab(JournalledLab):
    """Loses droplet 1 of every condition on the way: the campaign asks for it again
    after the droplet timeout (``droplets_missing``), in the same attempt."""

    def __init__(self, campaign: Campaign, journal: Journal, on_step=None) -> None:
        super().__init__(campaign, journal, on_step)
        self.idle_tick = 0.5

    def delivered(self, condition: str, replicate: int) -> bool:
        return replicate != 1


@pytest.mark.parametrize("lab_class", [JournalledLab, LossyLab], ids=["perfect", "lossy"])
def test_restore_at_every_step_matches_the_live_campaign_and_its_next_proposal(tmp_path, lab_class):
    settings = toy_settings(rounds=3, batch_size=3)
    if lab_class is LossyLab:
        settings = replace(settings, replicates=replace(settings.replicates, droplet_timeout_s=1.0))
    path = tmp_path / "j.sqlite"
    checked = {"steps": 0, "proposals": 0}

    def check(lab: JournalledLab, decisions: list) -> None:
        checked["steps"] += 1
        restored = Campaign.restore(settings, 7, lab.j.facts())
        if any(isinstance(d, RequestProposal) for d in decisions):
            # the uninterrupted run is about to propose: the restored one proposes the same
            same_state(restored, lab.c)
            state = lab.c.rng_state
            live_batch, _ = lab.c.propose_batch()
            lab.c.rng.bit_generator.state = state
            np.testing.assert_array_equal(restored.propose_batch()[0].x, live_batch.x)
            checked["proposals"] += 1
        else:
            assert outcome(restored) == outcome(lab.c)

    with new_journal(path) as j:
        lab = lab_class(Campaign(settings, seed=7), j, on_step=check)
        lab.run()
    assert checked["proposals"] == 3 and checked["steps"] > 50
    missing = [d for d in lab.log if isinstance(d, Note) and d.event == "droplets_missing"]
    assert len(missing) == (9 if lab_class is LossyLab else 0)
    with sqlite3.connect(path) as db:  # each write-off is journalled, with its new acquire
        kinds = [k for (k,) in db.execute("SELECT kind FROM events ORDER BY seq")]
    assert kinds.count("droplets_missing") == len(missing)


@pytest.mark.parametrize(
    ("role", "fault", "why"),
    [
        ("spectrometer", None, "spectrometer is silent"),
        ("pump", "stall", "pump reported a fatal fault (stall)"),
    ],
)
def test_a_pause_that_made_the_pump_safe_restores_at_every_step(tmp_path, role, fault, why):
    """A driver drops out mid-condition (silent, or a fatal fault): the safe state is
    journalled as a command with its reason, the restart is a new setpoint fact, and
    a restore at every step (during the pause too) equals the live campaign."""
    settings = toy_settings(rounds=2, batch_size=3)
    path = tmp_path / "j.sqlite"
    steps = []

    class Lab(SilentDriverLab):
        def record(self, event, decisions, **kw) -> None:
            self.j.commit(self.c, event, decisions, self.now, **kw)
            restored = Campaign.restore(settings, 7, self.j.facts())
            assert outcome(restored) == outcome(self.c)
            steps.append(self.c.state)

    with new_journal(path) as j:
        lab = Lab(Campaign(settings, seed=7), role=role, fault=fault, noise=0.02, seed=5)
        lab.j = j
        lab.run()
        rows = list(j.query("SELECT cmd_id, body FROM events WHERE kind = 'safe_state'"))
        attempts = list(j.query("SELECT cmd_id FROM setpoints WHERE condition = 'r01-c02'"))
    assert "paused" in steps and lab.c.stopped
    assert rows[0][0] == "toy.r01-c02.a1.safe" and why in rows[0][1]
    assert [a for (a,) in attempts] == ["toy.r01-c02.a1", "toy.r01-c02.a2"]
    with Journal.open(path) as j:
        same_state(Campaign.restore(settings, 7, j.facts()), lab.c)


def test_a_setpoint_not_yet_acked_is_resent_with_the_same_command_id(tmp_path):
    settings = toy_settings(rounds=2, batch_size=3)
    cut: dict = {}

    def stop_after_second_setpoint(lab: JournalledLab, decisions: list) -> None:
        sent = [d for d in decisions if isinstance(d, SendSetpoint)]
        if sent and sent[0].condition.endswith("c02") and "facts" not in cut:
            cut["facts"], cut["cmd_id"] = lab.j.facts(), sent[0].cmd_id

    with new_journal(tmp_path / "j.sqlite") as j:
        JournalledLab(Campaign(settings, seed=1), j, on_step=stop_after_second_setpoint).run()
    restored = Campaign.restore(settings, 1, cut["facts"])
    assert restored.active is not None and restored.active.state == "setting"
    out = restored.start(100.0)
    for role in ROLES:
        out += restored.handle(DriverUp(role, 100.0))
    resent = [d for d in out if isinstance(d, SendSetpoint)]
    assert [d.cmd_id for d in resent] == [cut["cmd_id"]]
    assert not any(isinstance(d, RequestProposal) for d in out)


def test_a_condition_measuring_at_the_crash_starts_a_new_attempt(tmp_path):
    settings = toy_settings(rounds=2, batch_size=3)
    cut: dict = {}

    def stop_while_measuring(lab: JournalledLab, decisions: list) -> None:
        rec = lab.c.active
        if rec is not None and rec.state == "measuring" and rec.round == 2 and "facts" not in cut:
            cut["facts"], cut["rec"] = lab.j.facts(), (rec.condition, rec.cmd_id)

    with new_journal(tmp_path / "j.sqlite") as j:
        live = Campaign(settings, seed=1)
        JournalledLab(live, j, on_step=stop_while_measuring).run()
    restored = Campaign.restore(settings, 1, cut["facts"])
    cid, cmd_id = cut["rec"]
    assert restored.active is not None and restored.active.condition == cid
    out = restored.start(5.0)
    for role in ROLES:
        out += restored.handle(DriverUp(role, 5.0))
    resent = [d for d in out if isinstance(d, SendSetpoint)]
    assert len(resent) == 1 and resent[0].condition == cid
    assert resent[0].cmd_id != cmd_id and resent[0].cmd_id.endswith(".a2")
    assert any(isinstance(d, Note) and d.event == "condition_restarted" for d in out)
    # and it finishes like the uninterrupted campaign would (same conditions)
    with new_journal(tmp_path / "k.sqlite") as k:
        lab = JournalledLab(restored, k)
        lab.serve(out)
    assert restored.stopped and set(restored.conditions) == set(live.conditions)
    assert all(r.state == "complete" for r in restored.conditions.values())


def test_every_spectrum_is_written_with_its_loss_and_verdict(tmp_path):
    settings = toy_settings(rounds=1, batch_size=2)
    c = Campaign(settings, seed=0)
    with new_journal(tmp_path / "j.sqlite") as j:
        lab = JournalledLab(c, j)
        lab.run()
        cid = next(iter(c.conditions))
        # a late duplicate and a wrong grid: rejected, with reasons, and journalled
        lab.feed(SpectrumIn(cid, 0, np.ones(5), TOY_GRID.start, TOY_GRID.step, 9.0))
        lab.feed(SpectrumIn(cid, 99, np.ones(3), TOY_GRID.start, TOY_GRID.step, 9.0))
    db = sqlite3.connect(tmp_path / "j.sqlite")
    rows = db.execute("SELECT verdict, code, loss, reason FROM replicates ORDER BY seq").fetchall()
    db.close()
    accepted = [r for r in rows if r[0] == "accepted"]
    assert accepted and all(r[2] is not None and 0 <= r[2] <= 1 for r in accepted)
    assert rows[-1][0] == "rejected" and rows[-1][1] == "not_active" and rows[-1][3]
    assert rows[-2][0] == "rejected"


def test_journal_is_wal_with_the_synchronous_level_asked_for(tmp_path):
    for level, code in (("NORMAL", 1), ("FULL", 2)):
        path = tmp_path / f"{level}.sqlite"
        with new_journal(path, synchronous=level) as j:
            assert j._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert j._db.execute("PRAGMA synchronous").fetchone()[0] == code
    with pytest.raises(ValueError, match="synchronous"):
        new_journal(tmp_path / "x.sqlite", synchronous="OFF")


def test_an_existing_journal_is_never_overwritten(tmp_path):
    path = tmp_path / "j.sqlite"
    new_journal(path).close()
    before = path.read_bytes()
    with pytest.raises(JournalRefused, match=r"already exists.*--resume"):
        new_journal(path)
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if "creating" in p.name]  # built aside, linked in


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"campaign_id": "other"}, "belongs to campaign 'toy', not 'other'"),
        ({"config_hash": "x" * 64}, "another configuration"),
    ],
)
def test_another_campaigns_journal_is_refused(tmp_path, kw, match):
    path = tmp_path / "j.sqlite"
    new_journal(path).close()
    args = {"campaign_id": "toy", "config_hash": "h" * 64, **kw}
    with pytest.raises(JournalRefused, match=match):
        Journal.open(path, **args)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: p.write_bytes(b"this is not a database at all" * 100),
        lambda p: sqlite3.connect(p).executescript("CREATE TABLE t (x); INSERT INTO t VALUES (1);"),
        lambda p: p.write_bytes(b""),
    ],
    ids=["garbage", "someone-elses-sqlite", "empty"],
)
def test_a_file_that_is_not_a_journal_is_refused_and_left_alone(tmp_path, make):
    path = tmp_path / "j.sqlite"
    make(path)
    before = path.read_bytes()
    with pytest.raises(JournalRefused, match=r"not an sdl-agent journal|corrupt|not a journal"):
        Journal.open(path)
    assert path.read_bytes() == before


def test_a_damaged_journal_is_refused(tmp_path):
    path = tmp_path / "j.sqlite"
    with new_journal(path) as j:
        JournalledLab(Campaign(toy_settings(rounds=1, batch_size=3), seed=0), j).run()
    data = bytearray(path.read_bytes())
    assert len(data) > 8192
    data[4096:8192] = b"\xff" * 4096  # a torn page in the middle
    path.write_bytes(bytes(data))
    with pytest.raises(JournalRefused, match="corrupt"):
        Journal.open(path)


def test_export_writes_one_row_per_condition_and_per_spectrum(tmp_path):
    settings = toy_settings(rounds=2, batch_size=3)
    c = Campaign(settings, seed=2)
    with new_journal(tmp_path / "j.sqlite") as j:
        JournalledLab(c, j).run()
        n_spectra = j.count("replicates")
    conditions, replicates, labels = export_csv(tmp_path / "j.sqlite", tmp_path / "csv")
    assert len(list(csv.DictReader(labels.read_text().splitlines()))) == len(c.conditions)
    rows = list(csv.DictReader(conditions.read_text().splitlines()))
    assert [r["condition"] for r in rows] == list(c.conditions)
    for r in rows:
        rec = c.conditions[r["condition"]]
        assert r["status"] == "complete" and float(r["median_loss"]) == pytest.approx(
            rec.median_loss, abs=1e-6
        )
        assert r["phase"] == "Ag-fcc" and float(r["a"]) == pytest.approx(rec.recipe["a"], 1e-5)
    reps = list(csv.DictReader(replicates.read_text().splitlines()))
    assert len(reps) == n_spectra
    assert {r["final"] for r in reps} <= {"used", "outlier", ""}
    used = sum(r["final"] == "used" for r in reps)
    assert used == sum(rec.n_used for rec in c.conditions.values())
    assert len([k for k in reps[0] if k.startswith("a_")]) == TOY_GRID.n


def test_cli_refuses_to_start_onto_an_existing_journal_and_to_resume_a_missing_one(
    tmp_path, capsys
):
    journal = tmp_path / "j.sqlite"
    journal.write_bytes(b"precious")
    code = main(["run", str(EXAMPLE), "--journal", str(journal), "--out", str(tmp_path)])
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert journal.read_bytes() == b"precious"
    code = main(["run", str(EXAMPLE), "--journal", str(journal), "--resume"])
    assert code == 2 and "not a journal" in capsys.readouterr().err
    code = main(["run", str(EXAMPLE), "--journal", str(tmp_path / "none.sqlite"), "--resume"])
    assert code == 2 and "no journal" in capsys.readouterr().err
    assert main(["export", str(journal), "--csv", str(tmp_path / "o")]) == 2
    assert "not a journal" in capsys.readouterr().err
    assert journal.read_bytes() == b"precious"


def test_cli_refuses_a_journal_written_with_another_seed(tmp_path, capsys):
    from agent.config import CampaignConfig
    from agent.session import open_journal

    cfg = CampaignConfig.from_toml(EXAMPLE)
    journal = tmp_path / "j.sqlite"
    open_journal(cfg, 0, journal, resume=False).close()
    code = main(["run", str(EXAMPLE), "--journal", str(journal), "--resume", "--seed", "1"])
    assert code == 2 and "another configuration" in capsys.readouterr().err


def test_a_journal_whose_facts_contradict_each_other_is_refused(tmp_path, capsys):
    from agent.config import CampaignConfig
    from agent.session import open_journal

    journal = tmp_path / "j.sqlite"
    open_journal(CampaignConfig.from_toml(EXAMPLE), 0, journal, resume=False).close()
    with sqlite3.connect(journal) as db:  # a setpoint for a condition never proposed
        db.execute("INSERT INTO setpoints VALUES ('x.a1', 1, 0, 'r09-c01', 1, '{}')")
    code = main(["run", str(EXAMPLE), "--journal", str(journal), "--resume"])
    assert code == 2 and "cannot be replayed" in capsys.readouterr().err
    with sqlite3.connect(journal) as db:  # a round whose recipes are not JSON
        db.execute("DELETE FROM setpoints")
        db.execute("INSERT INTO rounds VALUES (1, 2, 0, 'not json', '[]', '{}', NULL)")
    code = main(["run", str(EXAMPLE), "--journal", str(journal), "--resume"])
    assert code == 2 and "cannot be read back" in capsys.readouterr().err


def test_announcements_are_journalled_before_they_are_published(tmp_path):
    settings = toy_settings(rounds=1, batch_size=2)
    seen: list[tuple[str, int]] = []

    def count_announces(lab: JournalledLab, decisions: list) -> None:
        for d in decisions:
            if isinstance(d, Announce):
                n = lab.j._db.execute(
                    "SELECT count(*) FROM events WHERE what = 'announce' AND kind = ?", (d.kind,)
                ).fetchone()[0]
                seen.append((d.kind, n))

    with new_journal(tmp_path / "j.sqlite") as j:
        JournalledLab(Campaign(settings, seed=0), j, on_step=count_announces).run()
    assert seen and all(n >= 1 for _, n in seen)
    assert {k for k, _ in seen} >= {"proposal", "condition_complete", "round_complete"}


def _spectrum(k: int) -> SpectrumIn:
    return SpectrumIn("r01-c01", k, np.zeros(TOY_GRID.n), TOY_GRID.start, TOY_GRID.step, 0.0)


def test_deferred_steps_are_committed_with_the_next_step_that_acts(tmp_path):
    """Group commit: deferred steps stay invisible (and would be lost in a crash)
    until a step that acts, a flush or the close commits them, in seq order."""
    path = tmp_path / "j.sqlite"
    campaign = Campaign(toy_settings(), seed=0)

    def rows() -> list[int]:
        return [r[0] for r in outside.execute("SELECT replicate FROM replicates ORDER BY seq")]

    with new_journal(path) as j:
        outside = sqlite3.connect(path)
        j.commit(campaign, _spectrum(0), [], 1.0, defer=True)
        j.commit(campaign, _spectrum(1), [], 1.0, defer=True)
        assert j.deferred == 2 and rows() == []
        j.commit(campaign, None, [Note("acted", {}, "info")], 2.0)  # one transaction with the group
        assert j.deferred == 0 and rows() == [0, 1]
        assert outside.execute("SELECT count(*) FROM events").fetchone()[0] == 1
        j.commit(campaign, _spectrum(2), [], 3.0, defer=True)
        j.note(3.0, "shell_note", {})  # the shell's own records commit the group too
        assert rows() == [0, 1, 2]
        j.commit(campaign, _spectrum(3), [], 4.0, defer=True)
        j.flush()
        assert rows() == [0, 1, 2, 3] and j.deferred == 0
        j.commit(campaign, _spectrum(4), [], 5.0, defer=True)
    assert rows() == [0, 1, 2, 3, 4]  # close() commits what was deferred
    seqs = [r[0] for r in outside.execute("SELECT seq FROM replicates ORDER BY seq")]
    assert seqs == sorted(set(seqs))
    outside.close()


def test_a_crash_loses_only_the_open_group(tmp_path):
    """SIGKILL with deferred steps open: the committed steps are intact, the group
    is gone, and the journal reopens with its sequence carrying on."""
    path = tmp_path / "j.sqlite"
    new_journal(path).close()
    child = f"""
import os, signal, numpy as np
from agent.core.campaign import Campaign
from agent.core.events import SpectrumIn
from agent.core.testing import TOY_GRID, toy_settings
from agent.journal import Journal
c = Campaign(toy_settings(), seed=0)
j = Journal.open({str(path)!r})
s = lambda k: SpectrumIn("r01-c01", k, np.zeros(TOY_GRID.n), TOY_GRID.start, TOY_GRID.step, 0.0)
j.commit(c, s(0), [], 1.0)
j.commit(c, s(1), [], 1.0, defer=True)
j.commit(c, s(2), [], 1.0, defer=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    done = subprocess.run([sys.executable, "-c", child], timeout=60, check=False)
    assert done.returncode == -signal.SIGKILL
    with Journal.open(path) as j:
        assert [r[0] for r in j.query("SELECT replicate FROM replicates")] == [0]
        campaign = Campaign(toy_settings(), seed=0)
        j.commit(campaign, _spectrum(3), [], 2.0)
        assert [r[0] for r in j.query("SELECT seq FROM replicates ORDER BY seq")] == [1, 2]


def test_the_checkpoint_thread_keeps_the_wal_bounded(tmp_path):
    """With checkpoints moved to a thread (no automatic checkpoint in a commit), the
    WAL is rewound after each checkpoint instead of growing with the campaign."""
    path = tmp_path / "j.sqlite"
    wal = path.with_name(path.name + "-wal")
    campaign = Campaign(toy_settings(), seed=0)
    big = np.zeros(4096)  # ~32 kB a row: 8 pages

    def write(j: Journal, start: int, n: int) -> None:
        for k in range(start, start + n):
            s = SpectrumIn("r01-c01", k, big, TOY_GRID.start, TOY_GRID.step, 0.0)
            j.commit(campaign, s, [], 1.0)

    with new_journal(path) as j:
        j.start_checkpoints(interval_s=3600.0)  # only when woken: deterministic
        assert j._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        write(j, 0, 200)  # ~1600 pages, past SQLite's automatic 1000: none ran
        grown = wal.stat().st_size
        assert grown > 1000 * 4096
        sizes = []
        for block in range(1, 6):
            j.checkpoint_now()
            write(j, 200 * block, 200)
            sizes.append(wal.stat().st_size)
        assert j.checkpoints == 5
        assert max(sizes) <= grown  # rewound after each checkpoint, not 6x the first
        j.stop_checkpoints()
        assert j._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    with Journal.open(path) as j:
        assert j.count("replicates") == 1200


class BatchedLab(JournalledLab):
    """As the runtime files a drained batch: a spectrum with nothing to act on is
    deferred (its row batched for one ``executemany``), the group is flushed every
    ``batch`` steps, and a step that acts commits the group with it."""

    def __init__(self, campaign: Campaign, journal: Journal, batch: int) -> None:
        super().__init__(campaign, journal)
        self.batch, self.steps, self.largest_group = batch, 0, 0

    def record(self, event, decisions, **kw) -> None:
        defer = not decisions and isinstance(event, SpectrumIn)
        self.j.commit(self.c, event, decisions, self.now, defer=defer, **kw)
        self.largest_group = max(self.largest_group, self.j.deferred)
        self.steps += 1
        if self.steps % self.batch == 0:
            self.j.flush()


def _rows(path: Path) -> dict[str, list[tuple]]:
    db = sqlite3.connect(path)
    try:
        return {
            t: db.execute(f"SELECT * FROM {t} ORDER BY seq").fetchall()
            for t in ("rounds", "conditions", "setpoints", "replicates", "events")
        }
    finally:
        db.close()


def _replicate_states(c: Campaign) -> dict:
    out = {}
    for cid, r in c.conditions.items():
        if r.replicates is not None:
            st = r.replicates.status()
            out[cid] = (st.used, st.outliers, st.median_loss, st.n_invalid, st.complete, st.reason)
            out[cid] += (r.replicates.median_loss(), st.used_spectra.tobytes())
    return out


@pytest.mark.parametrize("batch", [7, 64])
def test_batched_filing_writes_exactly_what_one_by_one_filing_writes(tmp_path, batch):
    """Deferred spectra batched into one executemany a group: the same replicate
    states, the same rows in every table (seq numbers included), the same restore."""
    rule = ReplicateSettings(min_count=3, max_count=12, per_acquire=12, timeout_s=10.0)
    settings = toy_settings(rounds=2, batch_size=3, replicates=rule)
    one, batched = Campaign(settings, seed=4), Campaign(settings, seed=4)
    with new_journal(tmp_path / "one.sqlite") as j:
        JournalledLab(one, j).run()
    with new_journal(tmp_path / "batched.sqlite") as j:
        lab = BatchedLab(batched, j, batch)
        lab.run()
    assert lab.largest_group >= 3  # the batching was exercised
    assert one.stopped and batched.stopped
    assert _replicate_states(batched) == _replicate_states(one)
    rows_one, rows_batched = _rows(tmp_path / "one.sqlite"), _rows(tmp_path / "batched.sqlite")
    assert len(rows_one["replicates"]) >= 3 * 2 * 3
    assert rows_batched == rows_one
    with Journal.open(tmp_path / "batched.sqlite", campaign_id="toy", config_hash="h" * 64) as j:
        restored = Campaign.restore(settings, 4, j.facts())
    same_state(restored, one)


def test_an_open_group_reads_whole_and_a_failed_write_drops_its_batched_rows(tmp_path):
    """Rows batched for the group are seen by this connection's reads, and a write
    that fails rolls them back with the group (nothing half-written)."""
    campaign = Campaign(toy_settings(), seed=0)
    with new_journal(tmp_path / "j.sqlite") as j:
        j.commit(campaign, _spectrum(0), [], 1.0, defer=True)
        j.commit(campaign, _spectrum(1), [], 1.0, defer=True)
        assert j.count("replicates") == 2
        j.commit(campaign, _spectrum(2), [], 1.0, defer=True)
        j._db.execute("DROP TABLE replicates")  # the next insert fails
        with pytest.raises(JournalError):
            j.flush()
        assert j.deferred == 0
        assert j.count("events") == 0


def test_the_journal_keeps_only_the_commands_that_may_be_sent_again(tmp_path):
    """Memory: resends are not journalled twice, but a finished condition's commands
    are never sent again, so the journal forgets them (also when it is reopened)."""
    sizes: list[int] = []
    path = tmp_path / "j.sqlite"
    with new_journal(path) as j:
        lab = JournalledLab(
            Campaign(toy_settings(rounds=4, batch_size=4), seed=7),
            j,
            on_step=lambda lab, d: sizes.append(len(lab.j._commands)),
        )
        lab.run()
        n_commands = j.count("setpoints") + len(
            j._db.execute("SELECT 1 FROM events WHERE what = 'command'").fetchall()
        )
    assert n_commands > 40 and max(sizes) <= 6  # one condition's commands and a safe state
    with Journal.open(path) as j:
        assert len(j._commands) <= 1  # the stop's safe state only
