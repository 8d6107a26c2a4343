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
warm-up) the least-squares slope of RSS per hour, the RSS growth, and the range of
the FD count. "Flat" means: the FD count does not change over the second half, and
the RSS grows by less than 5 MB (or 2 %) over it. The agent keeps the campaign's
history in memory by design (every condition's record, its median spectrum and its
observation row); the script measures what that costs per condition by restoring
the run's journal into a fresh ``Campaign`` under ``tracemalloc``, and judges the
agent's RSS growth after subtracting that expected part (and says so).

    python bench/soak.py                      # 12 minutes, time scale 0.01
    python bench/soak.py --minutes 1 --no-write
"""

from __future__ import annotations

import argparse
import asyncio
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

from agent.config import CampaignConfig  # noqa: E402
from agent.core.campaign import Campaign  # noqa: E402
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


async def soak(minutes: float, time_scale: float, sample_s: float, workdir: Path) -> dict[str, Any]:
    base = find_free_base()
    ep = Endpoints.from_base(base)
    out = workdir / "run"
    sets = [x for k, v in SETTINGS.items() for x in ("--set", f"{k}={v}")]
    err = (workdir / "agent.log").open("wb")
    agent = subprocess.Popen(
        sdl_agent("run", str(CAMPAIGN), "--base", base, "--out", str(out), *sets),
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    err.close()
    drivers = start_drivers(
        base,
        time_scale=time_scale,
        seed=0,
        log_dir=workdir / "logs",
        extra={"pump": ["--applied-log", str(workdir / "applied.jsonl")]},
    )
    procs = {"agent": agent, **drivers}
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
            row: dict[str, Any] = {"t": elapsed, "conditions": done}
            for name, p in procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited early with {p.returncode}")
                row[name] = sample(p.pid)
            samples.append(row)
            await asyncio.sleep(sample_s)
        agent.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(agent.wait, 60)
    finally:
        counter.cancel()
        sub.close()
        ctx.term()
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        stop_drivers(drivers)
    if code != 0:
        raise RuntimeError(f"the agent exited with {code}: {(workdir / 'agent.log').read_text()[-2000:]}")
    return {"samples": samples, "journal": out / "journal.sqlite", "minutes": minutes}


def history_bytes_per_condition(journal: Path) -> tuple[float, int]:
    """Python heap a restored campaign holds per condition (tracemalloc), and how many."""
    cfg = CampaignConfig.from_toml(CAMPAIGN, overrides={k: _toml(v) for k, v in SETTINGS.items()})
    with Journal.open(journal) as j:
        facts = j.facts()
    settings = cfg.to_settings()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    campaign = Campaign.restore(settings, cfg.campaign.seed, facts)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    n = len(campaign.conditions)
    return (after - before) / max(n, 1), n


def _toml(v: object) -> object:
    return v.strip('"') if isinstance(v, str) else v


def analyse(run: dict[str, Any]) -> dict[str, Any]:
    samples = run["samples"]
    half = samples[len(samples) // 2 :]
    t = np.array([s["t"] for s in half]) / 3600.0
    cond = np.array([s["conditions"] for s in half], dtype=float)
    per_kb, n_restored = history_bytes_per_condition(run["journal"])
    out: dict[str, Any] = {
        "conditions": samples[-1]["conditions"],
        "conditions_half": int(cond[-1] - cond[0]),
        "history_bytes_per_condition": per_kb,
        "restored_conditions": n_restored,
        "n_samples": len(samples),
    }
    with Journal.open(run["journal"]) as j:
        out["spectra"] = j.count("replicates")
    for name in ("agent", "pump", "spectrometer", "xrd"):
        rss = np.array([s[name][0] for s in samples])
        fds = np.array([s[name][1] for s in samples])
        rss_h = np.array([s[name][0] for s in half])
        fds_h = np.array([s[name][1] for s in half])
        slope = float(np.polyfit(t, rss_h, 1)[0]) if len(half) > 2 else float("nan")
        growth = float(rss_h[-1] - rss_h[0])
        row = {
            "rss_first": float(rss[0]),
            "rss_last": float(rss[-1]),
            "rss_max": float(rss.max()),
            "rss_slope_mb_h": slope,
            "rss_growth_half": growth,
            "fd_first": int(fds[0]),
            "fd_last": int(fds[-1]),
            "fd_max": int(fds.max()),
            "fd_range_half": (int(fds_h.min()), int(fds_h.max())),
        }
        if name == "agent" and cond[-1] > cond[0]:
            row["rss_per_condition_kb"] = float(np.polyfit(cond, rss_h, 1)[0]) * 1024.0
            row["expected_history_mb"] = per_kb * (cond[-1] - cond[0]) / 2**20
            growth -= row["expected_history_mb"]
            row["rss_growth_half_net"] = growth
        limit = max(FLAT_MB, FLAT_FRACTION * float(rss_h[0]))
        row["flat"] = bool(growth < limit and fds_h.min() == fds_h.max())
        out[name] = row
    return out


def report(res: dict[str, Any], args: argparse.Namespace, load: tuple[str, str]) -> str:
    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    cpu_name = cpu.group(1).strip() if cpu else platform.processor()
    a = res["agent"]
    lines = [
        "## Soak: memory and file descriptors over a long fast campaign",
        "",
        f"- Date: {dt.date.today().isoformat()}. Command: `python bench/soak.py "
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
        f"journalled ({res['conditions_half']} conditions in the second half).",
        "- Flat = over the second half (after warm-up) the FD count does not change and "
        f"the RSS grows by less than {FLAT_MB:g} MB or {FLAT_FRACTION:.0%} (the agent: after "
        "subtracting its in-memory campaign history, below).",
        "",
        "| process | RSS first / last / max (MB) | slope, 2nd half (MB/h) | growth, 2nd half (MB) "
        "| FDs first / last / max | FDs, 2nd half | flat |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("agent", "pump", "spectrometer", "xrd"):
        r = res[name]
        lo, hi = r["fd_range_half"]
        growth = f"{r['rss_growth_half']:+.1f}"
        if "rss_growth_half_net" in r:
            growth += f" ({r['rss_growth_half_net']:+.1f} net of history)"
        lines.append(
            f"| {name} | {r['rss_first']:.1f} / {r['rss_last']:.1f} / {r['rss_max']:.1f} "
            f"| {r['rss_slope_mb_h']:+.1f} | {growth} | {r['fd_first']} / {r['fd_last']} / "
            f"{r['fd_max']} | {lo}..{hi} | {'yes' if r['flat'] else 'NO'} |"
        )
    lines += [
        "",
        f"The agent's history: a journal of {res['restored_conditions']} conditions restored "
        "into a fresh `Campaign` under `tracemalloc` takes "
        f"{res['history_bytes_per_condition'] / 1024:.1f} kB of Python heap per condition "
        "(its record, median spectrum, observation row, proposal). By regression of RSS on "
        f"conditions completed (second half) the agent grew "
        f"{a.get('rss_per_condition_kb', float('nan')):.1f} kB per condition; the expected "
        f"history of the second half is {a.get('expected_history_mb', float('nan')):.1f} MB.",
        "",
    ]
    return "\n".join(lines)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=12.0)
    ap.add_argument("--time-scale", type=float, default=0.01)
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    ap.add_argument("--keep", type=Path, help="keep the run's files here (journal, logs)")
    args = ap.parse_args()
    load_before = uptime()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        run = asyncio.run(soak(args.minutes, args.time_scale, args.sample_s, workdir))
        (workdir / "samples.json").write_text(json.dumps(run["samples"]))
        res = analyse(run)
    load_after = uptime()
    text = report(res, args, (_load(load_before), _load(load_after)))
    print(text)
    if not args.no_write:
        write_section("soak", text)
    return 0 if all(res[n]["flat"] for n in ("agent", "pump", "spectrometer", "xrd")) else 1


def _load(line: str) -> str:
    return line.split("load average:")[-1].strip() if "load average" in line else line


if __name__ == "__main__":
    sys.exit(main())
