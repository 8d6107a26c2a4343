"""Sample efficiency on the simulated AgNP world: LHS-only vs LP-BO vs BoTorch qLogNEI.

Each strategy runs the reference campaign (examples/agnp.toml: 15 conditions a
round, LHS first, boundary expansion on) through the offline ask/tell API, the
same Campaign object the live agent runs. A condition's measured loss is the
study's loss of the median of ``--droplets`` noisy droplet spectra from the
simulated world (the spectrometer's noise model, without outliers); the
*true* loss of a recipe is the loss of its noise-free spectrum. Reported per
round: the true loss of the best-measured condition (median over seeds), and
the rounds each seed needs to reach ``--target``; the acceleration factor is
``AF = median rounds(LHS-only) / median rounds(method)`` (Liang et al. 2021,
in rounds of 15), with "never" counted as ``rounds + 1``.

    python bench/campaign_efficiency.py --seeds 10 --rounds 8
    python bench/campaign_efficiency.py --quick
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from agent import Campaign, CampaignConfig, Result
from agent.core.objective import agnp_loss
from drivers.world import agnp_world

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = ROOT / "examples" / "agnp.toml"


def measure(world, space, recipe, wl, target, rng, droplets: int) -> tuple[float, float, float]:
    """(measured median loss, its robust sd, true loss) of one recipe."""
    flows = space.channels.flows(recipe)
    clean = world.spectrum(flows, wl)
    true = float(agnp_loss(clean, target))
    drops = []
    for _ in range(droplets):
        jitter = {k: v * float(rng.lognormal(0.0, 0.015)) for k, v in flows.items()}
        s = world.spectrum(jitter, wl) * float(rng.lognormal(0.0, 0.02))
        s = s + float(np.clip(rng.normal(0.05, 0.04), -0.04, 0.16))
        s = s + rng.normal(0.0, 0.005, size=s.shape)
        drops.append(float(agnp_loss(s, target)))
    losses = np.array(drops)
    med = float(np.median(losses))
    sd = 1.4826 * float(np.median(np.abs(losses - med))) / math.sqrt(droplets)
    return med, sd, true


def run(strategy: str, seed: int, rounds: int, droplets: int) -> dict:
    cfg = CampaignConfig.from_toml(
        CAMPAIGN, overrides={"strategy.kind": strategy, "stop.max_rounds": rounds}, env={}
    )
    campaign = Campaign(cfg, seed=seed)
    settings = campaign.settings
    wl = settings.grid.wavelengths
    target = settings.loss.target
    world = agnp_world(seed=0)
    rng = np.random.default_rng(10_000 + seed)
    best_true_by_round = []
    best_measured = math.inf
    best_true = math.nan
    propose_s = []
    while not campaign.stopped:
        t0 = time.perf_counter()
        batch = campaign.ask()
        propose_s.append(time.perf_counter() - t0)
        results = []
        for recipe in batch:
            med, sd, true = measure(world, campaign.space, recipe, wl, target, rng, droplets)
            results.append(Result(loss=med, loss_sd=sd))
            if med < best_measured:
                best_measured, best_true = med, true
        campaign.tell(batch, results)
        best_true_by_round.append(best_true)
    box = {p.name: [p.lower, p.upper] for p in campaign.space.parameters}
    return {
        "strategy": strategy,
        "seed": seed,
        "best_true_by_round": best_true_by_round,
        "propose_s": propose_s,
        "expansions": len(campaign.expansions),
        "final_box": box,
    }


def rounds_to(curve: list[float], level: float) -> int:
    for i, v in enumerate(curve):
        if v <= level:
            return i + 1
    return len(curve) + 1


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--droplets", type=int, default=15, help="droplets per condition")
    p.add_argument("--target", type=float, default=0.15, help="true-loss level to reach")
    p.add_argument("--strategies", default="lhs,lp-ei,qlognei")
    p.add_argument("--quick", action="store_true", help="3 seeds, 4 rounds")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "campaign_efficiency.json")
    args = p.parse_args()
    if args.quick:
        args.seeds, args.rounds = 3, 4
    torch.set_num_threads(2)
    strategies = args.strategies.split(",")
    runs: dict[str, list[dict]] = {s: [] for s in strategies}
    t_start = time.perf_counter()
    for seed in range(args.seeds):
        for s in strategies:
            t0 = time.perf_counter()
            r = run(s, seed, args.rounds, args.droplets)
            runs[s].append(r)
            curve = " ".join(f"{v:.3f}" for v in r["best_true_by_round"])
            print(
                f"seed {seed:2d} {s:8s} {time.perf_counter() - t0:7.1f} s  "
                f"best true loss/round: {curve}  expansions {r['expansions']}",
                flush=True,
            )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(runs, indent=1))
    print()
    print(
        f"median over {args.seeds} seeds of the best true loss after each round "
        f"({args.droplets} droplets/condition, target {args.target}):"
    )
    header = (
        "| strategy | "
        + " | ".join(f"r{i + 1}" for i in range(args.rounds))
        + " | rounds to target (median) | reached | AF vs LHS | median propose s/round |"
    )
    print(header)
    print("|" + "---|" * (args.rounds + 5))
    base_rounds = None
    for s in strategies:
        curves = np.array([r["best_true_by_round"] for r in runs[s]])
        med = np.median(curves, axis=0)
        rt = [rounds_to(list(c), args.target) for c in curves]
        med_rt = float(np.median(rt))
        reached = sum(1 for x in rt if x <= args.rounds)
        if s == "lhs":
            base_rounds = med_rt
        af = "" if base_rounds is None else f"{base_rounds / med_rt:.2f}"
        prop = np.median([np.median(r["propose_s"][1:] or [0.0]) for r in runs[s]])
        print(
            f"| {s} | "
            + " | ".join(f"{v:.3f}" for v in med)
            + f" | {med_rt:g} | {reached}/{len(rt)} | {af} | {prop:.2f} |"
        )
    print()
    print(
        f"machine: {platform.processor() or platform.machine()}, torch threads 2; "
        f"total {time.perf_counter() - t_start:.0f} s"
    )


if __name__ == "__main__":
    main()
