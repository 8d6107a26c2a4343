"""The agent's asyncio shell over real ZeroMQ sockets on loopback.

The instruments here are small in-test peers speaking the wire protocol (real
DEALER/PUB sockets); a rogue peer sends bad input of every kind while the
campaign runs. The simulated-driver processes are exercised in test_e2e.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time

import numpy as np
import pytest
import structlog
import zmq
import zmq.asyncio

from agent.core.campaign import Campaign
from agent.core.testing import TOY_GRID, toy_settings, toy_spectrum
from agent.demo import find_free_base
from agent.journal import Journal
from agent.runtime import AgentRuntime
from protocols import messages as m
from protocols.codec import decode, encode, spectrum_array
from protocols.sockets import Endpoints, configure

TIMEOUT = 30.0


class Peer:
    """One instrument: a DEALER to the agent's commands endpoint, a PUB to its events."""

    def __init__(self, ctx: zmq.asyncio.Context, ep: Endpoints, role: str) -> None:
        self.role = role
        self.dealer = configure(ctx.socket(zmq.DEALER))
        self.dealer.setsockopt(zmq.IDENTITY, role.encode())
        self.dealer.connect(ep.commands)
        self.pub = configure(ctx.socket(zmq.XPUB))  # XPUB: we can see the subscription
        self.pub.connect(ep.events)
        self.seq = {"dealer": 0, "pub": 0}
        self.acked: dict[str, m.Message] = {}
        self.applied: list[str] = []

    def env(self, sock: str) -> dict:
        seq = self.seq[sock]
        self.seq[sock] += 1
        return {"msg_id": m.new_id(), "source": self.role, "seq": seq, "ts": time.time()}

    async def subscribed(self) -> None:
        """Wait for the agent's subscription: PUB/SUB drops what is sent before it."""
        await asyncio.wait_for(self.pub.recv(), TIMEOUT)

    async def tell(self, msg_cls, **fields) -> None:
        await self.dealer.send_multipart(encode(msg_cls(**fields, **self.env("dealer"))))

    async def publish(self, msg_cls, **fields) -> None:
        await self.pub.send_multipart(encode(msg_cls(**fields, **self.env("pub"))))

    def close(self) -> None:
        self.dealer.close(0)
        self.pub.close(0)


async def serve(peer: Peer, recipes: dict[str, dict[str, float]], on_message=None) -> None:
    """Answer the agent as a perfect instrument would (``on_message`` sees each message first)."""
    await peer.subscribed()
    await peer.tell(m.Hello, role=peer.role, session=m.new_id())
    replicate: dict[str, int] = {}
    while True:
        msg = decode(await peer.dealer.recv_multipart())
        if on_message is not None:
            on_message(peer, msg)
        if isinstance(msg, m.Hello):  # the agent greets drivers it does not know
            await peer.tell(m.Hello, role=peer.role, session=m.new_id())
        elif isinstance(msg, m.Heartbeat):
            await peer.tell(m.Heartbeat)
        elif isinstance(msg, m.Setpoint | m.SafeState):
            if msg.cmd_id not in peer.acked:
                peer.applied.append(msg.cmd_id)
                peer.acked[msg.cmd_id] = msg
            await peer.tell(m.SetpointAck, cmd_id=msg.cmd_id, accepted=True)
            if isinstance(msg, m.Setpoint):
                recipes[msg.condition] = dict(msg.flows)
                await peer.publish(
                    m.FlowReadback,
                    cmd_id=msg.cmd_id,
                    condition=msg.condition,
                    flows=msg.flows,
                    stable=True,
                )
        elif isinstance(msg, m.Acquire):
            await peer.tell(m.AcquireAck, cmd_id=msg.cmd_id, accepted=True)
            if peer.role == "spectrometer":
                for _ in range(msg.n):
                    k = replicate.get(msg.condition, 0)
                    replicate[msg.condition] = k + 1
                    values = toy_spectrum(recipes[msg.condition])
                    await peer.publish(
                        m.Spectrum,
                        condition=msg.condition,
                        replicate=k,
                        wl_start=TOY_GRID.start,
                        wl_step=TOY_GRID.step,
                        n_points=TOY_GRID.n,
                        values=values,
                    )
            else:
                await peer.publish(
                    m.PhaseLabel, condition=msg.condition, phase="Ag-fcc", confidence=0.9
                )


