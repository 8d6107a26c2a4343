"""What the journal costs: milliseconds per replicate spectrum, seconds to resume.

1. **Write cost per replicate spectrum.** A campaign of the reference file
   (examples/agnp.toml, 421-point spectra) is brought to a condition that is
   measuring; then each spectrum is fed to the core and the step is journalled
   with :meth:`agent.journal.Journal.commit`, the runtime's own seam (one
   transaction: the spectrum row with its loss and verdict, plus any decision).
   Timed: the commit alone, and the core's handling of the same spectrum for
   scale. Reference in the same run: a bare ``INSERT`` of the same bytes into a
   one-table SQLite file with the same settings, one transaction each. Both with
   ``synchronous=NORMAL`` (the default) and ``FULL`` (an fsync per commit).

2. **Resume from a 10,000-condition journal.** A journal of 10,000 conditions
   (667 rounds of 15, every droplet's spectrum journalled) is written through the
   real seam by a simulated lab (perfect instruments, droplets = target spectrum
   x a random amplitude + noise). Batches come from a cheap uniform sampler
   instead of the campaign's strategy (a restore never recomputes a batch, so
   how they were made does not matter, and 667 LHS batches would take minutes).
   Timed: ``Journal.open`` (with its integrity check), ``facts()``, and
   ``Campaign.restore``: what ``sdl-agent run --resume`` does before it binds.

    python bench/journal_cost.py                  # 10,000 conditions
    python bench/journal_cost.py --conditions 2000 --spectra 500   # quicker
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.config import CampaignConfig  # noqa: E402
from agent.core.campaign import Campaign  # noqa: E402
from agent.core.events import (  # noqa: E402
    DriverUp,
    FlowStable,
    SendSetpoint,
    SetpointAcked,
    SpectrumIn,
)
from agent.core.stopping import MaxRounds  # noqa: E402
from agent.core.strategies.base import Batch  # noqa: E402
from agent.core.testing import ToyLab  # noqa: E402
from agent.journal import Journal  # noqa: E402

ROLES = ("pump", "spectrometer", "xrd")


class UniformSampler:
    """Feasible recipes drawn uniformly in the box (rejection sampling); cheap."""

    name = "uniform"

    def propose(self, space, data, n, rng):
        out = []
        lo, hi = space.bounds
        while len(out) < n:
            x = lo + (hi - lo) * rng.random((4 * n, space.dim))
            out += list(x[space.is_feasible(x)])
        return Batch(np.array(out[:n]), (self.name,) * n)


def settings(max_rounds: int):
    cfg = CampaignConfig.from_toml(
        ROOT / "examples" / "agnp.toml",
        overrides={"strategy.kind": "lhs", "stop.max_rounds": max_rounds},
    )
    s = cfg.to_settings()
    u = UniformSampler()
    # a pure round budget: the file's target loss must not end the run early
    rule = MaxRounds(max_rounds)
    return dataclasses.replace(s, initial_strategy=u, strategy=u, stop_rule=rule), cfg


class Lab(ToyLab):
    """Perfect instruments behind the runtime's seam: core -> journal -> act."""

    def __init__(self, campaign: Campaign, journal: Journal, seed: int = 0) -> None:
        super().__init__(campaign, seed=seed, dt=0.001)
        self.j = journal
        self.target = campaign.settings.loss.target
        self.amp: dict[str, float] = {}

    def record(self, event, decisions, **kw) -> None:
        self.j.commit(self.c, event, decisions, self.now, **kw)

    def spectrum(self, cid: str) -> np.ndarray:
        amp = self.amp.setdefault(cid, float(self.rng.uniform(0.6, 1.4)))
        return amp * self.target + 0.003 * self.rng.standard_normal(self.target.size)


