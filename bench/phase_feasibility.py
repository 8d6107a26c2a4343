"""Phase-aware optimisation on the simulated AgNP world: with and without the feasibility model.

The reference campaign (examples/agnp.toml: two-step, 15 conditions a round,
LHS first, boundary expansion on) runs through the offline ask/tell API; each
condition's result carries the world's phase label (``world.phase(flows)``,
the XRD's forward model) with its loss and median spectrum (see
bench/campaign_efficiency.py for the measurement). The two arms differ only in
``[phase] required``:

- ``with``: ``required = "Ag-fcc"``, ``min_confidence = 0.7`` (the feasibility
  model weights LP-EI and the DNN's scores and excludes P < 0.05);
- ``without``: no phase required (labels recorded, ignored by the optimiser).

Reported: the fraction of proposals of rounds 4-8 whose true phase is not
Ag-fcc ("wrong phase"), and the best *feasible* loss per round: the true loss
of the best-measured condition among those whose true phase is Ag-fcc.

    python bench/phase_feasibility.py --seeds 10 --rounds 8
    python bench/phase_feasibility.py --quick        # 3 seeds, 4 rounds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from campaign_efficiency import measure
from results import write_section

from agent import Campaign, CampaignConfig, Result
from agent.config import StopConfig
from drivers.world import agnp_world

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = ROOT / "examples" / "agnp.toml"
ARMS = {
    "with": {
        "phase.required": "Ag-fcc",
        "phase.min_confidence": 0.7,
        "phase.phases": ["Ag-fcc", "Ag2O", "none"],
    },
    "without": {"phase.phases": ["Ag-fcc", "Ag2O", "none"]},
}
AFTER = 3  # wrong-phase fractions count proposals of the rounds after this one


def run(arm: str, seed: int, rounds: int, droplets: int) -> dict:
    overrides: dict[str, object] = {"stop.max_rounds": rounds, **ARMS[arm]}
    cfg = CampaignConfig.from_toml(CAMPAIGN, overrides=overrides, env={})
    cfg = cfg.model_copy(update={"stop": StopConfig(max_rounds=rounds)})
    campaign = Campaign(cfg, seed=seed)
    wl = campaign.settings.grid.wavelengths
    target = campaign.settings.loss.target
    world = agnp_world(seed=0)
    rng = np.random.default_rng(10_000 + seed)
    wrong_by_round, best_feasible_by_round, propose_s = [], [], []
    best_measured, best_true = math.inf, math.nan
    while not campaign.stopped:
        t0 = time.perf_counter()
        batch = campaign.ask()
        propose_s.append(time.perf_counter() - t0)
        results, wrong = [], 0
        for recipe in batch:
            med, sd, true, spectrum = measure(
                world, campaign.space, recipe, wl, target, rng, droplets
            )
            phase = world.phase(campaign.space.channels.flows(recipe))
            results.append(Result(loss=med, loss_sd=sd, spectrum=spectrum, phase=phase))
            wrong += phase[0] != "Ag-fcc"
            if phase[0] == "Ag-fcc" and med < best_measured:
                best_measured, best_true = med, true
        campaign.tell(batch, results)
        wrong_by_round.append(wrong / len(batch))
        best_feasible_by_round.append(best_true)
    return {
        "arm": arm,
        "seed": seed,
        "wrong_by_round": wrong_by_round,
        "best_feasible_by_round": best_feasible_by_round,
        "propose_s": propose_s,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--droplets", type=int, default=15)
    p.add_argument("--arms", default="with,without")
    p.add_argument("--quick", action="store_true", help="3 seeds, 4 rounds")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "phase_feasibility.json")
    p.add_argument("--merge", type=Path, nargs="+", help="only report saved runs")
    p.add_argument("--write", action="store_true", help="write the section of bench/RESULTS.md")
    args = p.parse_args()
    if args.quick:
        args.seeds, args.rounds = 3, 4
    runs: dict[str, list[dict]] = {}
    t_start = time.perf_counter()
    if args.merge:
        for path in args.merge:
            for name, recs in json.loads(path.read_text()).items():
                runs.setdefault(name, []).extend(recs)
    else:
        torch.set_num_threads(args.threads)
        arms = args.arms.split(",")
        runs = {a: [] for a in arms}
        for seed in range(args.seeds):
            for arm in arms:
                t0 = time.perf_counter()
                r = run(arm, seed, args.rounds, args.droplets)
                runs[arm].append(r)
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(runs, indent=1))
                print(
                    f"seed {seed:2d} {arm:8s} {time.perf_counter() - t0:6.1f} s  wrong "
                    + " ".join(f"{v:.2f}" for v in r["wrong_by_round"])
                    + "  best feasible "
                    + " ".join(f"{v:.3f}" for v in r["best_feasible_by_round"]),
                    flush=True,
                )
    how = (
        "merged from " + " ".join(str(m) for m in args.merge)
        if args.merge
        else f"{time.perf_counter() - t_start:.0f} s"
    )
    text = report(runs, how)
    print(text)
    if args.write:
        write_section("phase_feasibility", text)


def report(runs: dict[str, list[dict]], how: str) -> str:
    rounds = min(len(r["wrong_by_round"]) for recs in runs.values() for r in recs)
    lines = [
        "## Phase-aware optimisation: wrong-phase proposals and best feasible loss\n",
        "",
        f"`python bench/phase_feasibility.py` ({platform.machine()}, "
        f"{os.cpu_count()} cores, torch threads 1, {how}; written "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, load "
        f"{os.getloadavg()[0]:.1f}). "
        'Arms: `with` = `[phase] required = "Ag-fcc"`, `min_confidence = 0.7`; '
        "`without` = no phase required. Median over seeds; wrong-phase = share of a "
        "round's proposals whose true phase is not Ag-fcc; best feasible = true loss "
        "of the best-measured Ag-fcc condition.",
        "",
        "| arm | seeds | wrong-phase share, rounds "
        f"{AFTER + 1}-{rounds} (mean) | " + " | ".join(f"r{i + 1}" for i in range(rounds)) + " |",
        "|---|---|---|" + "---|" * rounds,
    ]
    summary = {}
    for arm, recs in runs.items():
        wrong = float(np.mean([np.mean(r["wrong_by_round"][AFTER:rounds]) for r in recs]))
        best = np.nanmedian([r["best_feasible_by_round"][:rounds] for r in recs], axis=0)
        summary[arm] = (wrong, best[-1])
        lines.append(
            f"| {arm} | {len(recs)} | {wrong:.3f} | " + " | ".join(f"{v:.3f}" for v in best) + " |"
        )
    lines.append("")
    lines.append("(r1..: median best feasible true loss after each round.)")
    if {"with", "without"} <= summary.keys():
        (w_with, b_with), (w_wo, b_wo) = summary["with"], summary["without"]
        ratio = w_with / w_wo if w_wo > 0 else math.nan
        by_seed = {r["seed"]: r for r in runs["without"]}
        pairs = [(r, by_seed[r["seed"]]) for r in runs["with"] if r["seed"] in by_seed]
        diff = [a["best_feasible_by_round"][rounds - 1] - b["best_feasible_by_round"][rounds - 1]
                for a, b in pairs]  # fmt: skip
        fewer = sum(
            np.mean(a["wrong_by_round"][AFTER:rounds]) < np.mean(b["wrong_by_round"][AFTER:rounds])
            for a, b in pairs
        )
        lines += [
            "",
            f"Wrong-phase share after round {AFTER}: {w_with:.3f} with the feasibility model "
            f"against {w_wo:.3f} without (ratio {ratio:.2f}; target <= 0.5: "
            f"{'met' if ratio <= 0.5 else 'not met'}); fewer in {fewer} of {len(pairs)} seeds "
            f"paired by seed. Best feasible loss after round {rounds} (median): {b_with:.4f} "
            f"against {b_wo:.4f} (target no worse: "
            f"{'met' if b_with <= b_wo + 1e-9 else 'not met'}); paired by seed lower in "
            f"{sum(d < -1e-4 for d in diff)}, higher in {sum(d > 1e-4 for d in diff)} "
            f"(worst {max(diff):+.4f}), median difference {float(np.median(diff)):+.4f}.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