async def rogue(ctx: zmq.asyncio.Context, ep: Endpoints, condition: str) -> int:
    """Send one of every kind of bad input to both agent endpoints; return how many."""
    pub = configure(ctx.socket(zmq.XPUB))
    dealer = configure(ctx.socket(zmq.DEALER))
    dealer.setsockopt(zmq.IDENTITY, b"rogue")
    pub.connect(ep.events)
    dealer.connect(ep.commands)
    good = m.Spectrum(
        msg_id="x1",
        source="rogue",
        seq=0,
        ts=1.0,
        condition=condition,
        replicate=900,
        wl_start=TOY_GRID.start,
        wl_step=TOY_GRID.step,
        n_points=TOY_GRID.n,
        values=[0.1] * TOY_GRID.n,
    )
    topic, body, values = encode(good)
    doc = json.loads(body)
    nan = np.array([0.1] * (TOY_GRID.n - 1) + [np.nan]).tobytes()
    bad_frames = [
        [b"garbage"],
        [b"spectrum.rogue", b"\xff\xfe not json", values],
        [b"x.rogue", json.dumps({**doc, "kind": "teleport"}).encode(), values],
        [topic, json.dumps({**doc, "v": 99}).encode(), values],
        [topic, body, nan],
        [topic, json.dumps({**doc, "n_points": 3}).encode(), values],
        [topic, json.dumps({**doc, "n_points": 4, "seq": 1}).encode(), np.full(4, 0.1).tobytes()],
        [topic, json.dumps({**doc, "condition": "r99-c99", "seq": 2}).encode(), values],
        [topic, json.dumps({**doc, "seq": 2}).encode(), values],  # duplicate seq
        [b"x" * 10, b"y" * (2 << 20)],  # oversized: dropped by ZeroMQ itself
    ]
    try:
        await asyncio.wait_for(pub.recv(), TIMEOUT)  # the agent's subscription is in
        for frames in bad_frames:
            await pub.send_multipart(frames)
        for frames in bad_frames[:5]:
            await dealer.send_multipart(frames)
        await dealer.send_multipart(
            encode(
                m.Setpoint(
                    msg_id="s",
                    source="rogue",
                    seq=0,
                    ts=1.0,
                    cmd_id="c",
                    condition="c",
                    flows={"a": 1.0},
                )
            )
        )
        return len(bad_frames) + 6
    finally:
        pub.close(0)
        dealer.close(0)


@pytest.fixture
def ctx():
    c = zmq.asyncio.Context()
    yield c
    c.term()


async def run_agent(
    campaign, ep, ctx, peers_roles=("pump", "spectrometer", "xrd"), journal=None, on_message=None
):
    rt = AgentRuntime(
        campaign,
        ep,
        tick_interval=0.005,
        heartbeat_interval=0.1,
        drain_s=0.5,
        context=ctx,
        journal=journal,
    )
    agent = asyncio.create_task(rt.run(install_signals=False))
    await asyncio.wait_for(rt.bound.wait(), TIMEOUT)
    recipes: dict[str, dict[str, float]] = {}
    peers = [Peer(ctx, ep, role) for role in peers_roles]
    tasks = [asyncio.create_task(serve(p, recipes, on_message)) for p in peers]
    return rt, agent, peers, tasks


async def finish(agent, peers, tasks):
    try:
        await asyncio.wait_for(agent, TIMEOUT)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for p in peers:
            p.close()


async def test_agent_closes_the_loop_over_real_sockets(ctx):
    ep = Endpoints.from_base(find_free_base())
    campaign = Campaign(toy_settings(rounds=2), seed=3)
    with structlog.testing.capture_logs() as logs:
        _rt, agent, peers, tasks = await run_agent(campaign, ep, ctx)
        await finish(agent, peers, tasks)
    assert campaign.stopped and campaign.stop_reason.rule == "max_rounds"
    assert [r.state for r in campaign.conditions.values()] == ["complete"] * 8
    pump = peers[0]
    setpoints = [c for c in pump.applied if ".safe." not in c]
    assert len(setpoints) == len(set(setpoints)) == 8
    assert any(".safe." in c for c in pump.applied)  # safe state at the end
    events = {e["event"] for e in logs}
    assert {
        "driver_hello",
        "proposal",
        "setpoint_sent",
        "condition_complete",
        "round_complete",
        "campaign_stopped",
    } <= events
    for e in logs:  # every decision about a condition carries its round and id
        if e["event"] in ("setpoint_sent", "acquire_sent", "condition_complete"):
            assert e["round"] in (1, 2) and e["condition"].startswith(f"r0{e['round']}-")


async def test_bad_input_is_rejected_with_reasons_and_nothing_is_lost(ctx):
    ep = Endpoints.from_base(find_free_base())
    campaign = Campaign(toy_settings(rounds=2), seed=4)
    with structlog.testing.capture_logs() as logs:
        rt, agent, peers, tasks = await run_agent(campaign, ep, ctx)
        # wait (bounded) until the first condition is being measured, then attack
        await rt.wait_until(
            lambda: any(c.state == "measuring" for c in campaign.conditions.values()), TIMEOUT
        )
        active = next(c for c in campaign.conditions.values() if c.state == "measuring")
        await rogue(ctx, ep, active.condition)
        await finish(agent, peers, tasks)
    assert campaign.stopped and campaign.stop_reason.rule == "max_rounds"
    assert [r.state for r in campaign.conditions.values()] == ["complete"] * 8
    rejected = [e for e in logs if e["event"] == "message_rejected"]
    codes = {e["code"] for e in rejected}
    assert all(e.get("reason") for e in rejected)
    # codec-level rejections, from both endpoints
    assert {
        "malformed",
        "unknown_kind",
        "unsupported_version",
        "non_finite",
        "wrong_length",
    } <= codes
    assert "unexpected_kind" in codes  # a driver may not send commands
    assert rt.counters.rejected >= 10
    # the rogue's replicate 900 for the active condition never entered its median
    assert all(
        900 not in (c.replicates.status().used if c.replicates else ())
        for c in campaign.conditions.values()
    )