def write_cost(tmp: Path, n: int, sync: str) -> dict[str, float]:
    s, _ = settings(3)
    # one condition that keeps accepting droplets: never settles, no cap in reach
    rule = dataclasses.replace(s.replicates, settle_tolerance=0.0, max_count=n + 10)
    s = dataclasses.replace(s, replicates=rule)
    c = Campaign(s, seed=0)
    with Journal.create(
        tmp / f"write-{sync}.sqlite",
        campaign_id="bench",
        config_hash="0" * 64,
        seed=0,
        parameters=list(s.space.names),
        synchronous=sync,
    ) as j:
        lab = Lab(c, j)
        queue = lab.step(None, c.start(0.0))
        for role in ROLES:
            queue += lab.feed(DriverUp(role, 0.0))
        sp = next(d for d in queue if isinstance(d, SendSetpoint))
        lab.feed(SetpointAcked(sp.cmd_id, True, "", 0.0))
        lab.feed(FlowStable(sp.cmd_id, sp.condition, 0.0))
        cid = sp.condition
        spectra = [lab.spectrum(cid) for _ in range(n)]
        values = spectra[0]
        grid = s.grid
        commit, core = [], []
        for k in range(n):
            ev = SpectrumIn(cid, k, spectra[k], grid.start, grid.step, float(k))
            t0 = time.perf_counter()
            decisions = c.handle(ev)
            t1 = time.perf_counter()
            j.commit(c, ev, decisions, float(k))
            t2 = time.perf_counter()
            core.append(t1 - t0)
            commit.append(t2 - t1)
    blob = np.ascontiguousarray(values, dtype="<f8").tobytes()
    ref = []
    db = sqlite3.connect(tmp / f"ref-{sync}.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(f"PRAGMA synchronous = {sync}")
    db.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, spectrum BLOB)")
    for _ in range(n):
        t0 = time.perf_counter()
        db.execute("BEGIN")
        db.execute("INSERT INTO t (spectrum) VALUES (?)", (blob,))
        db.execute("COMMIT")
        ref.append(time.perf_counter() - t0)
    db.close()
    with sqlite3.connect(tmp / f"write-{sync}.sqlite") as db:
        verdicts = dict(db.execute("SELECT verdict, count(*) FROM replicates GROUP BY verdict"))
    assert verdicts.get("accepted", 0) >= 0.9 * n, verdicts  # timed what a run journals
    ms = 1e3
    return {
        "commit_ms": statistics.median(commit) * ms,
        "commit_p95_ms": float(np.percentile(commit, 95)) * ms,
        "bare_insert_ms": statistics.median(ref) * ms,
        "core_ms": statistics.median(core) * ms,
    }


def resume_cost(tmp: Path, n_conditions: int) -> dict[str, float]:
    rounds = -(-n_conditions // 15)
    s, _ = settings(rounds)
    path = tmp / "resume.sqlite"
    t0 = time.perf_counter()
    c = Campaign(s, seed=0)
    with Journal.create(
        path, campaign_id="bench", config_hash="0" * 64, seed=0, parameters=list(s.space.names)
    ) as j:
        Lab(c, j).run(max_steps=sys.maxsize)
        n_spectra = j.count("replicates")
    write_s = time.perf_counter() - t0
    assert c.stopped and len(c.conditions) == rounds * 15
    size_mb = sum(p.stat().st_size for p in tmp.glob("resume.sqlite*")) / 1e6

    t0 = time.perf_counter()
    with Journal.open(path, campaign_id="bench", config_hash="0" * 64) as j:
        t1 = time.perf_counter()
        facts = j.facts()
    t2 = time.perf_counter()
    restored = Campaign.restore(s, 0, facts)
    t3 = time.perf_counter()
    assert restored.rounds_complete == c.rounds_complete == rounds
    assert restored.best_by_round == c.best_by_round
    return {
        "conditions": len(restored.conditions),
        "spectra": n_spectra,
        "journal_mb": size_mb,
        "write_s": write_s,
        "open_s": t1 - t0,
        "facts_s": t2 - t1,
        "restore_s": t3 - t2,
        "total_s": t3 - t0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--conditions", type=int, default=10_000)
    p.add_argument("--spectra", type=int, default=2000, help="spectra timed per sync level")
    args = p.parse_args()
    print(f"# journal_cost  {platform.node()}  {platform.processor() or platform.machine()}")
    print(
        f"# python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, "
        f"cpus {os.cpu_count()}"
    )
    with tempfile.TemporaryDirectory(prefix="journal-bench-", dir=ROOT / "bench") as d:
        tmp = Path(d)
        for sync, n in (("NORMAL", args.spectra), ("FULL", max(50, args.spectra // 10))):
            r = write_cost(tmp, n, sync)
            print(
                f"write  synchronous={sync:6s} n={n:5d}: journal commit per spectrum "
                f"median {r['commit_ms']:.3f} ms (p95 {r['commit_p95_ms']:.3f}); bare sqlite "
                f"insert of the same bytes {r['bare_insert_ms']:.3f} ms; core handling "
                f"{r['core_ms']:.3f} ms"
            )
        r = resume_cost(tmp, args.conditions)
        print(
            f"resume {r['conditions']} conditions, {r['spectra']} spectra, "
            f"{r['journal_mb']:.0f} MB (written in {r['write_s']:.1f} s): "
            f"open+check {r['open_s']:.2f} s, read facts {r['facts_s']:.2f} s, "
            f"restore {r['restore_s']:.2f} s, total {r['total_s']:.2f} s"
        )


if __name__ == "__main__":
    main()
