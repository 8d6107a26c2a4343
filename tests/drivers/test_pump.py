"""The simulated pump: limits, ramps, at-most-once application, restarts."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from drivers.faults import SetpointRefused
from drivers.pump import (
    DEFAULT_CHANNELS,
    AppliedLog,
    Channel,
    SimulatedPump,
    channel_map,
    validate_flows,
)
from protocols.messages import Heartbeat, SafeState, Setpoint

if TYPE_CHECKING:
    from conftest import DriverProcess, FakeAgent, StartDriver

FAST = ["--time-scale", "0.02", "--heartbeat", "0.05", "--heartbeat-timeout", "20"]
FAST += ["--ramp", "2.0", "--readback-interval", "0.2", "--readback-period", "0"]


def _pump(start_driver: StartDriver, agent: FakeAgent, *extra: str) -> DriverProcess:
    return start_driver("pump", "--connect", agent.base, *FAST, "--no-reactor", *extra)


def _applied(path: Path) -> list[str]:
    return [json.loads(line)["cmd_id"] for line in path.read_text().splitlines() if line]


# --- in-process: the rules ------------------------------------------------------------

CHANNELS = channel_map(DEFAULT_CHANNELS)


@pytest.mark.parametrize(
    ("flows", "expected"),
    [
        ({"agno3": 100.0}, {"agno3": 100.0, "seed": 0.0, "oil": 0.0}),
        ({"agno3": 800.0, "oil": 1000.0}, {"agno3": 800.0, "oil": 1000.0}),
        ({"water": 0.0}, {"water": 0.0}),
    ],
)
def test_flows_within_limits_are_completed_with_zeros(
    flows: dict[str, float], expected: dict[str, float]
) -> None:
    full = validate_flows(CHANNELS, flows)
    assert set(full) == set(CHANNELS)
    assert {k: full[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("flows", "words"),
    [
        ({"agno3": 800.1}, ["agno3", "800.1", "hard limits"]),
        ({"oil": 1e6, "seed": 900.0}, ["oil", "seed"]),
        ({"nitrogen": 5.0}, ["unknown channel", "nitrogen"]),
    ],
)
def test_flows_outside_limits_or_unknown_are_refused_with_a_reason(
    flows: dict[str, float], words: list[str]
) -> None:
    with pytest.raises(SetpointRefused) as err:
        validate_flows(CHANNELS, flows)
    assert all(w in str(err.value) for w in words)


def test_a_channel_with_a_minimum_is_either_off_or_above_it() -> None:
    chans = channel_map([Channel("oil", 50.0, 500.0)])
    assert validate_flows(chans, {"oil": 0.0}) == {"oil": 0.0}
    assert validate_flows(chans, {"oil": 50.0}) == {"oil": 50.0}
    with pytest.raises(SetpointRefused):
        validate_flows(chans, {"oil": 10.0})


@pytest.mark.parametrize(
    ("safe", "words"),
    [({"nitrogen": 5.0}, ["unknown channel", "nitrogen"]), ({"oil": 2000.0}, ["oil", "2000"])],
)
def test_safe_flows_are_held_to_the_hard_limits(safe: dict[str, float], words: list[str]) -> None:
    """A purge recipe as the safe state: known channels, within their limits."""
    assert SimulatedPump(safe_flows={"water": 50.0, "oil": 25.0}).safe_flows["oil"] == 25.0
    with pytest.raises(ValueError, match="safe flows") as err:
        SimulatedPump(safe_flows=safe)
    assert all(w in str(err.value) for w in words)


def test_applied_log_survives_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "applied.jsonl"
    log = AppliedLog(path)
    log.open()
    log.record("a", "c1", {"agno3": 1.0})
    log.record("b", "c2", {"agno3": 2.0})
    log.close()
    with path.open("a") as fh:
        fh.write('{"cmd_id": "c", "condi')  # a crash mid-write
    again = AppliedLog(path)
    assert again.open() == 2
    assert "a" in again and "b" in again and "c" not in again
    again.close()


# --- processes --------------------------------------------------------------------------


@pytest.mark.e2e
async def test_setpoint_is_acked_then_ramped_then_stable(
    agent: FakeAgent, start_driver: StartDriver
) -> None:
    _pump(start_driver, agent)
    await agent.greet(b"pump")
    flows = {"agno3": 200.0, "pva": 300.0, "water": 100.0}
    await agent.send(b"pump", Setpoint, cmd_id="s1", condition="c1", flows=flows)
    ack = await agent.reply(kind="setpoint_ack", source=b"pump")
    assert (ack.cmd_id, ack.accepted, ack.reason) == ("s1", True, "")

    final = await agent.event(lambda m: m.cmd_id == "s1" and m.stable, kind="flow_readback")
    assert final.condition == "c1"
    expected = {"agno3": 200.0, "pva": 300.0, "tsc": 0.0, "seed": 0.0, "water": 100.0}
    assert final.flows == expected | {"oil": 0.0}
    ramp = [m for m in agent.events if m.kind == "flow_readback" and m.cmd_id == "s1"]
    moving = [m.flows["agno3"] for m in ramp if not m.stable]
    assert len(moving) >= 5, "readbacks while ramping"
    assert moving == sorted(moving) and 0.0 < moving[-1] < 200.0
    seqs = [m.seq for m in agent.events if m.source == "pump"]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


@pytest.mark.e2e
async def test_a_new_setpoint_supersedes_a_ramp(
    agent: FakeAgent, start_driver: StartDriver
) -> None:
    _pump(start_driver, agent, "--ramp", "25")  # a 0.5 s ramp: long enough to interrupt
    await agent.greet(b"pump")
    await agent.send(b"pump", Setpoint, cmd_id="slow", condition="c1", flows={"agno3": 800.0})
    await agent.event(lambda m: m.cmd_id == "slow" and not m.stable, kind="flow_readback")
    await agent.send(b"pump", Setpoint, cmd_id="fast", condition="c2", flows={"seed": 10.0})
    final = await agent.event(lambda m: m.cmd_id == "fast" and m.stable, kind="flow_readback")
    assert final.flows["agno3"] == 0.0 and final.flows["seed"] == 10.0
    assert not any(m.cmd_id == "slow" and m.stable for m in agent.events)


@pytest.mark.e2e
async def test_duplicate_setpoint_gets_the_same_ack_and_is_applied_once(
    agent: FakeAgent, start_driver: StartDriver, tmp_path: Path
) -> None:
    log = tmp_path / "applied.jsonl"
    _pump(start_driver, agent, "--applied-log", str(log))
    await agent.greet(b"pump")
    acks = []
    for _ in range(3):
        await agent.send(b"pump", Setpoint, cmd_id="dup", condition="c1", flows={"tsc": 40.0})
        acks.append(await agent.reply(kind="setpoint_ack", source=b"pump"))
    await agent.event(lambda m: m.cmd_id == "dup" and m.stable, kind="flow_readback")
    await agent.send(b"pump", Setpoint, cmd_id="dup", condition="c1", flows={"tsc": 40.0})
    acks.append(await agent.reply(kind="setpoint_ack", source=b"pump"))

    assert {(a.cmd_id, a.accepted, a.reason) for a in acks} == {("dup", True, "")}
    assert len({a.msg_id for a in acks}) == 4, "each copy is a new message"
    assert _applied(log) == ["dup"]
    line = json.loads(log.read_text().splitlines()[0])
    assert line["condition"] == "c1" and line["flows"]["tsc"] == 40.0 and line["ts"] > 0
    ramps = [m for m in agent.events if m.cmd_id == "dup" and not m.stable]
    assert ramps[0].flows["tsc"] == 0.0, "one ramp, from the start"


@pytest.mark.e2e
async def test_out_of_limit_setpoint_is_refused_and_not_applied(
    agent: FakeAgent, start_driver: StartDriver, tmp_path: Path
) -> None:
    log = tmp_path / "applied.jsonl"
    _pump(start_driver, agent, "--applied-log", str(log), "--channel", "agno3:0:500")
    await agent.greet(b"pump")
    for cmd_id, flows in [("big", {"agno3": 600.0}), ("odd", {"pva": 10.0})]:
        for _ in range(2):  # a refused command's duplicate gets the same refusal
            await agent.send(b"pump", Setpoint, cmd_id=cmd_id, condition="c1", flows=flows)
            ack = await agent.reply(kind="setpoint_ack", source=b"pump")
            assert ack.cmd_id == cmd_id and not ack.accepted
    reasons = [m.reason for i, m in agent.replies if m and m.kind == "setpoint_ack"]
    assert "agno3" in reasons[0] and "hard limits" in reasons[0] and reasons[0] == reasons[1]
    assert "unknown channel" in reasons[2] and "pva" in reasons[2]

    await agent.send(b"pump", Setpoint, cmd_id="ok", condition="c2", flows={"agno3": 500.0})
    await agent.event(lambda m: m.cmd_id == "ok" and m.stable, kind="flow_readback")
    assert not any(m.cmd_id in ("big", "odd") for m in agent.events)
    assert _applied(log) == ["ok"]


@pytest.mark.e2e
async def test_safe_state_stops_every_flow(agent: FakeAgent, start_driver: StartDriver) -> None:
    _pump(start_driver, agent, "--safe-flows", "oil=5")
    await agent.greet(b"pump")
    await agent.send(b"pump", Setpoint, cmd_id="s1", condition="c1", flows={"agno3": 100.0})
    await agent.event(lambda m: m.cmd_id == "s1" and m.stable, kind="flow_readback")
    await agent.send(b"pump", SafeState, cmd_id="safe-1", reason="test")
    ack = await agent.reply(lambda m: m.cmd_id == "safe-1", kind="setpoint_ack")
    assert ack.accepted
    safe = await agent.event(lambda m: m.cmd_id == "safe-1", kind="flow_readback")
    assert safe.stable and safe.condition == ""
    assert safe.flows["agno3"] == 0.0 and safe.flows["oil"] == 5.0


@pytest.mark.e2e
async def test_restarted_pump_does_not_reapply_a_known_cmd_id(
    agent: FakeAgent, start_driver: StartDriver, tmp_path: Path
) -> None:
    log = tmp_path / "applied.jsonl"
    first = _pump(start_driver, agent, "--applied-log", str(log))
    hello1 = await agent.greet(b"pump")
    await agent.send(b"pump", Setpoint, cmd_id="once", condition="c1", flows={"seed": 50.0})
    await agent.event(lambda m: m.cmd_id == "once" and m.stable, kind="flow_readback")
    assert await first.terminate() == 0

    restarted = time.time()
    _pump(start_driver, agent, "--applied-log", str(log))
    hello2 = await agent.reply(lambda m: m.session != hello1.session, kind="hello")
    await agent.send(b"pump", Heartbeat)
    await agent.send(b"pump", Setpoint, cmd_id="once", condition="c1", flows={"seed": 50.0})
    ack = await agent.reply(lambda m: m.ts >= restarted, kind="setpoint_ack")
    assert ack.cmd_id == "once" and ack.accepted and ack.reason == "already applied"
    await agent.send(b"pump", Setpoint, cmd_id="next", condition="c2", flows={"seed": 20.0})
    await agent.event(lambda m: m.cmd_id == "next" and m.stable, kind="flow_readback")

    after = [m for m in agent.events if m.ts >= restarted]
    assert not any(m.cmd_id == "once" for m in after), "not re-applied after the restart"
    assert hello2.seq == 0
    assert _applied(log) == ["once", "next"]


@pytest.mark.e2e
async def test_a_taken_reactor_endpoint_stops_the_second_pump_with_code_2(
    agent: FakeAgent, start_driver: StartDriver, reactor: str
) -> None:
    start_driver("pump", "--connect", agent.base, *FAST, "--reactor", reactor)
    await agent.reply(kind="hello", source=b"pump")  # bound by the time it says hello
    second = start_driver("pump", "--connect", agent.base, "--name", "pump2", "--reactor", reactor)
    assert await second.wait() == 2
    failed = [r for r in second.records() if r.get("event") == "driver_start_failed"]
    assert failed and "Address already in use" in failed[0]["error"]
