"""The fault matrix: the agent and three simulated drivers as real processes, the
drivers injecting faults into their own traffic (``drivers.inject``), and a
driver killed and restarted mid-condition.

Each case runs a small time-scaled campaign (``ROUNDS`` rounds of ``BATCH``
conditions, a replicate rule with ``min_count = max_count = 5`` so that the
number of valid replicates per condition is fixed) and checks the outcome,
not the path: the rounds complete, every condition is complete exactly once,
each with exactly the replicates its rule demands (the run's CSV and the
journal agree), no replicate counted twice, the pump applied no command id
twice, and the faults were really injected (the drivers' counts) and seen by
the agent (gaps, duplicates, late and corrupt messages in its log).

The fault draws are seeded per driver, direction and socket, so the n-th
message a driver receives gets the same draw in every run: the seeds are
chosen (``seed_for``) so that each fault kind under test hits one of the first
few commands and heartbeats some driver receives, whatever the timing.

Knobs for longer, harsher runs (docs/reliability.md): ``SDL_FAULT_RATE`` (default
0.05, per fault kind and direction) and ``SDL_FAULT_ROUNDS`` (default 2).
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.demo import driver_command, find_free_base
from drivers.inject import FaultRates, draw

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = ROOT / "examples" / "agnp.toml"
RATE = float(os.environ.get("SDL_FAULT_RATE", "0.05"))
ROUNDS = int(os.environ.get("SDL_FAULT_ROUNDS", "2"))
BATCH = 4
REPLICATES = 5  # min_count = max_count = per_acquire: every condition ends with exactly 5
TIMEOUT = 90.0 + 30.0 * ROUNDS  # generous: a loaded 2-core machine

# pytest-timeout's 120 s is too short for long runs (SDL_FAULT_ROUNDS)
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(TIMEOUT + 60)]

ROLES = ("pump", "spectrometer", "xrd")
EARLY = 6  # each driver receives at least this many messages (hello answer, commands)
TIME_SCALE = 0.005
FAULTS = ("drop", "duplicate", "delay", "reorder", "corrupt")
CODEC_CODES = {
    "invalid",
    "malformed",
    "oversized",
    "unknown_kind",
    "unsupported_version",
    "non_finite",
    "wrong_length",
    "topic_mismatch",
}
SETTINGS = {
    "campaign.batch_size": BATCH,
    "stop.max_rounds": ROUNDS,
    "strategy.kind": '"lhs"',  # no GP: this is about the wire, not the optimiser
    "replicates.min_count": REPLICATES,
    "replicates.max_count": REPLICATES,
    "replicates.per_acquire": REPLICATES,
    "replicates.settle_window": 1,
    "replicates.timeout_s": 10.0,  # a stall: never expected (asserted)
    "replicates.retries": 2,
    "replicates.droplet_timeout_s": 0.5,
    "drivers.settle_timeout_s": 6.0,
}


def sdl_agent(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from agent.cli import main; sys.exit(main())", *args]


@pytest.mark.parametrize("faults", [*[(f,) for f in FAULTS], FAULTS], ids=[*FAULTS, "all"])
async def test_fault_matrix_every_condition_exactly_once_with_its_replicates(tmp_path, faults):
    extra: dict[str, list[str]] = {}
    for i, role in enumerate(ROLES):
        flags = [x for f in faults for x in (f"--fault-{f}", str(RATE))]
        seed = seed_for(faults[i::3], faults, 100 * (i + 1))
        extra[role] = [*flags, "--fault-seed", str(seed), "--fault-max-delay", "0.05"]
    run = await run_campaign(tmp_path, extra)
    check_outcome(run)

    injected = run.injected()
    for f in faults:  # each fault really injected, both ways
        assert injected[f"out.{f}"] > 0, injected
        assert injected[f"in.{f}"] > 0, injected
    for role in ROLES:  # each driver reports its counts at exit, as logged one by one
        records = run.log(f"{role}.log")
        stopped = [r for r in records if r["event"] == "driver_stopped"]
        one_by_one = Counter(
            f"{r['direction']}.{r['fault']}" for r in records if r["event"] == "fault_injected"
        )
        assert len(stopped) == 1 and stopped[0]["faults"] == dict(one_by_one), (role, stopped)
    seen = run.agent_saw()
    if "drop" in faults:
        assert seen["sequence_gap"] > 0, seen
    if "duplicate" in faults:
        assert seen["rejected:duplicate"] > 0, seen
    if "reorder" in faults:
        assert seen["sequence_late"] > 0, seen
    if "corrupt" in faults:
        # detectable corruption: what reached the agent is rejected with a code and a
        # reason (a corrupted topic may not pass the SUB's filter: at most as many)
        codec = [r for r in run.log("agent.log") if r.get("code") in CODEC_CODES]
        assert 0 < len(codec) <= injected["out.corrupt"], (seen, injected)
        assert all(r["event"] == "message_rejected" and r["reason"] for r in codec)
        for role in ROLES:  # and every corrupted command a driver received, by the driver
            records = run.log(f"{role}.log")
            bad = [r for r in records if r["event"] == "message_rejected"]
            assert all(r["code"] in CODEC_CODES and r["reason"] for r in bad), bad
            hit = [r for r in records if r["event"] == "fault_injected" and r["direction"] == "in"]
            assert len(bad) == sum(r["fault"] == "corrupt" for r in hit), (role, bad, hit)
    if "drop" in faults or "reorder" in faults:
        assert seen["droplets_missing"] + seen["sequence_late"] > 0, seen
    # the agent never counted a lost droplet as a stall: no attempt was retried
    assert seen["condition_retry"] == 0, seen


async def test_driver_killed_and_restarted_mid_condition_loses_and_repeats_nothing(tmp_path):
    # the spectrometer dies after its 12th spectrum (the 3rd condition's 2nd droplet:
    # measuring), the pump right after acking its 6th setpoint (ramping); each is
    # restarted at once (the pump with the same applied log), well within the agent's
    # heartbeat timeout: the agent tells the restart by the new session in the hello
    extra = {
        "pump": ["--crash-at", "setpoint_ack:6"],
        "spectrometer": ["--crash-at", "spectrum:12"],
        "xrd": [],
    }
    run = await run_campaign(
        tmp_path,
        extra,
        restart={"pump": None, "spectrometer": None},
        # long enough that a restart on a loaded machine is still seen by its new session
        settings={"drivers.heartbeat_timeout_s": 20.0},
    )
    check_outcome(run)
    assert run.restarts == {"pump": 1, "spectrometer": 1}
    for role in ("pump", "spectrometer"):
        first = run.log(f"{role}.log")
        assert [r["fault"] for r in first if r["event"] == "fault_injected"] == ["crash"]
    seen = run.agent_saw()
    assert seen["driver_restarted"] == 2, seen
    assert seen["condition_restarted"] >= 1, seen  # the pump's condition, a new attempt
    # the spectrometer's lost droplets were asked for again, in the same attempt
    assert seen["droplets_missing"] >= 1, seen
    # the restarted spectrometer numbers its droplets from each acquire's first, not
    # from 0 again: none of its droplets is a duplicate of one the attempt already had
    assert not droplets_rejected(run, "duplicate", after=("driver_restarted", "spectrometer"))


async def test_heartbeat_loss_pauses_and_the_returning_driver_resumes_the_campaign(tmp_path):
    # the spectrometer dies mid-condition and comes back only once the agent has
    # counted it down (heartbeat timeout): the campaign pauses, resumes on its hello
    # and asks for the droplets it lost
    extra = {"pump": [], "spectrometer": ["--crash-at", "spectrum:7"], "xrd": []}

    def counted_down(record: dict) -> bool:
        return record.get("event") == "driver_down" and record.get("role") == "spectrometer"

    run = await run_campaign(
        tmp_path,
        extra,
        restart={"spectrometer": counted_down},
        settings={"drivers.heartbeat_timeout_s": 2.0},
    )
    check_outcome(run)
    assert run.restarts == {"spectrometer": 1}
    records = run.log("agent.log")
    events = [r["event"] for r in records]
    down = next(i for i, r in enumerate(records) if counted_down(r))
    paused = events.index("campaign_paused", down)
    assert "campaign_running" in events[paused:], events[down:]
    seen = run.agent_saw()
    assert seen["driver_restarted"] == 0, seen  # it was down already: a plain hello
    assert seen["droplets_missing"] >= 1, seen
    assert not droplets_rejected(run, "duplicate", after=("driver_down", "spectrometer"))


def droplets_rejected(run: Run, code: str, after: tuple[str, str]) -> list[dict]:
    """The agent's rejections of droplets (by the replicate rule or the campaign, not
    on the wire) with ``code`` from its first ``(event, role)`` record on."""
    records = run.log("agent.log")
    start = next(i for i, r in enumerate(records) if (r["event"], r.get("role")) == after)
    return [
        r
        for r in records[start:]
        if r["event"] == "message_rejected" and r["code"] == code and "replicate" in r
    ]


def seed_for(kinds: tuple[str, ...], faults: tuple[str, ...], start: int) -> int:
    """The first seed from ``start`` whose draws give each of ``kinds`` to one of the
    first :data:`EARLY` messages a driver receives (its commands socket), with
    every fault of ``faults`` at :data:`RATE`."""
    rates = FaultRates(**dict.fromkeys(faults, RATE))
    for seed in range(start, start + 100_000):
        rng = random.Random(f"{seed}/in/commands")
        if set(kinds) <= {draw(rates, rng) for _ in range(EARLY)}:
            return seed
    raise AssertionError(f"no seed gives {kinds} early")


# --- the harness ---------------------------------------------------------------------


class Run:
    def __init__(self, tmp_path: Path, base: str) -> None:
        self.dir = tmp_path
        self.base = base
        self.out = tmp_path / "run"
        self.applied = tmp_path / "applied.jsonl"
        self.restarts: dict[str, int] = {}

    def log(self, name: str) -> list[dict]:
        lines = (self.dir / "logs" / name).read_text().splitlines()
        return [json.loads(x) for x in lines if x.startswith("{") and x.endswith("}")]

    def logs(self) -> list[dict]:
        return [r for p in sorted((self.dir / "logs").glob("*.log")) for r in self.log(p.name)]

    def injected(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for r in self.logs():
            if r["event"] == "fault_injected":
                counts[f"{r['direction']}.{r['fault']}"] += 1
        return counts

    def agent_saw(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for r in self.log("agent.log"):
            if r["event"] == "message_rejected":
                counts[f"rejected:{r['code']}"] += 1
            else:
                counts[r["event"]] += 1
        return counts


async def run_campaign(
    tmp_path: Path,
    extra: dict[str, list[str]],
    restart: dict[str, Callable[[dict], bool] | None] | None = None,
    settings: dict[str, object] | None = None,
) -> Run:
    """Run the agent and the three drivers to the end of the campaign. Each driver in
    ``restart`` must exit at its crash point; it is started again (without it) at
    once, or when the agent logs a record the given predicate accepts."""
    restart = restart or {}
    run = Run(tmp_path, find_free_base())
    logs = tmp_path / "logs"
    logs.mkdir()
    sets = [x for k, v in {**SETTINGS, **(settings or {})}.items() for x in ("--set", f"{k}={v}")]
    agent = spawn(
        sdl_agent("run", str(CAMPAIGN), "--base", run.base, "--out", str(run.out), *sets),
        logs / "agent.log",
    )
    procs: dict[str, subprocess.Popen[bytes]] = {}
    cmds: dict[str, list[str]] = {}
    for i, role in enumerate(ROLES):
        more = (
            ["--applied-log", str(run.applied), "--readback-period", "0.2"]
            if role == "pump"
            else []
        )
        cmds[role] = driver_command(role, run.base, TIME_SCALE, i, [*more, *extra.get(role, [])])
        procs[role] = spawn(cmds[role], logs / f"{role}.log")

    async def restart_after_crash(role: str, when: Callable[[dict], bool] | None) -> None:
        code = await asyncio.to_thread(procs[role].wait)
        assert code == -signal.SIGKILL, f"{role} exited with {code}, not at its crash point"
        if when is not None:
            await agent_logged(run, when)
        cmd = list(cmds[role])
        i = cmd.index("--crash-at")
        del cmd[i : i + 2]
        procs[role] = spawn(cmd, logs / f"{role}-restarted.log")
        run.restarts[role] = run.restarts.get(role, 0) + 1

    watchers = [asyncio.ensure_future(restart_after_crash(r, w)) for r, w in restart.items()]
    try:
        code = await asyncio.wait_for(asyncio.to_thread(agent.wait), TIMEOUT)
        assert code == 0, (logs / "agent.log").read_text()[-3000:]
        for w in watchers:  # each crashed and came back before the campaign ended
            assert w.done(), "a driver never reached its crash point"
            w.result()
    finally:
        for w in watchers:
            w.cancel()
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return run


def spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with its stderr (the JSON log) to ``log``."""
    with log.open("wb") as err:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)


