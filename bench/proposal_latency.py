"""Seconds to propose a batch: local-penalisation EI against BoTorch's qLogNEI.

The space is the reference campaign's (examples/agnp.toml: five recipe
variables, the share-sum constraint <= 90, the pump channels), built here from
the TOML. For each data size ``n`` the script draws ``n`` feasible recipes of
the initial box, scores them with a smooth synthetic loss (a bowl with a ripple,
plus noise of 0.02), and times ``propose(space, data, 15, rng)`` of

* ``lp-ei``  (:class:`agent.core.strategies.bo.LocalPenalizationEI`, defaults), and
* ``qlognei`` (:class:`agent.core.strategies.bo.QLogNEI`: qLogNoisyExpectedImprovement,
  ``optimize_acqf(q=15, sequential=True)``, 10 restarts / 512 raw samples),

on the same data in the same run. Both include their GP fit. Medians over the
repeats; qLogNEI is repeated less at large ``n`` (it takes minutes there).
The table goes to stdout and into bench/RESULTS.md (its own section).

    python bench/proposal_latency.py            # n = 30, 135, 500, 1000
    python bench/proposal_latency.py --quick    # n = 30, 135, fewer repeats
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import statistics
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results import write_section  # noqa: E402

from agent.core.space import Channel, ChannelMap, LinearConstraint, Parameter, Space  # noqa: E402
from agent.core.strategies.base import Observations  # noqa: E402
from agent.core.strategies.bo import LocalPenalizationEI, QLogNEI  # noqa: E402

CAMPAIGN = ROOT / "examples" / "agnp.toml"
BATCH = 15


def agnp_space(path: Path = CAMPAIGN) -> Space:
    """The campaign file's parameters, linear constraints and pump channels."""
    cfg = tomllib.loads(path.read_text())
    params = tuple(
        Parameter(
            p["name"],
            p["bounds"][0],
            p["bounds"][1],
            p["hard_limits"][0],
            p["hard_limits"][1],
            expandable=p.get("expandable", False),
            resolution=p.get("resolution", 0.0),
            unit=p.get("unit", ""),
        )
        for p in cfg["parameters"]
    )
    constraints = tuple(
        LinearConstraint(c["coefficients"], c["upper"]) for c in cfg.get("constraints", [])
    )
    pump = cfg["pump"]
    channels = ChannelMap(
        pump["total"],
        tuple(
            Channel(
                c["name"],
                share=c.get("share"),
                ratio=c.get("ratio"),
                min_flow=c.get("min_flow", 0.0),
                max_flow=c.get("max_flow", float("inf")),
            )
            for c in pump["channels"]
        ),
    )
    return Space(params, constraints, channels)


def synthetic_data(space: Space, n: int, seed: int) -> Observations:
    """``n`` feasible recipes of the box and a smooth noisy loss of them."""
    rng = np.random.default_rng(seed)
    chunks: list[np.ndarray] = []
    while sum(len(c) for c in chunks) < n:
        x = space.from_unit(rng.random((2 * n, space.dim)))
        chunks.append(x[space.is_feasible(x)])
    x = np.concatenate(chunks)[:n]
    u = space.to_unit(x)
    centre = np.array([0.85, 0.4, 0.15, 0.1, 0.6])
    loss = 1.0 - 0.8 * np.exp(-((u - centre) ** 2 / 0.15).sum(1))
    loss += 0.05 * np.sin(6.0 * u[:, 0]) * np.cos(4.0 * u[:, 3])
    loss += 0.02 * rng.standard_normal(n)
    return Observations(x=x, loss=loss, loss_sd=np.full(n, 0.02 / np.sqrt(20)))


