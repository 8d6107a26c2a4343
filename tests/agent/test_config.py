"""The campaign file: validation, overrides and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import CampaignConfig, ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agnp.toml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_example_builds_the_reference_space():
    cfg = CampaignConfig.from_toml(EXAMPLE, env={})
    s = cfg.to_settings()
    assert s.space.names == ("q_agno3", "q_pva", "q_tsc", "q_seed", "q_tot")
    assert s.batch_size == 15 and s.grid.n == 421
    assert s.space.bounds.tolist() == [[4, 10, 4, 4, 200], [20, 40, 20, 20, 1000]]
    assert s.space.constraint_matrix()[1].tolist() == [90.0]
    flows = s.space.channels.flows(
        {"q_agno3": 10, "q_pva": 20, "q_tsc": 5, "q_seed": 5, "q_tot": 500}
    )
    assert flows == {"agno3": 50, "pva": 100, "tsc": 25, "seed": 25, "water": 300, "oil": 500}
    assert s.loss.target.shape == (421,)


def test_env_overrides_file_and_set_overrides_env():
    env = {"SDL_AGENT_STOP__MAX_ROUNDS": "5", "SDL_AGENT_CAMPAIGN__BATCH_SIZE": "6"}
    cfg = CampaignConfig.from_toml(EXAMPLE, env=env, overrides={"stop.max_rounds": "7"})
    assert cfg.stop.max_rounds == 7 and cfg.campaign.batch_size == 6


@pytest.mark.parametrize(
    ("override", "expect"),
    [
        ({"campaign.batch_size": "0"}, "campaign.batch_size"),
        ({"replicates.max_count": "2"}, "max_count must be >= min_count"),
        ({"strategy.kind": '"simulated-annealing"'}, "strategy.kind"),
        ({"campaign.surprise": "1"}, "campaign.surprise"),
        ({"objective.target": '"missing.csv"'}, "cannot read target spectrum"),
        ({"objective.wl_stop": "300"}, "wl_stop must exceed wl_start"),
    ],
)
def test_invalid_values_are_refused_with_where_and_why(override, expect):
    with pytest.raises(ConfigError, match=expect):
        CampaignConfig.from_toml(EXAMPLE, env={}, overrides=override)


def test_unreadable_and_malformed_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="cannot read campaign file"):
        CampaignConfig.from_toml(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        CampaignConfig.from_toml(write(tmp_path, "[campaign\nid=1"), env={})


def test_constraint_on_unknown_parameter_is_refused(tmp_path):
    text = EXAMPLE.read_text(encoding="utf-8").replace(
        "q_seed = 1.0 }", "q_seed = 1.0, q_gold = 1.0 }"
    )
    (tmp_path / "agnp_target.csv").write_bytes((EXAMPLE.parent / "agnp_target.csv").read_bytes())
    with pytest.raises(ConfigError, match="unknown parameters"):
        CampaignConfig.from_toml(write(tmp_path, text), env={})


def test_bad_box_is_refused(tmp_path):
    text = EXAMPLE.read_text(encoding="utf-8").replace(
        "bounds = [4.0, 20.0]\nhard_limits = [0.5, 80.0]",
        "bounds = [4.0, 90.0]\nhard_limits = [0.5, 80.0]",
        1,
    )
    (tmp_path / "agnp_target.csv").write_bytes((EXAMPLE.parent / "agnp_target.csv").read_bytes())
    with pytest.raises(
        ConfigError, match="q_agno3: need hard_lower <= lower < upper <= hard_upper"
    ):
        CampaignConfig.from_toml(write(tmp_path, text), env={})