async def agent_logged(run: Run, accept: Callable[[dict], bool]) -> None:
    """Return once the agent's log holds a record ``accept`` takes (the campaign
    timeout of the caller bounds the wait)."""
    deadline = time.monotonic() + TIMEOUT
    while not any(accept(r) for r in run.log("agent.log")):
        assert time.monotonic() < deadline, "the agent never logged what was waited for"
        await asyncio.sleep(0.05)  # polling the log for the record, not a wait for time


def check_outcome(run: Run) -> None:
    """Rounds complete; every condition complete exactly once with the replicates its
    rule demands; nothing counted twice; no command applied twice."""
    rows = list(csv.DictReader((run.out / "conditions.csv").read_text().splitlines()))
    names = [r["condition"] for r in rows]
    assert len(names) == ROUNDS * BATCH == len(set(names)), names
    assert {r["round"] for r in rows} == {str(k) for k in range(1, ROUNDS + 1)}
    for r in rows:
        assert r["status"] == "complete" and r["median_loss"], r
        assert int(r["n_used"]) + int(r["n_rejected"]) == REPLICATES, r
        assert int(r["n_used"]) >= (REPLICATES + 1) // 2, r

    db = sqlite3.connect(run.out / "journal.sqlite")
    try:
        # the journal's own record: in the attempt that completed, up to its completion,
        # exactly 5 valid droplets (accepted or outlier), each replicate index once
        valid = db.execute(
            "SELECT r.condition, r.replicate FROM replicates r "
            "JOIN conditions c USING (condition) WHERE r.seq <= c.done_seq "
            "AND r.attempt = c.attempt AND (r.verdict = 'accepted' OR r.code = 'outlier')"
        ).fetchall()
        outcomes = db.execute("SELECT condition, status FROM conditions").fetchall()
    finally:
        db.close()
    assert sorted(outcomes) == sorted((n, "complete") for n in names)
    assert len(valid) == len(set(valid)), "a replicate counted twice"
    per_condition = Counter(c for c, _ in valid)
    assert per_condition == dict.fromkeys(names, REPLICATES), per_condition

    lines = [json.loads(x) for x in run.applied.read_text().splitlines()]
    ids = [x["cmd_id"] for x in lines]
    assert len(ids) == len(set(ids)), "the pump applied a command id twice"
