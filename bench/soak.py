"""Soak: a long, fast campaign with the real agent and drivers; are memory and file
descriptors flat?

Runs ``sdl-agent run`` (a real process, journalled, JSON logs to a file) against the
three simulated drivers (``python -m drivers ROLE --time-scale F``, as the demo starts
them, the pump with an fsynced ``--applied-log``) on TCP loopback for ``--minutes``,
then stops the agent with SIGTERM. The campaign is examples/agnp.toml with
``strategy.kind = lhs`` (no GP fit: the loop, not the optimiser, is soaked), no stop
rule but a round budget it never reaches. Every ``--sample-s`` seconds it reads, for
each of the four processes, the resident set (``VmRSS`` in ``/proc/PID/status``) and
the number of open file descriptors (entries of ``/proc/PID/fd``), and counts the
conditions completed so far (``condition_complete`` on the agent's status endpoint).

Figures per process: first, last and largest sample; over the second half (after
warm-up) the least-squares slopes of RSS (kB/min) and of the FD count (FDs/min),
the RSS growth, and the range of the FD count; the journal's size (with its WAL)
is sampled too. "Flat" means: the FD count does not change over the second half,
and the RSS grows by less than 5 MB (or 2 %) over it. The agent keeps the
campaign's history in memory by design (every condition's record, its median
spectrum and observation row), so its growth is judged after
subtracting that expected part: the heap a live core campaign of the same
settings keeps per condition completed (served in-process by perfect instruments
under ``tracemalloc``; see :func:`history_bytes_per_condition`), times the
conditions completed in the second half.

    python bench/soak.py                      # 12 minutes, time scale 0.01
    python bench/soak.py --minutes 1 --no-write
    python bench/soak.py --keep DIR           # keep journal, logs, samples
    python bench/soak.py --analyse DIR        # analyse a kept run again (no new run)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results import write_section  # noqa: E402

from agent import memtrace  # noqa: E402
from agent.config import CampaignConfig  # noqa: E402
from agent.core.campaign import Campaign  # noqa: E402
from agent.core.events import ProposalReady  # noqa: E402
from agent.core.testing import ToyLab  # noqa: E402
from agent.demo import find_free_base, start_drivers, stop_drivers  # noqa: E402
from agent.journal import Journal  # noqa: E402
from protocols import messages as m  # noqa: E402
from protocols.codec import decode  # noqa: E402
from protocols.errors import CodecError  # noqa: E402
from protocols.sockets import Endpoints  # noqa: E402

CAMPAIGN = ROOT / "examples" / "agnp.toml"
FLAT_MB = 5.0
FLAT_FRACTION = 0.02
SETTINGS = {
    "campaign.id": "soak",
    "strategy.kind": '"lhs"',
    "stop.max_rounds": 100000,
    "stop.target_loss": 0.0,
    "stop.wall_time_s": 10000000,
}


def sdl_agent(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from agent.cli import main; sys.exit(main())", *args]


def sample(pid: int) -> tuple[float, int]:
    """(RSS in MB, open file descriptors) of a live process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    return rss_kb / 1024.0, len(os.listdir(f"/proc/{pid}/fd"))


def soak(
    minutes: float, time_scale: float, sample_s: float, workdir: Path, trace_s: float = 0.0
) -> dict[str, Any]:
    """Start the agent and the drivers, sample them for ``minutes``, SIGTERM the agent.

    ``trace_s`` > 0: the agent runs under ``tracemalloc`` and writes a heap
    snapshot every ``trace_s`` seconds into ``workdir/trace`` (agent/memtrace.py)."""
    base = find_free_base()
    out = workdir / "run"
    sets = [x for k, v in SETTINGS.items() for x in ("--set", f"{k}={v}")]
    env = dict(os.environ)
    if trace_s > 0:
        env |= {memtrace.ENV: str(workdir / "trace"), f"{memtrace.ENV}_EVERY_S": str(trace_s)}
    with (workdir / "agent.log").open("wb") as err:
        agent = subprocess.Popen(
            sdl_agent("run", str(CAMPAIGN), "--base", base, "--out", str(out), *sets),
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
    drivers = start_drivers(
        base,
        time_scale=time_scale,
        seed=0,
        log_dir=workdir / "logs",
        extra={"pump": ["--applied-log", str(workdir / "applied.jsonl")]},
    )
    try:
        samples = asyncio.run(
            _watch({"agent": agent, **drivers}, Endpoints.from_base(base), out, minutes, sample_s)
        )
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(60)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        stop_drivers(drivers)
    if code != 0:
        raise RuntimeError(
            f"the agent exited with {code}: {(workdir / 'agent.log').read_text()[-2000:]}"
        )
    return {"samples": samples, "journal": out / "journal.sqlite", "minutes": minutes}


async def _watch(
    procs: dict[str, subprocess.Popen[bytes]],
    ep: Endpoints,
    out: Path,
    minutes: float,
    sample_s: float,
) -> list[dict[str, Any]]:
    """Every ``sample_s``: each process's RSS and FDs, the journal's size, and the
    conditions completed so far (counted from the agent's status endpoint)."""
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"condition_complete.")
    sub.connect(ep.status)
    done = 0
    samples: list[dict[str, Any]] = []

    async def count() -> None:
        nonlocal done
        while True:
            try:
                msg = decode(await sub.recv_multipart())
            except CodecError:
                continue
            if isinstance(msg, m.ConditionComplete):
                done += 1

    counter = asyncio.create_task(count())
    t0 = time.monotonic()
    try:
        while (elapsed := time.monotonic() - t0) < minutes * 60:
            row: dict[str, Any] = {"t": elapsed, "conditions": done, "journal_mb": _size(out)}
            for name, p in procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited early with {p.returncode}")
                row[name] = sample(p.pid)
            samples.append(row)
            await asyncio.sleep(sample_s)
    finally:
        counter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await counter
        sub.close()
        ctx.term()
    return samples


