"""The campaign file: validation, overrides and clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.config import CampaignConfig, ConfigError, StopConfig
from agent.core.stopping import (
    AllOf,
    AnyOf,
    MaxConditions,
    MaxRounds,
    ModelAccuracy,
    ModelStability,
    NoImprovement,
    RegretBound,
    TargetLoss,
    WallTime,
)

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
    env = {"SDL_AGENT_STOP__MAX_ROUNDS": "5", "SDL_AGENT_CAMPAIGN__BATCH_SIZE": "16"}
    cfg = CampaignConfig.from_toml(EXAMPLE, env=env, overrides={"stop.max_rounds": "7"})
    assert cfg.stop.max_rounds == 7 and cfg.campaign.batch_size == 16


@pytest.mark.parametrize(
    ("override", "expect"),
    [
        ({"campaign.batch_size": "0"}, "campaign.batch_size"),
        ({"replicates.max_count": "2"}, "max_count must be >= min_count"),
        ({"strategy.kind": '"simulated-annealing"'}, "strategy.kind"),
        ({"campaign.surprise": "1"}, "campaign.surprise"),
        ({"objective.target": '"missing.csv"'}, "cannot read target spectrum"),
        ({"objective.wl_stop": "300"}, "wl_stop must exceed wl_start"),
        ({"bus.status_interval_s": "0"}, "bus.status_interval_s"),
        ({"phase.min_confidence": "1.5"}, "phase.min_confidence"),
        ({"phase.required": '"AgCl"', "phase.phases": '["Ag-fcc"]'}, "not in phases"),
    ],
)
def test_invalid_values_are_refused_with_where_and_why(override, expect):
    with pytest.raises(ConfigError, match=expect):
        CampaignConfig.from_toml(EXAMPLE, env={}, overrides=override)


def test_the_phase_section_reaches_the_core():
    plain = CampaignConfig.from_toml(EXAMPLE, env={}).to_settings().phase
    assert plain.required is None and not plain.active
    cfg = CampaignConfig.from_toml(
        EXAMPLE,
        env={},
        overrides={"phase.required": '"Ag-fcc"', "phase.min_confidence": "0.7"},
    )
    phase = cfg.to_settings().phase
    assert (phase.required, phase.min_confidence, phase.active) == ("Ag-fcc", 0.7, True)


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


# --- [stop] ----------------------------------------------------------------------------


def stop_file(tmp_path: Path, stop: str, kind: str = "lp-ei") -> Path:
    """The example campaign with its [stop] section (and groups) replaced by ``stop``."""
    text = EXAMPLE.read_text(encoding="utf-8")
    head, rest = text.split("[stop]\n", 1)
    tail = rest[rest.index("# The study's initial box") :]
    head, n = re.subn(r'(?m)^kind = "[a-z-]+"', f'kind = "{kind}"', head)
    assert n == 1, "the example's [strategy] kind line moved"
    (tmp_path / "agnp_target.csv").write_bytes((EXAMPLE.parent / "agnp_target.csv").read_bytes())
    return write(tmp_path, f"{head}[stop]\n{stop}\n\n{tail}")


def test_example_stops_on_target_or_budget_or_a_trusted_model_that_stalled():
    rule = CampaignConfig.from_toml(EXAMPLE, env={}).stop.rule()
    assert rule == AnyOf(
        (
            TargetLoss(0.05),
            AllOf(
                (
                    ModelAccuracy(cosine=0.95),
                    ModelStability(0.98),
                    NoImprovement(window=2, min_delta=0.005),
                )
            ),
            MaxRounds(12),
            WallTime(172800.0),
        )
    )


def test_flat_keys_and_groups_build_one_any_of(tmp_path):
    stop = """max_rounds = 8
max_conditions = 100
target_loss = 0.1
regret_bound = { scale = 2.0 }
no_improvement = { window = 3 }

[[stop.all_of]]
max_rounds = 4
no_improvement = { window = 1, min_delta = 0.01 }

[[stop.all_of]]
regret_bound = { level = 0.02 }
model_accuracy = { mse = 0.001 }
"""
    rule = CampaignConfig.from_toml(stop_file(tmp_path, stop), env={}).stop.rule()
    assert rule == AnyOf(
        (
            TargetLoss(0.1),
            RegretBound(scale=2.0),
            NoImprovement(window=3, min_delta=0.0),
            AllOf((NoImprovement(1, 0.01), MaxRounds(4))),
            AllOf((ModelAccuracy(mse=0.001), RegretBound(level=0.02))),
            MaxRounds(8),
            MaxConditions(100),
        )
    )


def test_the_old_flat_stop_section_still_works(tmp_path):
    cfg = CampaignConfig.from_toml(stop_file(tmp_path, "max_rounds = 5\ntarget_loss = 0.2"), env={})
    assert cfg.stop.rule() == AnyOf((TargetLoss(0.2), MaxRounds(5)))
    assert cfg.stop.max_rounds == 5


def test_stop_rules_can_be_overridden_from_the_environment():
    env = {"SDL_AGENT_STOP__NO_IMPROVEMENT__WINDOW": "4", "SDL_AGENT_STOP__WALL_TIME_S": "60"}
    cfg = CampaignConfig.from_toml(EXAMPLE, env=env)
    assert cfg.stop.no_improvement.window == 4 and cfg.stop.wall_time_s == 60


@pytest.mark.parametrize(
    ("stop", "kind", "expect"),
    [
        ("max_rounds = 0", "lp-ei", "stop.max_rounds"),
        ("wall_time_s = -5", "lp-ei", "stop.wall_time_s"),
        ("no_improvement = { window = 0 }", "lp-ei", "stop.no_improvement.window"),
        ("no_improvement = { min_delta = 0.01 }", "lp-ei", "window: Field required"),
        ("no_improvement = 2", "lp-ei", "stop.no_improvement"),
        ("model_accuracy = {}", "lp-ei", "model_accuracy needs cosine and/or mse"),
        ("model_accuracy = { cosine = 1.5 }", "lp-ei", "stop.model_accuracy.cosine"),
        ("model_stability = 0", "lp-ei", "stop.model_stability"),
        ("regret_bound = { level = 0.01, scale = 2 }", "lp-ei", "level .* or scale"),
        ("regret_bound = { beta = 2 }", "lp-ei", "stop.regret_bound.beta"),
        ("regret_bound = {}", "lhs", "regret_bound needs a GP strategy"),
        ("patience = 3", "lp-ei", "stop.patience"),
        (
            "max_rounds = 5\n[[stop.all_of]]\nmodel_stability = 0.9",
            "lp-ei",
            "an all_of group needs at least two rules, got 1",
        ),
        ("max_rounds = 5\n[[stop.all_of]]\nwhen = 1\nmax_rounds = 2", "lp-ei", "all_of.0.when"),
        ("max_rounds = 5\n[stop.all_of]\nmax_rounds = 2", "lp-ei", "stop.all_of"),
    ],
)
def test_nonsense_in_stop_is_refused_with_where_and_why(tmp_path, stop, kind, expect):
    with pytest.raises(ConfigError, match=expect):
        CampaignConfig.from_toml(stop_file(tmp_path, stop, kind), env={})


def test_a_campaign_without_a_budget_is_refused():
    with pytest.raises(ValueError, match="needs a budget that always ends the campaign"):
        StopConfig(max_rounds=None, target_loss=0.1)
