"""The reference campaign escapes its initial box on the simulated world.

The simulated AgNP world (docs/world.md) puts its best in-box recipe at a loss
of about 0.24 and its global optimum (about 0.04) outside the initial box: more
AgNO3 and less citrate/seed than the box allows. Through the offline ask/tell
API with the defaults of examples/agnp.toml (LHS, then LP-EI with boundary
expansion), the campaign must widen the box and find a recipe beyond it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent import Campaign, CampaignConfig, Result
from agent.config import StopConfig
from agent.core.objective import agnp_loss
from drivers.world import agnp_world

CAMPAIGN = Path(__file__).resolve().parents[1] / "examples" / "agnp.toml"
IN_BOX_BEST = 0.24  # docs/world.md: the best loss reachable inside the initial box


def test_lp_ei_widens_the_box_and_reaches_the_optimum_beyond_it():
    cfg = CampaignConfig.from_toml(CAMPAIGN, env={})
    cfg = cfg.model_copy(update={"stop": StopConfig(max_rounds=5)})  # five rounds, always
    campaign = Campaign(cfg, seed=0)
    world = agnp_world(seed=0)
    wl = campaign.settings.grid.wavelengths
    target = campaign.settings.loss.target
    initial = {p.name: (p.lower, p.upper) for p in campaign.space.parameters}
    hard = {p.name: (p.hard_lower, p.hard_upper) for p in campaign.space.parameters}

    while not campaign.stopped:
        batch = campaign.ask()
        names = [p.name for p in campaign.space.parameters]
        assert campaign.space.is_feasible(np.array([[r[k] for k in names] for r in batch])).all()
        losses = [
            agnp_loss(world.spectrum(campaign.space.channels.flows(r), wl), target) for r in batch
        ]
        campaign.tell(batch, [Result(loss=float(v)) for v in losses])

    recipe, loss = campaign.best
    assert loss < IN_BOX_BEST / 2, f"best loss {loss:.3f} not beyond the in-box best"
    outside = [k for k, v in recipe.items() if not initial[k][0] <= v <= initial[k][1]]
    assert outside, f"best recipe {recipe} lies inside the initial box"

    assert campaign.expansions, "no boundary expansion recorded"
    for ch in campaign.expansions:
        lo, hi = ch.new_bounds
        assert hard[ch.parameter][0] <= lo and hi <= hard[ch.parameter][1]
        assert lo <= ch.old_bounds[0] and hi >= ch.old_bounds[1]  # never shrinks
        assert ch.reason
    for p in campaign.space.parameters:
        assert p.lower <= initial[p.name][0] and p.upper >= initial[p.name][1]
