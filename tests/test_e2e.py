"""End to end: the agent and the three simulated drivers as real processes on loopback TCP."""

from __future__ import annotations

import asyncio
import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from agent.demo import find_free_base, start_drivers, stop_drivers
from protocols import messages as m
from protocols.codec import decode
from protocols.sockets import Endpoints

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = ROOT / "examples" / "agnp.toml"
TIMEOUT = 120.0


def sdl_agent(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from agent.cli import main; sys.exit(main())", *args]


def test_demo_runs_two_rounds_and_writes_its_csv(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        sdl_agent("demo", "--rounds", "2", "--time-scale", "0.005", "--out", str(out)),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "round 2: complete" in proc.stdout
    assert "best median loss" in proc.stdout and "box widened:" in proc.stdout
    rows = list(csv.DictReader((out / "conditions.csv").read_text().splitlines()))
    assert len(rows) == 30
    assert len({r["condition"] for r in rows}) == 30  # every condition exactly once
    done = [r for r in rows if r["status"] == "complete"]
    assert len(done) >= 28
    for r in done:
        assert 0.0 <= float(r["median_loss"]) <= 1.0
        assert int(r["n_used"]) >= 5
    assert sum(1 for r in rows if r["phase"]) >= 25  # late labels arrived and attached
    strategies = {r["strategy"] for r in rows}
    assert "lhs" in strategies and "lp-ei" in strategies
    log = [json.loads(line) for line in (out / "agent.log").read_text().splitlines()]
    assert all(rec["campaign_id"] == "agnp-demo" for rec in log)
    assert any(rec["event"] == "campaign_stopped" and rec["rule"] == "max_rounds" for rec in log)
    page = (out / "report" / "index.html").read_text(encoding="utf-8")  # the demo ends with it
    assert page.count('src="data:image/png;base64,') == 6  # input importance (SHAP), phase map
    assert (out / "report" / "phase_map.png").exists()
    importance = (out / "report" / "input_importance.csv").read_text().splitlines()
    assert importance[0] == "input,loss,peak_nm" and len(importance) == 6  # 5 inputs
    assert "Not in this journal" not in page  # the run stored its config and target
    assert f"report: {out / 'report' / 'index.html'}" in proc.stdout


async def test_run_command_stops_cleanly_on_sigterm_and_makes_the_pump_safe(tmp_path):
    base = find_free_base()
    ep = Endpoints.from_base(base)
    applied = tmp_path / "applied.jsonl"
    agent = await asyncio.create_subprocess_exec(
        *sdl_agent(
            "run",
            str(CAMPAIGN),
            "--base",
            base,
            "--out",
            str(tmp_path),
            "--set",
            "stop.max_rounds=50",
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    procs = start_drivers(
        base,
        time_scale=0.01,
        seed=0,
        log_dir=tmp_path / "logs",
        extra={"pump": ["--applied-log", str(applied)]},
    )
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"condition_complete.")
    sub.connect(ep.status)
    try:
        # a monitor sees conditions complete: the loop is closed
        async with asyncio.timeout(TIMEOUT):
            seen = 0
            while seen < 2:
                msg = decode(await sub.recv_multipart())
                assert isinstance(msg, m.ConditionComplete)
                seen += 1
        agent.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(agent.communicate(), TIMEOUT)
        assert agent.returncode == 0, err.decode()[-3000:]
        assert b"operator" in out  # the summary says why it stopped
        records = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
        stopped = [r for r in records if r["event"] == "campaign_stopped"]
        assert stopped and "SIGTERM" in stopped[0]["reason"]
        assert any(r["event"] == "safe_state_sent" for r in records)
        assert any(r["event"] == "agent_closed" for r in records)
    finally:
        sub.close()
        ctx.term()
        if agent.returncode is None:
            agent.kill()
            await agent.wait()
        stop_drivers(procs)
    lines = [json.loads(x) for x in applied.read_text().splitlines()]
    ids = [x["cmd_id"] for x in lines]
    assert len(ids) == len(set(ids))  # no command applied twice
