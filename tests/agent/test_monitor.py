"""``sdl-agent monitor``: a read-only SUB on the agent's status endpoint (real processes).

Runtime: ~10 s, most of it the campaign of the first test (2 rounds of 5).
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import sys
from pathlib import Path

import pytest
import zmq
from rich.console import Console

from agent.demo import find_free_base, start_drivers, stop_drivers
from agent.monitor import MonitorView, parse_endpoint, plain_line
from protocols import messages as m
from protocols.codec import encode
from protocols.schema import example_messages
from protocols.sockets import Endpoints

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGN = ROOT / "examples" / "agnp.toml"
TIMEOUT = 90.0
CONFIGURED_RULES = [  # examples/agnp.toml's [stop], as the agent orders them
    "target_loss",
    "all_of.model_accuracy.model_stability.no_improvement",
    "max_rounds",
    "wall_time",
]


def sdl_agent(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from agent.cli import main; sys.exit(main())", *args]


async def start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *sdl_agent(*args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def kill(*procs: asyncio.subprocess.Process) -> None:
    for p in procs:
        if p.returncode is None:
            p.kill()


@pytest.mark.e2e
async def test_monitor_follows_a_real_campaign_once_and_streaming(tmp_path):
    base = find_free_base()
    status = Endpoints.from_base(base).status
    agent = await start(
        "run",
        str(CAMPAIGN),
        "--base",
        base,
        "--out",
        str(tmp_path),
        "--set",
        "stop.max_rounds=2",
        "--set",
        "campaign.batch_size=5",
        "--set",
        "strategy.two_step.dnn_points=2",
        "--set",
        "bus.status_interval_s=0.2",
    )
    # host:port, as a user on another machine would type it
    host_port = status.removeprefix("tcp://")
    stream = await start("monitor", "--connect", host_port, "--json", "--until-stopped")
    once = await start("monitor", "--connect", status, "--once", "--json", "--timeout", "20")
    procs = {}
    try:
        code, out, err = await finish(once)  # the agent publishes before any driver is up
        assert code == 0, err
        snapshot = json.loads(out)
        assert snapshot["kind"] == "campaign_status" and snapshot["campaign"] == "agnp-demo"
        assert [g["rule"] for g in snapshot["stop"]] == CONFIGURED_RULES
        assert set(snapshot["box"]) == {"q_agno3", "q_pva", "q_tsc", "q_seed", "q_tot"}

        assert stream.stdout is not None
        first = await asyncio.wait_for(stream.stdout.readline(), TIMEOUT)  # it is subscribed
        procs = start_drivers(base, time_scale=0.005, seed=0, log_dir=tmp_path / "logs")
        code, out, err = await finish(stream)
        out = first.decode() + out
        assert code == 0, err
        code_agent, _, agent_err = await finish(agent)
        assert code_agent == 0, agent_err[-2000:]
    finally:
        kill(agent, stream, once)
        stop_drivers(procs)

    events = [json.loads(line) for line in out.splitlines()]
    kinds = [e["kind"] for e in events]
    assert kinds[-1] == "campaign_stopped" and events[-1]["rule"] == "max_rounds"
    assert [e["round"] for e in events if e["kind"] == "round_complete"] == [1, 2]
    statuses = [e for e in events if e["kind"] == "campaign_status"]
    rounds = [s["round"] for s in statuses]
    assert rounds == sorted(rounds) and {1, 2} <= set(rounds)
    last = statuses[-1]
    assert math.isfinite(last["best_loss"]) and 0 <= last["best_loss"] <= 1
    assert last["best_condition"].startswith(("r01-", "r02-"))
    assert [g["rule"] for g in last["stop"]] == CONFIGURED_RULES
    gauge = {g["rule"]: g for g in last["stop"]}["max_rounds"]
    assert gauge["fraction"] == 1.0 and gauge["numbers"] == {"rounds": 2, "max_rounds": 2}
    progress = [e for e in events if e["kind"] == "condition_progress"]
    completed = [
        e["condition"]
        for e in events
        if e["kind"] == "condition_complete" and e["status"] == "complete"
    ]
    assert len(completed) >= 8  # of 10 (a condition may time out on a loaded machine)
    # the replicate that completed each one came first, with its counts against the rule
    assert [p["condition"] for p in progress if p["complete"]] == completed
    assert all(p["n_min"] == 5 and p["n_max"] == 48 for p in progress)
    assert all(p["n_accepted"] >= 5 for p in progress if p["complete"])


async def test_monitor_once_without_an_agent_says_so_and_fails():
    base = find_free_base()
    status = Endpoints.from_base(base).status
    code, out, err = await finish(
        await start("monitor", "--connect", status, "--once", "--timeout", "0.5")
    )
    assert code == 1 and out == ""
    assert "no campaign_status from" in err and "base port + 2" in err
    code, _, err = await finish(await start("monitor", "--connect", "http://x:1"))
    assert code == 2 and "tcp://HOST:PORT" in err and "Traceback" not in err


async def test_monitor_rejects_garbage_keeps_going_and_follows_an_agent_restart():
    endpoint = Endpoints.from_base(find_free_base()).status
    examples = example_messages()
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(endpoint)
    monitor = await start("monitor", "--connect", endpoint, "--until-stopped")
    assert monitor.stdout is not None
    try:
        async with asyncio.timeout(TIMEOUT):
            # until the subscription is through (PUB drops what it sends before)
            line = b""
            while b"status running" not in line:
                pub.send_multipart(encode(examples["campaign_status"]))
                try:
                    line = await asyncio.wait_for(monitor.stdout.readline(), 0.1)
                except TimeoutError:
                    continue
            garbage = [
                [b"campaign_status.agent"],  # one frame
                [b"campaign_status.agent", b"{not json"],
                [b"campaign_status.agent", json.dumps({"v": 1, "kind": "x"}).encode()],
                encode(examples["setpoint"]),  # valid, but not a status event
            ]
            for frames in garbage:
                pub.send_multipart(frames)
            pub.send_multipart(encode(examples["round_complete"]))
            line = await monitor.stdout.readline()
            while line.startswith(b"status running"):  # snapshots sent while syncing
                line = await monitor.stdout.readline()
            assert line.decode().startswith("round 1: complete 14, failed 1")

            # the agent restarts: a new socket on the same endpoint, seq from 0 again
            pub.close()
            ctx.term()  # the port is free once every socket of the context is closed
            ctx = zmq.Context()
            pub = ctx.socket(zmq.PUB)
            pub.setsockopt(zmq.LINGER, 0)
            pub.bind(endpoint)
            restarted = examples["campaign_stopped"].model_copy(update={"seq": 0})
            while True:
                pub.send_multipart(encode(restarted))
                try:
                    line = await asyncio.wait_for(monitor.stdout.readline(), 0.1)
                    break
                except TimeoutError:
                    continue
            assert line.decode().startswith("stopped (max_rounds)")
        code, _, err = await finish(monitor)  # --until-stopped: exits after campaign_stopped
    finally:
        kill(monitor)
        pub.close()
        ctx.term()
    assert code == 0
    records = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    codes = [r["code"] for r in records if r["event"] == "message_rejected"]
    assert codes == ["malformed", "malformed", "unsupported_version", "unexpected_kind"]
    assert all(r["reason"] for r in records if r["event"] == "message_rejected")


def test_live_view_shows_round_replicates_best_loss_box_and_closest_rule():
    examples = example_messages()
    view = MonitorView("tcp://lab-pc:5562")
    for kind in ("proposal", "campaign_status", "condition_progress", "round_complete"):
        view.update(examples[kind])
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(view.render())
    screen = console.file.getvalue()
    for text in (
        "round 2",
        "3/15 conditions",
        "r02-c04",
        "6 used, 1 rejected (complete at 5..48)",
        "0.1310 at r02-c02",
        "q_agno3 [4, 28]",
        "stop: target_loss",
        "41%",
        "round 1: complete 14",
    ):
        assert text in screen, text
    assert screen.index("target_loss") < screen.index("max_rounds")  # closest first


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("tcp://127.0.0.1:5562", "tcp://127.0.0.1:5562"),
        ("lab-pc:5562", "tcp://lab-pc:5562"),
        (" 10.0.0.7:6002 ", "tcp://10.0.0.7:6002"),
        ("[::1]:5562", "tcp://[::1]:5562"),
        ("lab-pc", None),
        ("udp://lab-pc:5562", None),
        ("lab-pc:99999", None),
        ("tcp://lab-pc:5562/x", None),
    ],
)
def test_parse_endpoint(text, endpoint):
    if endpoint is None:
        with pytest.raises(ValueError, match="tcp://HOST:PORT"):
            parse_endpoint(text)
    else:
        assert parse_endpoint(text) == endpoint


def test_every_status_kind_has_a_plain_line():
    for kind in sorted(m.STATUS_KINDS):
        assert plain_line(example_messages()[kind]), kind
