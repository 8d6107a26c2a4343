"""The reliability bar: SIGKILL the agent at random points, resume from the journal each time.

The three simulated drivers run as real processes for the whole test; the
agent (``sdl-agent run``) is a real process, killed with SIGKILL five times at
points chosen by watching its status PUB (right after the k-th proposal or
condition completion it announces), and restarted with ``--resume``. At the
end: every condition exactly once and complete, nothing lost, no condition
measured again after it completed, and the pump's own fsynced applied log
shows no command id applied twice.
"""

from __future__ import annotations

import asyncio
import csv
import json
import signal
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np
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
TIMEOUT = 60.0
ROUNDS, BATCH, KILLS = 4, 3, 5
SETTINGS = {
    "campaign.batch_size": BATCH,
    "stop.max_rounds": ROUNDS,
    "strategy.kind": '"lhs"',  # no GP: this test is about the journal, not the optimiser
    "replicates.min_count": 3,
    "replicates.per_acquire": 3,
    "replicates.max_count": 6,
    "replicates.settle_window": 1,
    "replicates.timeout_s": 5.0,
    "replicates.retries": 5,
    "drivers.settle_timeout_s": 3.0,
}


def sdl_agent(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from agent.cli import main; sys.exit(main())", *args]


async def test_sigkill_at_random_points_and_resume_loses_nothing_and_applies_nothing_twice(
    tmp_path,
):
    rng = np.random.default_rng(20261123)
    base = find_free_base()
    ep = Endpoints.from_base(base)
    out = tmp_path / "run"
    journal = out / "journal.sqlite"
    applied = tmp_path / "applied.jsonl"
    sets = [x for k, v in SETTINGS.items() for x in ("--set", f"{k}={v}")]
    args = ["run", str(CAMPAIGN), "--base", base, "--out", str(out), *sets]
    drivers = start_drivers(
        base,
        time_scale=0.005,
        seed=0,
        log_dir=tmp_path / "logs",
        extra={"pump": ["--applied-log", str(applied)]},
    )
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(ep.status)
    reactor = ctx.socket(zmq.SUB)  # the pump's own stream of readbacks (simulation plumbing)
    reactor.setsockopt(zmq.LINGER, 0)
    reactor.setsockopt(zmq.SUBSCRIBE, b"flow_readback.")
    port = int(base.rsplit(":", 1)[1])
    reactor.connect(f"tcp://127.0.0.1:{port + 3}")  # the pump's default --reactor port
    reached: set[str] = set()
    kill_points: list[str] = []
    agent: asyncio.subprocess.Process | None = None
    try:
        for life in range(KILLS + 1):
            for stale in _drain(sub) + _drain(reactor):  # watch only what this life does
                if isinstance(stale, m.FlowReadback):
                    reached.add(stale.cmd_id)
            err = (tmp_path / f"agent-{life}.log").open("wb")
            started = time.time()
            agent = await asyncio.create_subprocess_exec(
                *sdl_agent(*args, *(["--resume"] if life else [])),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=err,
            )
            err.close()
            if life == KILLS:  # the last life runs to the end
                assert await asyncio.wait_for(agent.wait(), TIMEOUT) == 0, _tail(tmp_path, life)
                break
            # kill after the k-th proposal/completion the agent announces (the next setpoint
            # is on its way), or after the pump reports the k-th new setpoint reached (the
            # agent is starting to measure). Only once this life is up, as its first status
            # event stamped after its start shows: the pump may still report reaching a
            # setpoint of the life before, and a kill before the agent opened its journal
            # would test nothing.
            k = int(rng.integers(1, 3))
            watch = sub if life % 2 == 0 else reactor
            seen: set[str] = set()
            exited = asyncio.ensure_future(agent.wait())
            async with asyncio.timeout(TIMEOUT):
                while (await _next(sub, exited, tmp_path, life)).ts < started:
                    pass
                for stale in _drain(reactor):
                    if isinstance(stale, m.FlowReadback):
                        reached.add(stale.cmd_id)
                while len(seen) < k:
                    msg = await _next(watch, exited, tmp_path, life)
                    if isinstance(msg, m.Proposal | m.ConditionComplete):
                        where = f"{msg.kind} " + getattr(msg, "condition", f"round {msg.round}")
                        seen.add(where)
                    elif isinstance(msg, m.FlowReadback) and msg.stable and msg.condition:
                        if msg.cmd_id not in reached:
                            reached.add(msg.cmd_id)
                            where = f"reached {msg.cmd_id}"
                            seen.add(where)
            agent.send_signal(signal.SIGKILL)
            assert await asyncio.wait_for(exited, TIMEOUT) == -signal.SIGKILL
            kill_points.append(where)
    finally:
        sub.close()
        reactor.close()
        ctx.term()
        if agent is not None and agent.returncode is None:
            agent.kill()
            await agent.wait()
        stop_drivers(drivers)

    assert len(set(kill_points)) == KILLS, kill_points  # five different points

    # every condition exactly once, all complete: the run's CSV and the journal's export
    rows = list(csv.DictReader((out / "conditions.csv").read_text().splitlines()))
    names = [r["condition"] for r in rows]
    assert len(names) == ROUNDS * BATCH == len(set(names))
    assert all(r["status"] == "complete" and r["median_loss"] for r in rows), rows
    export = tmp_path / "export"
    proc = await asyncio.create_subprocess_exec(
        *sdl_agent("export", str(journal), "--csv", str(export)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 0, stderr.decode()
    exported = list(csv.DictReader((export / "conditions.csv").read_text().splitlines()))
    assert [(r["condition"], r["median_loss"]) for r in exported] == [
        (r["condition"], r["median_loss"]) for r in rows
    ]

    db = sqlite3.connect(journal)
    try:
        # nothing measured again once complete (late droplets are rejected, not used)
        remeasured = db.execute(
            "SELECT count(*) FROM replicates r JOIN conditions c USING (condition) "
            "WHERE r.seq > c.done_seq AND r.verdict = 'accepted'"
        ).fetchone()[0]
        assert remeasured == 0
        sent = [r[0] for r in db.execute("SELECT cmd_id FROM setpoints")]
    finally:
        db.close()

    # the pump applied no command twice, and every command it applied is journalled
    lines = [json.loads(x) for x in applied.read_text().splitlines()]
    ids = [x["cmd_id"] for x in lines]
    assert len(ids) == len(set(ids))
    setpoint_ids = [i for i, x in zip(ids, lines, strict=True) if x["condition"]]
    assert set(setpoint_ids) <= set(sent)

    resumed = 0
    for life in range(1, KILLS + 1):
        log = (tmp_path / f"agent-{life}.log").read_text().splitlines()
        resumed += any('"campaign_resumed"' in line for line in log)
    assert resumed == KILLS


async def _next(
    sock: zmq.asyncio.Socket, exited: asyncio.Future[int], tmp_path: Path, life: int
) -> m.Message:
    """The next message on ``sock``; fails the test if the agent exits first."""
    frames = asyncio.ensure_future(sock.recv_multipart())
    await asyncio.wait({frames, exited}, return_when=asyncio.FIRST_COMPLETED)
    if not frames.done():
        frames.cancel()
        pytest.fail(f"agent life {life} exited early:\n{_tail(tmp_path, life)}")
    return decode(frames.result())


def _drain(sock: zmq.asyncio.Socket) -> list[m.Message]:
    out = []
    while True:
        try:
            frames = sock.recv_multipart(flags=zmq.NOBLOCK).result()
        except zmq.Again:
            return out
        out.append(decode(frames))


def _tail(tmp_path: Path, life: int) -> str:
    return (tmp_path / f"agent-{life}.log").read_text()[-3000:]