def timed(strategy, space: Space, data: Observations, seed: int) -> tuple[float, float]:
    """(seconds to propose a batch, seconds of it spent fitting the GP)."""
    start = time.perf_counter()
    batch = strategy.propose(space, data, BATCH, np.random.default_rng(seed))
    seconds = time.perf_counter() - start
    assert space.is_feasible(batch.x).all()
    return seconds, float(batch.notes.get("fit_seconds", float("nan")))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[30, 135, 500, 1000])
    ap.add_argument("--repeats", type=int, default=5, help="lp-ei repeats per size")
    ap.add_argument(
        "--qlognei-repeats", type=int, default=3, help="qlognei repeats for n <= 200 (else 1)"
    )
    ap.add_argument("--quick", action="store_true", help="n = 30, 135; 3 / 1 repeats")
    ap.add_argument("--no-write", action="store_true", help="do not touch bench/RESULTS.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.qlognei_repeats = [30, 135], 3, 1

    space = agnp_space()
    load_start = os.getloadavg()[0]
    lp, ref = LocalPenalizationEI(), QLogNEI()
    timed(lp, space, synthetic_data(space, 20, 99), 0)  # warm-up: imports, first calls
    rows = []
    for n in args.sizes:
        data = synthetic_data(space, n, seed=n)
        lp_t = [timed(lp, space, data, r) for r in range(args.repeats)]
        q_reps = args.qlognei_repeats if n <= 200 else 1
        q_t = [timed(ref, space, data, r) for r in range(q_reps)]
        row = {
            "n": n,
            "lp": statistics.median(t for t, _ in lp_t),
            "lp_fit": statistics.median(f for _, f in lp_t),
            "lp_max": max(t for t, _ in lp_t),
            "lp_reps": len(lp_t),
            "q": statistics.median(t for t, _ in q_t),
            "q_reps": q_reps,
        }
        rows.append(row)
        print(
            f"n={n:5d}  lp-ei {row['lp']:7.3f} s (fit {row['lp_fit']:.3f}, "
            f"max {row['lp_max']:.3f}, x{len(lp_t)})  qlognei {row['q']:8.2f} s (x{q_reps})"
            f"  ratio {row['q'] / row['lp']:6.1f}",
            flush=True,
        )
    text = report(rows, argv, (load_start, os.getloadavg()[0]))
    print(text)
    if not args.no_write:
        write_section("proposal_latency", text)
    return 0


def report(rows: list[dict], argv: list[str] | None, load: tuple[float, float]) -> str:
    cpu = "unknown"
    try:
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    cmd = "python bench/proposal_latency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "## Proposal latency: LP-EI vs BoTorch qLogNEI",
        "",
        f"- Date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- Command: `{cmd.strip()}`",
        f"- Machine: {os.cpu_count()} CPUs (nproc), {cpu}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}",
        f"- Task: propose {BATCH} recipes in the agnp space (5-D, share sum <= 90, pump "
        "channels) from n noisy observations; both include the GP fit (Matern 5/2 ARD).",
        "- LP-EI: `LocalPenalizationEI()` defaults. qLogNEI: `QLogNEI()` = BoTorch "
        "`qLogNoisyExpectedImprovement`, `optimize_acqf(q=15, sequential=True, "
        "num_restarts=10, raw_samples=512)`, BoTorch's default optimizer options.",
        "- Seconds are medians over repeats (LP-EI: all sizes; qLogNEI: fewer, 1 above "
        "n = 200 because one call takes minutes there).",
        f"- 1-minute load average at start / end: {load[0]:.2f} / {load[1]:.2f} "
        "(other jobs may share the machine; torch's thread pool suffers most from that).",
        "- LP-EI time is mostly the GP fit (column 3; above n = 600 a fit on 300 random "
        "points warm-starts a short fit on all); the rest is one scoring of the candidate "
        "pool, the Lipschitz estimate and 15 closed-form penaliser updates.",
        "",
        "| n | LP-EI s (median) | of which GP fit | LP-EI max | repeats "
        "| qLogNEI s (median) | repeats | qLogNEI / LP-EI |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['lp']:.3f} | {r['lp_fit']:.3f} | {r['lp_max']:.3f} | "
            f"{r['lp_reps']} | {r['q']:.2f} | {r['q_reps']} | {r['q'] / r['lp']:.1f}x |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
