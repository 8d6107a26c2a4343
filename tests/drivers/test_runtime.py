"""The driver runtime: hello/heartbeat, campaign echo, bad input, link loss, signals.

The pump stands in for any driver here (it needs no forward model).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from drivers.runtime import AckMemory, RuntimeSettings, StoredAck
from protocols.codec import encode
from protocols.messages import (
    Acquire,
    Heartbeat,
    Hello,
    Setpoint,
    SetpointAck,
    Spectrum,
)

if TYPE_CHECKING:
    from conftest import DriverProcess, FakeAgent, StartDriver

FAST = ["--time-scale", "0.01", "--no-reactor", "--heartbeat", "0.05"]


def _pump(start_driver: StartDriver, agent: FakeAgent, *extra: str) -> DriverProcess:
    return start_driver("pump", "--connect", agent.base, *FAST, *extra)


# --- in-process --------------------------------------------------------------------


def test_ack_memory_keeps_the_most_recent() -> None:
    mem = AckMemory(capacity=3)
    for c in "abc":
        mem.put(StoredAck(SetpointAck, c, True, ""))
    assert mem.get("a") is not None  # touch: "a" is now the most recent
    mem.put(StoredAck(SetpointAck, "d", False, "no"))
    assert "b" not in mem and {"a", "c", "d"} <= {c for c in "abcd" if c in mem}
    assert len(mem) == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "bad name!"},
        {"heartbeat_s": 1.0, "heartbeat_timeout_s": 0.5},
        {"connect": "udp://x:1"},
        {"ack_memory": 0},
    ],
)
def test_settings_refuse_nonsense(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RuntimeSettings(**kwargs)


# --- processes ---------------------------------------------------------------------


@pytest.mark.e2e
async def test_hello_until_the_agent_speaks_then_heartbeats_with_campaign(
    agent: FakeAgent, start_driver: StartDriver
) -> None:
    _pump(start_driver, agent, "--heartbeat-timeout", "20")
    first = await agent.reply(kind="hello", source=b"pump")
    second = await agent.reply(kind="hello", source=b"pump")
    assert first.role == "pump" and first.source == "pump" and first.campaign == ""
    assert first.session and second.session == first.session
    assert "pump" in first.instrument
    assert first.seq == 0 and second.seq > first.seq

    agent.campaign = "camp-1"
    await agent.send(b"pump", Heartbeat)
    beat = await agent.reply(kind="heartbeat", source=b"pump")
    assert beat.campaign == "camp-1"
    # one counter for the DEALER: hellos, heartbeats (and acks) share it, no gaps
    seqs = [m.seq for ident, m in agent.replies if ident == b"pump" and m is not None]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


@pytest.mark.e2e
async def test_bad_input_is_rejected_and_the_driver_keeps_serving(
    agent: FakeAgent, start_driver: StartDriver
) -> None:
    pump = _pump(start_driver, agent, "--heartbeat-timeout", "20")
    await agent.greet(b"pump")
    heartbeat = json.loads(encode(agent.message(Heartbeat))[1])
    bad_frames = [
        [b"setpoint.agent", b"\xffnot json"],  # malformed
        [b"only one frame"],  # malformed
        [b"heartbeat.agent", b"x", b"three frames"],  # malformed
        [b"explode.agent", json.dumps({**heartbeat, "kind": "explode"}).encode()],  # unknown
        [b"heartbeat.agent", json.dumps({**heartbeat, "v": 99}).encode()],  # version
        [b"h" * 600_000, b"z" * 600_000],  # oversized: each frame fits, together they do not
        [b"heartbeat.other", json.dumps(heartbeat).encode()],  # topic mismatch
    ]
    for frames in bad_frames:
        await agent.send_raw(b"pump", frames)
    spectrum = agent.message(
        Spectrum, condition="c", replicate=0, wl_start=380, wl_step=1, n_points=2, values=[0, 1]
    )
    await agent.send_raw(b"pump", encode(spectrum))  # a kind no driver takes
    await agent.send(b"pump", Acquire, cmd_id="acq-1", condition="c1", n=1)  # not a pump's
    refused = await agent.reply(kind="acquire_ack", source=b"pump")
    assert refused.cmd_id == "acq-1" and not refused.accepted and "acquire" in refused.reason

    await agent.send(b"pump", Setpoint, cmd_id="ok-1", condition="c1", flows={"agno3": 10.0})
    ack = await agent.reply(kind="setpoint_ack", source=b"pump")
    assert ack.cmd_id == "ok-1" and ack.accepted
    assert pump.proc.poll() is None

    rejected = [r for r in pump.records() if r.get("event") == "message_rejected"]
    codes = {r["code"] for r in rejected}
    assert {
        "malformed",
        "unknown_kind",
        "unsupported_version",
        "oversized",
        "topic_mismatch",
        "unexpected_kind",
        "unhandled_kind",
    } <= codes
    assert all(r["reason"] for r in rejected)


@pytest.mark.e2e
async def test_link_loss_sends_the_pump_to_safe_state_and_back_to_hellos(
    agent: FakeAgent, start_driver: StartDriver
) -> None:
    _pump(start_driver, agent, "--heartbeat-timeout", "0.4")
    hello = await agent.greet(b"pump")
    await agent.send(b"pump", Setpoint, cmd_id="s1", condition="c1", flows={"agno3": 100.0})
    await agent.event(lambda m: m.stable and m.cmd_id == "s1", kind="flow_readback")
    beat = await agent.reply(kind="heartbeat", source=b"pump")
    # the agent falls silent: the pump must stop its flows and say hello again
    safe = await agent.event(lambda m: m.cmd_id == "" and m.stable, kind="flow_readback")
    assert set(safe.flows.values()) == {0.0}
    again = await agent.reply(lambda m: m.seq > beat.seq, kind="hello", source=b"pump")
    assert again.session == hello.session


@pytest.mark.e2e
async def test_a_hello_from_the_agent_is_answered_with_a_hello_at_once(
    agent: FakeAgent, start_driver: StartDriver
) -> None:
    """The agent counted the driver down (it went silent, docs/protocol.md 7.5) while
    the driver still hears it: the agent's hello brings the driver's hello, not a
    rejection, well before the driver's own link-loss timeout (5 s)."""
    _pump(start_driver, agent)
    hello = await agent.greet(b"pump")
    beat = await agent.reply(kind="heartbeat", source=b"pump")
    await agent.send(b"pump", Hello, role="agent", session="a2", instrument="sdl-agent")
    again = await agent.reply(lambda m: m.seq > beat.seq, kind="hello", source=b"pump", timeout=3.0)
    assert again.session == hello.session  # the same process: the same session


@pytest.mark.e2e
async def test_sigterm_exits_cleanly(agent: FakeAgent, start_driver: StartDriver) -> None:
    pump = _pump(start_driver, agent)
    await agent.reply(kind="hello", source=b"pump")
    assert await pump.terminate(timeout=5.0) == 0
    events = [r.get("event") for r in pump.records()]
    assert "signal_received" in events and events[-1] == "driver_stopped"


@pytest.mark.e2e
async def test_a_model_that_does_not_build_exits_with_code_2(
    agent: FakeAgent, start_driver: StartDriver
) -> None:
    spec = start_driver(
        "spectrometer", "--connect", agent.base, "--model", "toy_world:broken_world"
    )
    assert await spec.wait() == 2
    assert any(r.get("event") == "driver_config_invalid" for r in spec.records())