async def test_every_command_is_journalled_before_it_reaches_a_driver(ctx, tmp_path):
    """The instruments look into the journal (their own connection) as each command arrives."""
    ep = Endpoints.from_base(find_free_base())
    campaign = Campaign(toy_settings(rounds=2), seed=5)
    path = tmp_path / "journal.sqlite"
    journal = Journal.create(
        path, campaign_id="toy", config_hash="0" * 64, seed=5, parameters=["a", "b"]
    )
    reader = sqlite3.connect(path)
    missing: list[str] = []
    seen: list[str] = []

    def look(peer: Peer, msg: m.Message) -> None:
        if isinstance(msg, m.Setpoint):
            sql = "SELECT count(*) FROM setpoints WHERE cmd_id = ?"
        elif isinstance(msg, m.Acquire | m.SafeState):
            sql = "SELECT count(*) FROM events WHERE what = 'command' AND cmd_id = ?"
        else:
            return
        seen.append(msg.cmd_id)
        if reader.execute(sql, (msg.cmd_id,)).fetchone()[0] != 1:
            missing.append(msg.cmd_id)

    try:
        rt, agent, peers, tasks = await run_agent(
            campaign, ep, ctx, journal=journal, on_message=look
        )
        await rt.wait_until(
            lambda: any(c.state == "measuring" for c in campaign.conditions.values()), TIMEOUT
        )
        n_bad = await rogue(ctx, ep, campaign.active.condition)
        await finish(agent, peers, tasks)
    finally:
        journal.close()
    assert campaign.stopped and len(seen) > 16 and missing == []
    rows = reader.execute("SELECT count(*) FROM events WHERE what = 'rejection'").fetchone()[0]
    assert 5 <= rows <= n_bad  # codec-level rejections, journalled (ZeroMQ drops the oversized)
    with Journal.open(path) as j:
        restored = Campaign.restore(toy_settings(rounds=2), 5, j.facts())
    assert restored.stopped and restored.best_by_round == campaign.best_by_round
    reader.close()


async def test_gap_in_a_sources_sequence_is_logged_and_counted(ctx):
    ep = Endpoints.from_base(find_free_base())
    campaign = Campaign(toy_settings(rounds=1), seed=5)
    with structlog.testing.capture_logs() as logs:
        rt, agent, peers, tasks = await run_agent(campaign, ep, ctx)
        xrd = peers[2]
        await rt.wait_until(lambda: "xrd" in rt._identity, TIMEOUT)
        xrd.seq["dealer"] += 5  # five heartbeats "lost"
        await finish(agent, peers, tasks)
    gaps = [e for e in logs if e["event"] == "sequence_gap"]
    assert gaps and gaps[0]["source"] == "xrd" and gaps[0]["missing"] == 5
    assert rt.counters.missing >= 5
    assert campaign.stopped


def test_spectrum_model_round_trip_keeps_values():
    values = np.linspace(0, 1, 5).tolist()
    msg = m.Spectrum(
        msg_id="a",
        source="s",
        seq=0,
        ts=0.0,
        condition="c",
        replicate=0,
        wl_start=400.0,
        wl_step=10.0,
        n_points=5,
        values=values,
    )
    assert spectrum_array(decode(encode(msg))).tolist() == values


async def test_progress_views_go_out_only_once_their_spectra_are_committed(ctx, tmp_path):
    """Group commit: a monitor's condition_progress never runs ahead of the journal
    (another connection sees every replicate it counts), and the run ends with
    nothing deferred."""
    ep = Endpoints.from_base(find_free_base())
    campaign = Campaign(toy_settings(rounds=1), seed=5)
    path = tmp_path / "journal.sqlite"
    journal = Journal.create(
        path, campaign_id="toy", config_hash="0" * 64, seed=5, parameters=["a", "b"]
    )
    reader = sqlite3.connect(path)
    views: list[tuple[int, int]] = []

    def look(msg: m.Message) -> None:
        if isinstance(msg, m.ConditionProgress):
            sql = "SELECT count(*) FROM replicates WHERE condition = ?"
            rows = reader.execute(sql, (msg.condition,)).fetchone()[0]
            views.append((msg.n_accepted + msg.n_rejected, rows))

    try:
        rt, agent, peers, tasks = await run_agent(campaign, ep, ctx, journal=journal)
        rt.on_status = look
        await finish(agent, peers, tasks)
        assert journal.deferred == 0
    finally:
        journal.close()
    assert campaign.stopped and len(views) > 5
    assert all(rows >= counted for counted, rows in views)
    reader.close()
