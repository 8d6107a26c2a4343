"""sdl-agent: the decision maker of a self-driving lab.

The offline ask/tell API (the same campaign object the live agent runs)::

    from agent import Campaign, CampaignConfig, Result

    campaign = Campaign(CampaignConfig.from_toml("examples/agnp.toml"), seed=0)
    while not campaign.stopped:
        batch = campaign.ask()
        campaign.tell(batch, [Result(loss=measure(recipe)) for recipe in batch])
"""

from __future__ import annotations

from agent.config import CampaignConfig, ConfigError
from agent.core.campaign import Campaign, CampaignError, Result, TellError

__all__ = ["Campaign", "CampaignConfig", "CampaignError", "ConfigError", "Result", "TellError"]
