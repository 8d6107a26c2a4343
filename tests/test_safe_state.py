"""Safe states end to end: a driver stops answering mid-condition (SIGSTOP), then
comes back (SIGCONT). The agent and the three simulated drivers are real
processes on loopback TCP; the test follows the agent's JSON log as it is
written and the pump's log file, and waits on log lines (each wait bounded).
A spectrometer frozen for less than the heartbeat timeout delivers the droplets
of an attempt the agent abandoned meanwhile: they are turned away as stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.demo import find_free_base, start_drivers, stop_drivers

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = ROOT / "examples" / "agnp.toml"
TIMEOUT = float(os.environ.get("SDL_E2E_TIMEOUT", "60"))
#: a purge recipe: the pump's safe state keeps water and oil running (within limits)
PURGE = {"water": 50.0, "oil": 25.0}
SETTINGS = {
    "campaign.id": "safe",
    "campaign.batch_size": 3,
    "strategy.kind": '"lhs"',
    "stop.max_rounds": 1,
    "stop.target_loss": 0.0,
    "drivers.heartbeat_timeout_s": 1.5,
}

Record = dict[str, Any]


def sdl_agent(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from agent.cli import main; sys.exit(main())", *args]


class AgentLog:
    """The agent's stderr, one JSON record a line, read as it is written (so the
    pipe never fills); :meth:`wait_for` returns the first record from ``start``
    on that matches."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.records: list[Record] = []
        self.tail: list[str] = []
        self._more = asyncio.Event()
        self._task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = line.decode(errors="replace")
            if text.startswith("{"):
                self.records.append(json.loads(text))
            else:
                self.tail = [*self.tail[-50:], text]
            self._more.set()
        self._more.set()

    async def wait_for(self, pred: Callable[[Record], bool], what: str, start: int = 0) -> int:
        """Index of the first matching record at or after ``start``."""
        seen = start
        try:
            async with asyncio.timeout(TIMEOUT):
                while True:
                    for i in range(seen, len(self.records)):
                        if pred(self.records[i]):
                            return i
                    seen = len(self.records)
                    if self._task.done():
                        raise AssertionError(f"the agent exited before {what}: {self.tail[-5:]}")
                    self._more.clear()
                    await self._more.wait()
        except TimeoutError:
            raise AssertionError(f"no {what} within {TIMEOUT} s: {self.tail[-5:]}") from None

    async def closed(self) -> None:
        await asyncio.wait_for(self._task, TIMEOUT)


async def wait_for_line(path: Path, pred: Callable[[Record], bool], what: str) -> Record:
    """The first JSON record of a driver's log file that matches (the file is polled)."""
    try:
        async with asyncio.timeout(TIMEOUT):
            while True:
                text = await asyncio.to_thread(lambda: path.read_text() if path.exists() else "")
                for line in text.splitlines():
                    if line.startswith("{") and pred(rec := json.loads(line)):
                        return rec
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"no {what} in {path.name} within {TIMEOUT} s") from None


