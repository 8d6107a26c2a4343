"""The ``sdl-agent`` command line, as a user runs it (real processes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def sdl_agent(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from agent.cli import main; sys.exit(main())", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env=env,
    )


def test_help_lists_every_command():
    out = sdl_agent("--help")
    assert out.returncode == 0
    for word in ("run", "monitor", "demo", "driver", "validate", "schema", "SDL_AGENT_"):
        assert word in out.stdout


def test_validate_prints_the_space():
    out = sdl_agent("validate", "examples/agnp.toml", "--set", "stop.max_rounds=4")
    assert out.returncode == 0, out.stderr
    assert "q_agno3" in out.stdout and "hard [0.5, 80]" in out.stdout
    assert "q_agno3 + q_pva + q_tsc + q_seed <= 90" in out.stdout
    assert "stop when any of: max_rounds 4, wall_time_s 172800, target_loss 0.05;" in out.stdout
    assert "all of (no_improvement {window = 2, min_delta = 0.005} and " in out.stdout


def test_bad_campaign_file_is_refused_with_where_and_why(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[campaign]\nbatch_size = -3\n[objective]\ntarget = "t.csv"\n')
    out = sdl_agent("validate", str(bad))
    assert out.returncode == 2
    assert "campaign.batch_size" in out.stderr and "parameters" in out.stderr
    assert "Traceback" not in out.stderr
    out = sdl_agent("validate", "examples/agnp.toml", "--set", "nonsense")
    assert out.returncode != 0 and "KEY=VALUE" in out.stderr


def test_schema_writes_one_json_schema_per_kind(tmp_path):
    out = sdl_agent("schema", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    names = {p.name for p in tmp_path.glob("*.schema.json")}
    assert {"spectrum.schema.json", "setpoint.schema.json", "message.schema.json"} <= names
    spectrum = json.loads((tmp_path / "spectrum.schema.json").read_text())
    # schema version 3: the values are the third frame, named by x-values-frame, not the body
    assert "values" not in spectrum["properties"] and "n_points" in spectrum["properties"]
    assert spectrum["x-values-frame"]["dtype"] == "float64"


def test_driver_subcommand_hands_over_to_the_drivers_entry_point():
    out = sdl_agent("driver", "--help")
    assert out.returncode == 0
    assert "pump" in out.stdout and "spectrometer" in out.stdout and "xrd" in out.stdout
