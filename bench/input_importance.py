"""Which inputs matter on the simulated world: SHAP values of the spectrum model.

Trains the spectrum model (``SpectrumEnsemble()``, the defaults) on ``--n``
noisy spectra of the simulated world (``drivers.world``) at feasible recipes
of the region the study sampled (as bench/spectrum_model.py), then explains
its predicted loss and predicted peak wavelength with SHAP
(``agent.explain``; needs the ``[explain]`` extra) over ``--explain``
recipes against ``--background`` others. The ranking should agree with how the
forward model is built (docs/world.md: AgNO3 and seed shares move the spectrum
most, citrate moderately, PVA and flow little). Writes the table and plot
(``input_importance.csv``/``.png``) to ``--out`` and the table into
bench/RESULTS.md (its own section).

    python bench/input_importance.py            # ~1 min
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from results import write_section  # noqa: E402
from spectrum_model import study_space, world_data  # noqa: E402

from agent.config import CampaignConfig  # noqa: E402
from agent.core.strategies.spectrum_model import SpectrumEnsemble  # noqa: E402
from agent.explain import explain_inputs, write_importance  # noqa: E402

CAMPAIGN = ROOT / "examples" / "agnp.toml"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="training spectra")
    ap.add_argument("--explain", type=int, default=64, help="recipes explained")
    ap.add_argument("--background", type=int, default=32, help="background recipes")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--no-write", action="store_true", help="do not touch bench/RESULTS.md")
    args = ap.parse_args(argv)
    cfg = CampaignConfig.from_toml(CAMPAIGN, env={})
    loss = cfg.to_settings().loss
    space = study_space(cfg)
    data = world_data(space, loss, args.n, seed=1)
    others = world_data(space, loss, args.explain + args.background, seed=2)
    start = time.perf_counter()
    model = SpectrumEnsemble().fit(data.x, data.spectra, seed=0)
    imp = explain_inputs(
        model,
        loss,
        space.names,
        background=others.x[: args.background],
        recipes=others.x[args.background :],
    )
    seconds = time.perf_counter() - start
    csv, png = write_importance(imp, space.names, args.out)
    order = sorted(space.names, key=lambda n: -imp["loss"][n])
    lines = [
        "## Which inputs matter: SHAP values of the spectrum model on the simulated world",
        "",
        f"- Date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- Command: `python bench/input_importance.py {' '.join(argv or sys.argv[1:])}`"
        f" ({seconds:.0f} s for the fit and SHAP; load average {os.getloadavg()[0]:.1f})",
        f"- Model: `SpectrumEnsemble()` on {args.n} noisy world spectra of the region the study "
        "sampled (AgNO3 0.5-45 %, PVA 10-40 %, citrate 0.5-30 %, seed 0.5-20 %, flow 100-1000). "
        f"SHAP: `agent.explain.explain_inputs` (exact Shapley values, `shap` library), "
        f"{args.explain} recipes against {args.background} background recipes of that region.",
        "- Mean |SHAP| per input, of the predicted loss and of the predicted peak wavelength "
        "(nm); beside it, the world's own permutation importance of the loss in that region "
        "(docs/world.md).",
        "",
        "| input | mean abs SHAP, predicted loss | mean abs SHAP, predicted peak (nm) "
        "| world: permutation importance of the loss |",
        "|---|---:|---:|---:|",
    ]
    world = {"q_agno3": 0.221, "q_pva": 0.016, "q_tsc": 0.094, "q_seed": 0.116, "q_tot": 0.008}
    for name in order:
        lines.append(
            f"| {name} | {imp['loss'][name]:.4f} | {imp['peak_nm'][name]:.1f} | "
            f"{world.get(name, float('nan')):.3f} |"
        )
    world_order = sorted(world, key=lambda n: -world[n])
    peak_order = sorted(space.names, key=lambda n: -imp["peak_nm"][n])
    lines += [
        "",
        f"Ranking by the predicted loss: {', '.join(order)}; the world's own ranking of the "
        f"loss in that region: {', '.join(world_order)} "
        f"({'the same' if order == world_order else 'they differ'}). By the predicted peak "
        f"wavelength: {', '.join(peak_order)}. Plot: docs/input_importance.png.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    print(f"wrote {csv} and {png}")
    if not args.no_write:
        write_section("input_importance", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
