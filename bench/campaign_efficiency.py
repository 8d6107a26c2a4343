"""Sample efficiency on the simulated AgNP world: LHS-only, LP-BO, two-step (BO + DNN), qLogNEI.

Each strategy runs the reference campaign (examples/agnp.toml: 15 conditions a
round, LHS first, boundary expansion on) through the offline ask/tell API, the
same Campaign object the live agent runs. A condition's measured loss is the
study's loss of the median of ``--droplets`` noisy droplet spectra from the
simulated world (the spectrometer's noise model, without outliers); the
*true* loss of a recipe is the loss of its noise-free spectrum; the median of
the droplet spectra goes with each result (the two-step strategy trains its
spectrum model on them). Reported per
round: the true loss of the best-measured condition (median over seeds), and
the rounds each seed needs to reach each of ``--levels``; the acceleration factor is
``AF = median rounds(LHS-only) / median rounds(method)`` (Liang et al. 2021,
in rounds of 15), with "never" counted as ``rounds + 1``.

    python bench/campaign_efficiency.py --seeds 10 --rounds 8
    python bench/campaign_efficiency.py --quick
    python bench/campaign_efficiency.py --strategies lp-ei,two-step --seeds 10 --rounds 8
    # qLogNEI takes ~100 s a round: run it on its own core, then merge the tables
    python bench/campaign_efficiency.py --strategies lhs,lp-ei --threads 1 --json a.json
    python bench/campaign_efficiency.py --strategies qlognei --threads 1 --json b.json
    python bench/campaign_efficiency.py --merge a.json b.json
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

from agent import Campaign, CampaignConfig, Result
from agent.config import StopConfig
from agent.core.objective import agnp_loss
from drivers.world import agnp_world

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = ROOT / "examples" / "agnp.toml"


def measure(
    world, space, recipe, wl, target, rng, droplets: int
) -> tuple[float, float, float, np.ndarray]:
    """(measured median loss, its robust sd, true loss, median spectrum) of one recipe."""
    flows = space.channels.flows(recipe)
    clean = world.spectrum(flows, wl)
    true = float(agnp_loss(clean, target))
    drops, spectra = [], []
    for _ in range(droplets):
        jitter = {k: v * float(rng.lognormal(0.0, 0.015)) for k, v in flows.items()}
        s = world.spectrum(jitter, wl) * float(rng.lognormal(0.0, 0.02))
        s = s + float(np.clip(rng.normal(0.05, 0.04), -0.04, 0.16))
        s = s + rng.normal(0.0, 0.005, size=s.shape)
        drops.append(float(agnp_loss(s, target)))
        spectra.append(s)
    losses = np.array(drops)
    med = float(np.median(losses))
    sd = 1.4826 * float(np.median(np.abs(losses - med))) / math.sqrt(droplets)
    return med, sd, true, np.median(np.array(spectra), axis=0)


def run(strategy: str, seed: int, rounds: int, droplets: int) -> dict:
    spec, _, extra = strategy.partition("@")  # "two-step@optimism=1+dnn_points=5"
    kind, _, noise = spec.partition(":")  # e.g. "lp-ei:known": the GP noise model
    overrides: dict[str, object] = {"strategy.kind": kind, "stop.max_rounds": rounds}
    if noise:
        overrides["strategy.noise"] = noise
    for item in filter(None, extra.split("+")):
        key, _, value = item.partition("=")
        overrides[f"strategy.two_step.{key}"] = value
    cfg = CampaignConfig.from_toml(CAMPAIGN, overrides=overrides, env={})
    # every run spends the whole round budget: the reference file's other stop
    # rules (target loss, no improvement, ...) would end runs at different rounds
    cfg = cfg.model_copy(update={"stop": StopConfig(max_rounds=rounds)})
    campaign = Campaign(cfg, seed=seed)
    settings = campaign.settings
    wl = settings.grid.wavelengths
    target = settings.loss.target
    world = agnp_world(seed=0)
    rng = np.random.default_rng(10_000 + seed)
    best_true_by_round = []
    best_strategy_by_round = []  # which strategy proposed the best-measured condition
    model_by_round = []
    best_measured = math.inf
    best_true = math.nan
    propose_s = []
    while not campaign.stopped:
        t0 = time.perf_counter()
        batch = campaign.ask()
        propose_s.append(time.perf_counter() - t0)
        metrics = campaign.progress().metrics  # the spectrum model's trust metrics, if any
        model_by_round.append({k: v for k, v in metrics.items() if k.startswith("model_")})
        results = []
        for recipe in batch:
            med, sd, true, spectrum = measure(
                world, campaign.space, recipe, wl, target, rng, droplets
            )
            results.append(Result(loss=med, loss_sd=sd, spectrum=spectrum))
            if med < best_measured:
                best_measured, best_true = med, true
        campaign.tell(batch, results)
        best_true_by_round.append(best_true)
        best_strategy_by_round.append(campaign.best_strategy)
    box = {p.name: [p.lower, p.upper] for p in campaign.space.parameters}
    return {
        "strategy": strategy,
        "seed": seed,
        "best_true_by_round": best_true_by_round,
        "best_strategy_by_round": best_strategy_by_round,
        "model_by_round": model_by_round,
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
    p.add_argument("--first-seed", type=int, default=0, help="seeds run from here on")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--droplets", type=int, default=15, help="droplets per condition")
    p.add_argument(
        "--levels",
        default="0.3,0.15,0.08",
        help="comma-separated true-loss levels for rounds-to-reach and AF",
    )
    p.add_argument(
        "--strategies",
        default="lhs,lp-ei,two-step,qlognei",
        help="comma-separated strategy[:noise][@key=value+...], e.g. lp-ei:known (GP noise "
        "from loss_sd), two-step@optimism=1 ([strategy.two_step] keys)",
    )
    p.add_argument("--quick", action="store_true", help="3 seeds, 4 rounds")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "campaign_efficiency.json")
    p.add_argument(
        "--merge", type=Path, nargs="+", metavar="JSON", help="only print the table of saved runs"
    )
    args = p.parse_args()
    levels = [float(v) for v in args.levels.split(",")]
    if args.quick:
        args.seeds, args.rounds = 3, 4
    if args.merge:
        runs = {}
        for path in args.merge:
            for name, records in json.loads(path.read_text()).items():
                by_seed = {r["seed"]: r for r in runs.get(name, [])}
                for r in records:  # one record per seed: the one with more rounds
                    old = by_seed.get(r["seed"])
                    if old is None or len(r["best_true_by_round"]) > len(old["best_true_by_round"]):
                        by_seed[r["seed"]] = r
                runs[name] = [by_seed[k] for k in sorted(by_seed)]
        report(runs, levels, time.perf_counter())
        return
    torch.set_num_threads(args.threads)
    strategies = args.strategies.split(",")
    runs: dict[str, list[dict]] = {s: [] for s in strategies}
    t_start = time.perf_counter()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for s in strategies:
            t0 = time.perf_counter()
            r = run(s, seed, args.rounds, args.droplets)
            runs[s].append(r)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(runs, indent=1))  # after each run: partial results
            curve = " ".join(f"{v:.3f}" for v in r["best_true_by_round"])
            print(
                f"seed {seed:2d} {s:8s} {time.perf_counter() - t0:7.1f} s  "
                f"best true loss/round: {curve}  expansions {r['expansions']}  "
                f"best by: {' '.join(str(t) for t in r['best_strategy_by_round'])}",
                flush=True,
            )
    print(f"\nruns written to {args.json}; torch threads {args.threads}")
    report(runs, levels, t_start)


def report(runs: dict[str, list[dict]], levels: list[float], t_start: float) -> None:
    """Print the Markdown tables of ``runs`` (strategy -> one record per seed)."""
    seeds = {s: len(rs) for s, rs in runs.items()}
    order = sorted(runs, key=lambda s: s != "lhs")  # LHS first: the AF baseline
    # columns: the longest run of any strategy but the (long) LHS baseline
    n_rounds = max(len(r["best_true_by_round"]) for s in order[1:] or order for r in runs[s])
    print(
        f"\nmedian over seeds {seeds} of the true loss of the best-measured condition "
        "(a round's median over the seeds that ran it; n = how many, when fewer than all):"
    )
    print(
        "| strategy | seeds | "
        + " | ".join(f"r{i + 1}" for i in range(n_rounds))
        + " | median propose s/round |"
    )
    print("|" + "---|" * (n_rounds + 3))
    for s in order:
        prop = np.median([np.median(r["propose_s"][1:] or [0.0]) for r in runs[s]])
        cells = []
        for i in range(n_rounds):
            vals = [r["best_true_by_round"][i] for r in runs[s] if len(r["best_true_by_round"]) > i]
            note = "" if len(vals) == len(runs[s]) else f" (n={len(vals)})"
            cells.append(f"{np.median(vals):.3f}{note}" if vals else "")
        print(f"| {s} | {len(runs[s])} | " + " | ".join(cells) + f" | {prop:.2f} |")
    print(
        "\nrounds of 15 to reach a true loss level (median over seeds; a seed that never "
        "got there within its R rounds counts as R + 1, so an AF over such a baseline "
        "is a lower bound):"
    )
    print("| level | " + " | ".join(f"{s}: rounds (reached) | AF" for s in order) + " |")
    print("|" + "---|" * (1 + 2 * len(order)))
    for level in levels:
        cells = []
        base, base_never = None, False
        for s in order:
            length = min(len(r["best_true_by_round"]) for r in runs[s])
            full = [r["best_true_by_round"][:length] for r in runs[s]]
            rt = [rounds_to(c, level) for c in full]
            med_rt = float(np.median(rt))
            reached = sum(1 for x, c in zip(rt, full, strict=True) if x <= len(c))
            if s == "lhs":
                base, base_never = med_rt, med_rt > len(full[0])
                af = "1"
            else:
                af = "" if base is None else f"{'>=' if base_never else ''}{base / med_rt:.1f}"
            cells.append(f"{med_rt:g} ({reached}/{len(rt)}) | {af}")
        print(f"| {level:g} | " + " | ".join(cells) + " |")
    print("\nwhich strategy proposed each seed's best-measured condition (after the last round):")
    for s in order:
        tags = [r["best_strategy_by_round"][-1] for r in runs[s] if r.get("best_strategy_by_round")]
        counts = {t: tags.count(t) for t in sorted(set(tags), key=str)}
        print(f"- {s}: " + (", ".join(f"{t} {c}" for t, c in counts.items()) or "not recorded"))
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"{time.perf_counter() - t_start:.0f} s"
    )


if __name__ == "__main__":
    main()