async def start_campaign(
    tmp_path: Path, settings: dict[str, Any], extra: dict[str, list[str]]
) -> tuple[asyncio.subprocess.Process, dict[str, subprocess.Popen[bytes]], AgentLog]:
    """``sdl-agent run`` of the reference campaign with ``settings``, and the three
    simulated drivers (``extra``: more flags by role), on a free base; the agent's
    log is followed as it is written."""
    base = find_free_base()
    sets = [x for k, v in settings.items() for x in ("--set", f"{k}={v}")]
    agent = await asyncio.create_subprocess_exec(
        *sdl_agent("run", str(CAMPAIGN), "--base", base, "--out", str(tmp_path), *sets),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    procs = start_drivers(base, time_scale=0.01, seed=0, log_dir=tmp_path / "logs", extra=extra)
    assert agent.stderr is not None
    return agent, procs, AgentLog(agent.stderr)


def keep_records(tmp_path: Path, log: AgentLog) -> None:
    """The agent's log records as read, kept for a failure's post-mortem."""
    (tmp_path / "agent.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log.records))


def event(name: str, **fields: Any) -> Callable[[Record], bool]:
    return lambda r: r.get("event") == name and all(r.get(k) == v for k, v in fields.items())


async def run_and_silence(tmp_path: Path, role: str, trigger: Callable[[Record], bool]):
    """Run a one-round campaign; when ``trigger`` matches a record of the agent's
    log, SIGSTOP ``role``; once the agent has paused (and, for a silent
    spectrometer, the pump has gone to its safe flows), SIGCONT it. Returns the
    agent's log records, its exit code and the pump's applied log."""
    applied = tmp_path / "applied.jsonl"
    purge = ",".join(f"{k}={v:g}" for k, v in PURGE.items())
    extra = {
        "pump": ["--applied-log", str(applied), "--safe-flows", purge],
        # droplets 0.2 s apart: a condition measures for >= 1 s, so the SIGSTOP
        # lands while it is measuring
        "spectrometer": ["--droplet-interval", "20"],
    }
    agent, procs, log = await start_campaign(tmp_path, SETTINGS, extra)
    victim = procs[role]
    try:
        at = await log.wait_for(trigger, "the trigger")
        os.kill(victim.pid, signal.SIGSTOP)
        down = await log.wait_for(event("driver_down", role=role), f"{role} down", at)
        paused = await log.wait_for(
            lambda r: r.get("event") == "campaign_paused" and role in r["missing"], "a pause", at
        )
        if role != "pump":
            await log.wait_for(
                lambda r: r.get("event") == "safe_state_sent" and role in r["reason"],
                "a safe state",
                at,
            )
            safe = await wait_for_line(
                tmp_path / "logs" / "pump.log",
                lambda r: r.get("event") == "safe_state" and "paused" in r.get("reason", ""),
                "the pump at its safe flows",
            )
            assert safe["cmd_id"].endswith(".safe") and role in safe["reason"]
            assert safe["flows"] == {**dict.fromkeys(safe["flows"], 0.0), **PURGE}
        assert victim.poll() is None  # stopped, not dead
        os.kill(victim.pid, signal.SIGCONT)
        await log.wait_for(event("driver_up", role=role), f"{role} back", down)
        await log.wait_for(event("campaign_running", was="paused"), "the resume", paused)
        await log.wait_for(event("campaign_stopped"), "the end", paused)
        await log.closed()
        code = await asyncio.wait_for(agent.wait(), TIMEOUT)
    finally:
        keep_records(tmp_path, log)
        for p in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGCONT)
        if agent.returncode is None:
            agent.kill()
            await agent.wait()
        stop_drivers(procs)
    return log.records, code, applied


def the_pause(records: list[Record], role: str) -> tuple[int, int]:
    """Indices of the pause ``role`` caused and of the resume after it (a loaded
    machine may add pauses of its own; they are not this one)."""
    paused = next(
        i for i, r in enumerate(records) if r["event"] == "campaign_paused" and role in r["missing"]
    )
    running = next(
        i for i in range(paused, len(records)) if records[i]["event"] == "campaign_running"
    )
    return paused, running


def check_the_campaign(tmp_path: Path, records: list[Record], applied: Path, role: str) -> str:
    """Every condition once and complete; no command id applied twice; the pause
    sent no setpoint or acquire, and the condition it interrupted started again
    with a new attempt, which the pump applied. Returns that condition."""
    rows = list(csv.DictReader((tmp_path / "conditions.csv").read_text().splitlines()))
    assert sorted(r["condition"] for r in rows) == ["r01-c01", "r01-c02", "r01-c03"]
    assert all(r["status"] == "complete" for r in rows), rows
    stopped = [r for r in records if r["event"] == "campaign_stopped"]
    assert stopped and {r["rule"] for r in stopped} == {"max_rounds"}  # (a note, an announcement)
    ids = [json.loads(line)["cmd_id"] for line in applied.read_text().splitlines()]
    assert len(ids) == len(set(ids)), ids
    paused, running = the_pause(records, role)
    during = {r["event"] for r in records[paused:running]}
    assert not during & {"setpoint_sent", "acquire_sent"}
    active = [r for r in records[:paused] if r["event"] == "setpoint_sent"][-1]
    restarted = next(r for r in records[paused:] if r["event"] == "condition_restarted")
    assert restarted["condition"] == active["condition"] and role in restarted["reason"]
    again = next(r for r in records[running:] if r["event"] == "setpoint_sent")
    assert again["condition"] == active["condition"]
    assert again["attempt"] == active["attempt"] + 1 and again["cmd_id"] != active["cmd_id"]
    assert again["cmd_id"] in ids  # the new attempt was applied
    return active["condition"]


async def test_a_silent_spectrometer_sends_the_pump_to_its_safe_flows_and_the_campaign_resumes(
    tmp_path,
):
    trigger = event("acquire_sent", condition="r01-c02", role="spectrometer")
    records, code, applied = await run_and_silence(tmp_path, "spectrometer", trigger)
    assert code == 0
    assert check_the_campaign(tmp_path, records, applied, "spectrometer") == "r01-c02"
    paused, running = the_pause(records, "spectrometer")
    safe = [r for r in records[paused:running] if r["event"] == "safe_state_sent"]
    assert safe[0]["cmd_id"] == "safe.r01-c02.a1.safe"  # named after the setpoint it supersedes
    assert "spectrometer is silent" in safe[0]["reason"]
    counted = [r for r in records if r["event"] == "condition_complete"]
    assert sorted(r["condition"] for r in counted) == ["r01-c01", "r01-c02", "r01-c03"]


async def test_a_silent_pump_pauses_the_campaign_and_its_condition_restarts(tmp_path):
    trigger = event("acquire_sent", condition="r01-c02", role="spectrometer")
    records, code, applied = await run_and_silence(tmp_path, "pump", trigger)
    assert code == 0
    check_the_campaign(tmp_path, records, applied, "pump")
    paused, running = the_pause(records, "pump")
    # the pump cannot hear a safe state while it is silent: none is sent to it
    assert not [r for r in records[paused:running] if r["event"] == "safe_state_sent"]


async def test_droplets_a_frozen_spectrometer_delivers_for_an_abandoned_attempt_are_stale(
    tmp_path,
):
    # The spectrometer freezes (SIGSTOP) as r01-c02's first acquire goes out, for less
    # than the heartbeat timeout: no pause; the replicate rule's stall timeout retries
    # the condition; once the new attempt is measuring (its acquire sent) the
    # spectrometer thaws (SIGCONT) and first finishes the old acquire, then serves the
    # new one. Every droplet of the old acquire that arrives now is stale; the
    # condition completes with exactly its rule's 5 droplets, all of the new attempt.
    settings = {
        **SETTINGS,
        "drivers.heartbeat_timeout_s": 30.0,  # frozen, but never counted down
        "replicates.min_count": 5,
        "replicates.max_count": 5,
        "replicates.per_acquire": 5,
        "replicates.settle_window": 1,
        "replicates.timeout_s": 4.0,  # the stall that abandons the first attempt
        "replicates.droplet_timeout_s": 60.0,  # no droplet is asked for again
    }
    # droplets 0.2 s apart: an acquire of 5 takes >= 1 s, so it is frozen mid-way
    extra = {"spectrometer": ["--droplet-interval", "20", "--heartbeat-timeout", "30"]}
    agent, procs, log = await start_campaign(tmp_path, settings, extra)
    frozen = procs["spectrometer"]

    def acquire_of(attempt: int) -> Callable[[Record], bool]:
        prefix = f"safe.r01-c02.a{attempt}.spectrometer."
        return lambda r: r.get("event") == "acquire_sent" and r["cmd_id"].startswith(prefix)

    try:
        at = await log.wait_for(acquire_of(1), "the first attempt's acquire")
        os.kill(frozen.pid, signal.SIGSTOP)
        old = log.records[at]["cmd_id"]
        retry = await log.wait_for(event("condition_retry", condition="r01-c02"), "a retry", at)
        new = await log.wait_for(acquire_of(2), "the new attempt's acquire", retry)
        assert frozen.poll() is None  # stopped, not dead
        os.kill(frozen.pid, signal.SIGCONT)
        await log.wait_for(event("condition_complete", condition="r01-c02"), "r01-c02", new)
        await log.wait_for(event("campaign_stopped"), "the end", new)
        await log.closed()
        code = await asyncio.wait_for(agent.wait(), TIMEOUT)
    finally:
        keep_records(tmp_path, log)
        with contextlib.suppress(ProcessLookupError):
            os.kill(frozen.pid, signal.SIGCONT)
        if agent.returncode is None:
            agent.kill()
            await agent.wait()
        stop_drivers(procs)
    assert code == 0
    records = log.records
    assert log.records[new]["first"] == 0  # a new attempt numbers its droplets from 0
    assert not [r for r in records if r["event"] in ("campaign_paused", "condition_restarted")]
    assert [r["condition"] for r in records if r["event"] == "condition_retry"] == ["r01-c02"]

    stale = [
        r for r in records if r["event"] == "message_rejected" and r["code"] == "stale_attempt"
    ]
    assert stale, "no droplet of the abandoned attempt came after the retry"
    for r in stale:  # each names the old acquire, and says why
        assert (r["condition"], r["acquire_id"]) == ("r01-c02", old), r
        assert old in r["reason"] and "attempt 2" in r["reason"], r
    assert all(records.index(r) > new for r in stale)  # while the new attempt measured

    rows = list(csv.DictReader((tmp_path / "conditions.csv").read_text().splitlines()))
    assert {r["condition"]: r["status"] for r in rows} == dict.fromkeys(
        ("r01-c01", "r01-c02", "r01-c03"), "complete"
    )
    db = sqlite3.connect(tmp_path / "journal.sqlite")
    try:
        # in the attempt that completed r01-c02, up to its completion: exactly its 5
        # valid droplets, each index once
        valid = db.execute(
            "SELECT r.replicate FROM replicates r JOIN conditions c USING (condition) "
            "WHERE r.condition = 'r01-c02' AND r.seq <= c.done_seq AND r.attempt = c.attempt "
            "AND (r.verdict = 'accepted' OR r.code = 'outlier')"
        ).fetchall()
        attempt = db.execute("SELECT attempt FROM conditions WHERE condition = 'r01-c02'")
        before = db.execute(  # the old acquire's droplets filed before the retry
            "SELECT count(*) FROM replicates WHERE condition = 'r01-c02' AND attempt = 1"
        ).fetchone()[0]
        journalled = db.execute(
            "SELECT count(*) FROM replicates WHERE code = 'stale_attempt' AND attempt = 2"
        ).fetchone()[0]
        assert attempt.fetchone()[0] == 2
    finally:
        db.close()
    assert sorted(k for (k,) in valid) == [0, 1, 2, 3, 4]
    assert journalled == len(stale)
    # every droplet of the old acquire (5) came: before the retry, or after it as stale
    assert before + len(stale) == 5, (before, len(stale))
