"""The campaign file's ``[strategy.two_step]`` section (tests/agent/test_config.py has the rest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import CampaignConfig, ConfigError
from agent.core.strategies.two_step import TwoStep

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agnp.toml"


def test_two_step_is_built_from_the_file_with_its_split_and_check() -> None:
    cfg = CampaignConfig.from_toml(
        EXAMPLE,
        overrides={
            "strategy.kind": "two-step",
            "strategy.two_step.dnn_points": "8",
            "strategy.two_step.trust_cosine": "0.9",
            "strategy.two_step.bo": '"ucb"',
        },
        env={},
    )
    strategy = cfg.to_settings().strategy
    assert isinstance(strategy, TwoStep)
    assert (strategy.dnn_points, strategy.trust_cosine, strategy.bo.name) == (8, 0.9, "ucb")
    assert strategy.loss.target.shape == (421,)  # the campaign objective, on its grid


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("strategy.two_step.dnn_points", "16", "exceeds campaign.batch_size"),
        ("strategy.two_step.trust_cosine", "1.5", "trust_cosine"),
        ("strategy.two_step.members", "1", "members"),
        ("strategy.two_step.bo", '"lhs"', "bo"),
    ],
)
def test_bad_two_step_settings_are_refused_with_the_key(key: str, value: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        CampaignConfig.from_toml(
            EXAMPLE, overrides={"strategy.kind": "two-step", key: value}, env={}
        )