def _size(out: Path) -> float:
    """MB of the journal and its WAL (0 before they exist)."""
    names = ("journal.sqlite", "journal.sqlite-wal")
    return sum((out / n).stat().st_size for n in names if (out / n).exists()) / 2**20


def history_bytes_per_condition(journal: Path, rounds: int = 20) -> tuple[float, int]:
    """Bytes the agent's campaign keeps per condition completed, and how many
    conditions the soak's journal holds.

    Measured on a live core: the same settings served by perfect instruments
    (:class:`agent.core.testing.ToyLab`, a smooth spectrum with noise) for
    ``rounds`` rounds under ``tracemalloc``, the slope of the traced heap over
    conditions completed. (Before the replicates of a finished condition were
    released it was corrected for the soak's mean number of used droplets.)
    """
    cfg = CampaignConfig.from_toml(CAMPAIGN, overrides={k: _toml(v) for k, v in SETTINGS.items()})
    settings = cfg.to_settings()
    with Journal.open(journal) as j:
        soak = Campaign.restore(settings, cfg.campaign.seed, j.facts())
    done = [r for r in soak.conditions.values() if r.state == "complete"]
    soak_used = sum(r.n_used for r in done) / max(len(done), 1)
    grid = settings.grid
    marks: list[tuple[int, int]] = []  # (conditions completed, traced bytes) at each proposal

    class Lab(ToyLab):
        def spectrum(self, condition: str) -> np.ndarray:
            x = np.linspace(0.0, 1.0, grid.n)
            peak = 0.5 + 0.3 * np.exp(-(((x - 0.6) / 0.1) ** 2))
            return peak + 0.01 * self.rng.standard_normal(grid.n)

        def record(self, event: object, decisions: list[object], **kw: object) -> None:
            self.log.clear()  # the lab's own log is not the agent's
            if isinstance(event, ProposalReady):
                n = sum(r.state == "complete" for r in self.c.conditions.values())
                marks.append((n, tracemalloc.get_traced_memory()[0]))

    toy_settings = CampaignConfig.from_toml(
        CAMPAIGN,
        overrides={**{k: _toml(v) for k, v in SETTINGS.items()}, "stop.max_rounds": rounds},
    ).to_settings()
    gc.collect()
    tracemalloc.start()
    try:
        lab = Lab(Campaign(toy_settings, seed=0), seed=1)
        lab.run(max_steps=10**9)
    finally:
        tracemalloc.stop()
    live = [r for r in lab.c.conditions.values() if r.state == "complete"]
    toy_used = sum(r.n_used for r in live) / max(len(live), 1)
    later = marks[len(marks) // 4 :]  # past the first rounds' one-off allocations
    per_condition = _slope(np.array([n for n, _ in later], float), np.array([b for _, b in later]))
    # a finished condition keeps its median spectrum, not its used droplets' (the
    # number used no longer matters); kept for the record of how it was measured
    del soak_used, toy_used
    return per_condition, len(soak.conditions)


def _toml(v: object) -> object:
    return v.strip('"') if isinstance(v, str) else v


def analyse(run: dict[str, Any]) -> dict[str, Any]:
    samples = run["samples"]
    half = samples[len(samples) // 2 :]
    t = np.array([s["t"] for s in half]) / 60.0  # minutes
    cond = np.array([s["conditions"] for s in half], dtype=float)
    per_cond, n_restored = history_bytes_per_condition(run["journal"])
    journal = np.array([s["journal_mb"] for s in half])
    out: dict[str, Any] = {
        "conditions": samples[-1]["conditions"],
        "conditions_half": int(cond[-1] - cond[0]),
        "conditions_per_min": _slope(t, cond),
        "history_bytes_per_condition": per_cond,
        "restored_conditions": n_restored,
        "n_samples": len(samples),
        "half_minutes": float(t[-1] - t[0]),
        "journal_mb": float(samples[-1]["journal_mb"]),
        "journal_mb_per_min": _slope(t, journal),
    }
    with Journal.open(run["journal"]) as j:
        out["spectra"] = j.count("replicates")
    for name in ("agent", "pump", "spectrometer", "xrd"):
        rss = np.array([s[name][0] for s in samples])
        fds = np.array([s[name][1] for s in samples])
        rss_h = np.array([s[name][0] for s in half])
        fds_h = np.array([s[name][1] for s in half])
        growth = float(rss_h[-1] - rss_h[0])
        row = {
            "rss_first": float(rss[0]),
            "rss_last": float(rss[-1]),
            "rss_max": float(rss.max()),
            "rss_kb_per_min": _slope(t, rss_h * 1024.0),
            "rss_growth_half": growth,
            "fd_first": int(fds[0]),
            "fd_last": int(fds[-1]),
            "fd_max": int(fds.max()),
            "fd_per_min": _slope(t, fds_h.astype(float)),
            "fd_range_half": (int(fds_h.min()), int(fds_h.max())),
        }
        if name == "agent" and cond[-1] > cond[0]:
            row["rss_per_condition_kb"] = _slope(cond, rss_h) * 1024.0
            row["expected_history_mb"] = per_cond * (cond[-1] - cond[0]) / 2**20
            growth -= row["expected_history_mb"]
            row["rss_growth_half_net"] = growth
        limit = max(FLAT_MB, FLAT_FRACTION * float(rss_h[0]))
        row["flat"] = bool(growth < limit and fds_h.min() == fds_h.max())
        out[name] = row
    return out


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y on x (nan with fewer than 3 points or no spread in x)."""
    if len(x) < 3 or float(np.ptp(x)) == 0.0:
        return float("nan")
    return float(np.polyfit(x, y, 1)[0])


def report(res: dict[str, Any], args: argparse.Namespace, load: tuple[str, str], date: str) -> str:
    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    cpu_name = cpu.group(1).strip() if cpu else platform.processor()
    a = res["agent"]
    lines = [
        "## Soak: memory and file descriptors over a long fast campaign",
        "",
        f"- Date: {date}. Command: `python bench/soak.py "
        f"--minutes {args.minutes:g} --time-scale {args.time_scale:g} "
        f"--sample-s {args.sample_s:g}`.",
        f"- Machine: {os.cpu_count()} CPUs (nproc), {cpu_name}; Python "
        f"{platform.python_version()}; shared with other jobs. `uptime` load before: "
        f"{load[0]}; after: {load[1]}.",
        "- What runs: `sdl-agent run examples/agnp.toml` (journalled, `strategy.kind = lhs`, "
        "no stop rule within reach) and the three simulated drivers as processes on TCP "
        "loopback, stopped with SIGTERM at the end. RSS = `VmRSS` of `/proc/PID/status`, "
        f"FDs = entries of `/proc/PID/fd`, every {args.sample_s:g} s ({res['n_samples']} "
        "samples).",
        f"- Work done: {res['conditions']} conditions completed, {res['spectra']} spectra "
        f"journalled; in the second half ({res['half_minutes']:.1f} min) "
        f"{res['conditions_half']} conditions, {res['conditions_per_min']:.0f} a minute. The "
        f"journal (with its WAL) ended at {res['journal_mb']:.0f} MB, growing "
        f"{res['journal_mb_per_min']:.1f} MB/min in the second half.",
        "- Flat = over the second half (after warm-up) the FD count does not change and "
        f"the RSS grows by less than {FLAT_MB:g} MB or {FLAT_FRACTION:.0%} (the agent: after "
        "subtracting its in-memory campaign history, below). Slopes: least squares over "
        "the second half's samples.",
        "",
        "| process | RSS first / last / max (MB) | RSS slope, 2nd half (kB/min) "
        "| RSS growth, 2nd half (MB) | FDs first / last / max | FDs, 2nd half "
        "| FD slope (FDs/min) | flat |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("agent", "pump", "spectrometer", "xrd"):
        r = res[name]
        lo, hi = r["fd_range_half"]
        growth = f"{r['rss_growth_half']:+.1f}"
        if "rss_growth_half_net" in r:
            growth += f" ({r['rss_growth_half_net']:+.1f} net of history)"
        lines.append(
            f"| {name} | {r['rss_first']:.1f} / {r['rss_last']:.1f} / {r['rss_max']:.1f} "
            f"| {r['rss_kb_per_min']:+.0f} | {growth} | {r['fd_first']} / {r['fd_last']} / "
            f"{r['fd_max']} | {lo}..{hi} | {round(r['fd_per_min'], 2) + 0.0:+.2f} "
            f"| {'yes' if r['flat'] else 'NO'} |"
        )
    lines += [
        "",
        "The agent's in-memory history (by design, it keeps every condition): "
        f"{res['history_bytes_per_condition'] / 1024:.1f} kB per condition (a live core "
        "campaign of the same settings served by `ToyLab` under `tracemalloc`; its journal "
        "holds "
        f"{res['restored_conditions']} conditions). By "
        "regression of RSS on conditions completed (second half) the agent grew "
        f"{a.get('rss_per_condition_kb', float('nan')):.1f} kB per condition; the expected "
        f"history of the second half is {a.get('expected_history_mb', float('nan')):.1f} MB.",
    ]
    if "rss_growth_half_net" in a and res["conditions_half"] > 0:
        net_kb = a["rss_growth_half_net"] * 1024.0 / res["conditions_half"]
        lines[-1] += (
            f" Net of it the agent grew {a['rss_growth_half_net']:+.1f} MB, "
            f"{net_kb:+.1f} kB per condition completed."
        )
    lines.append("")
    return "\n".join(lines)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=12.0, help="wall time of the campaign")
    ap.add_argument("--time-scale", type=float, default=0.01)
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    ap.add_argument("--keep", type=Path, help="keep the run's files here (journal, logs)")
    ap.add_argument(
        "--trace",
        type=float,
        default=0.0,
        metavar="S",
        help="leak hunt: run the agent under tracemalloc, a heap snapshot every S seconds; "
        "prints the sites that grew from the first (S seconds in) to the last (implies "
        "--no-write: tracing distorts RSS and pace)",
    )
    ap.add_argument(
        "--analyse",
        type=Path,
        metavar="DIR",
        help="no new run: analyse the run kept in DIR (by --keep) again",
    )
    args = ap.parse_args()
    if args.analyse is not None:
        meta = json.loads((args.analyse / "meta.json").read_text())
        for k in ("minutes", "time_scale", "sample_s"):
            setattr(args, k, meta[k])
        run = {
            "samples": json.loads((args.analyse / "samples.json").read_text()),
            "journal": args.analyse / "run" / "journal.sqlite",
        }
        res = analyse(run)
        text = report(res, args, tuple(meta["load"]), meta["date"])  # type: ignore[arg-type]
    else:
        load_before = uptime()
        with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
            workdir = args.keep or Path(tmp)
            workdir.mkdir(parents=True, exist_ok=True)
            run = soak(args.minutes, args.time_scale, args.sample_s, workdir, args.trace)
            if args.trace > 0:
                args.no_write = True
                _print_trace(workdir / "trace", run["samples"])
            (workdir / "samples.json").write_text(json.dumps(run["samples"]))
            load = (_load(load_before), _load(uptime()))
            meta = {
                "minutes": args.minutes,
                "time_scale": args.time_scale,
                "sample_s": args.sample_s,
                "load": load,
                "date": dt.date.today().isoformat(),
            }
            (workdir / "meta.json").write_text(json.dumps(meta))
            res = analyse(run)
        text = report(res, args, load, meta["date"])
    print(text)
    if not args.no_write:
        write_section("soak", text)
    return 0 if all(res[n]["flat"] for n in ("agent", "pump", "spectrometer", "xrd")) else 1


def _print_trace(trace: Path, samples: list[dict[str, Any]]) -> None:
    """The allocation sites that grew from the agent's first heap snapshot (one
    period in) to its last, by line and by traceback (agent/memtrace.py)."""
    reports = sorted(trace.glob("growth-*.txt"))
    if not reports:
        print("tracemalloc: no growth report (a run shorter than two --trace periods)")
        return
    print(f"tracemalloc: {reports[-1].name}; {samples[-1]['conditions']} conditions in all")
    print(reports[-1].read_text())


def _load(line: str) -> str:
    return line.split("load average:")[-1].strip() if "load average" in line else line


if __name__ == "__main__":
    sys.exit(main())
