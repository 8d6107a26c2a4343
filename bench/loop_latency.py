"""Loop latency: the replicate that completes a condition in -> the next setpoint out.

While a batch is pending (the next condition of the round is queued), the spectrum
that completes a condition should turn into the next condition's setpoint at once:
decode, file, complete (median spectrum, outcome), journal, announce, send. This
script runs the real agent (:class:`agent.runtime.AgentRuntime`, journalled as
``sdl-agent run`` does, JSON logs to a file) in this process against the three
simulated drivers as separate processes (``python -m drivers ROLE --time-scale F``,
started as the demo starts them) on TCP loopback, and times every such step:

* *in agent*: ``_on_frames`` entered with the completing spectrum's frames (they
  have left the SUB socket) -> ``_send`` of the next setpoint returned (the frames
  are in the ROUTER's queue); both ``time.perf_counter`` in this process, taken by
  wrapping the two methods of the runtime instance (the runtime is not changed);
* *from the driver*: the spectrum's envelope ``ts`` (the spectrometer's wall clock
  when it built the message) -> the wall clock after that ``_send``: adds the trip
  through the spectrometer's PUB, TCP loopback, the agent's SUB and event loop.

Only first attempts (``.a1``) sent while handling a spectrum count, so the first
condition of a round (sent after a proposal) and retries are not in the sample.
The campaign is examples/agnp.toml with ``strategy.kind = lhs`` by default (fast
proposals keep the run short; the loop step does not depend on the strategy), no
stop rule but ``max_rounds``. p50 / p99 / max over all samples of ``--repeats`` runs,
with the journal on and off. The section goes to bench/RESULTS.md.

    python bench/loop_latency.py                     # 20 rounds of 15, time scale 0.01
    python bench/loop_latency.py --rounds 4 --repeats 1 --no-write
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq.asyncio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bus_ingest import new_journal  # noqa: E402
from results import write_section  # noqa: E402

from agent import runtime as runtime_module  # noqa: E402
from agent.config import CampaignConfig  # noqa: E402
from agent.core.campaign import Campaign  # noqa: E402
from agent.demo import find_free_base, start_drivers, stop_drivers  # noqa: E402
from agent.logs import configure_logging  # noqa: E402
from agent.runtime import AgentRuntime  # noqa: E402
from protocols import messages as m  # noqa: E402
from protocols.sockets import Endpoints  # noqa: E402

CAMPAIGN = ROOT / "examples" / "agnp.toml"
TARGET_P99_MS = 5.0


def bench_config(rounds: int, strategy: str, base: str) -> CampaignConfig:
    return CampaignConfig.from_toml(
        CAMPAIGN,
        overrides={
            "campaign.id": "loop-latency",
            "strategy.kind": strategy,
            "stop.max_rounds": rounds,
            "stop.target_loss": 0.0,
            "stop.all_of": [],
            "bus.base": base,
        },
        env={},
    )


PIECES = ("decode", "core", "journal", "announce", "gc")


class StepTimer:
    """Wraps a runtime's ``_on_frames`` and ``_send`` to time spectrum -> next setpoint.

    Also times, within each message, the pieces in :data:`PIECES`: ``decode``
    (:func:`protocols.codec.decode` as the runtime calls it), ``core``
    (``Campaign.handle``), ``journal`` (``Journal.commit``) and ``announce``
    (``_publish``: the status message built, sent, logged), each by wrapping the
    instance's attribute (the runtime module's ``decode`` while the timer is on), and
    ``gc`` (Python's cyclic garbage collector, from ``gc.callbacks``). ``cpu`` is the
    thread's CPU time over the step (``time.thread_time``): far below the wall time,
    the process was waiting (descheduled by the OS, or blocked in a system call).
    """

    def __init__(self, rt: AgentRuntime) -> None:
        self.in_agent: list[float] = []
        self.from_driver: list[float] = []
        self.pieces: list[dict[str, float]] = []
        self.cpu: list[float] = []
        self._t_in: float | None = None
        self._cpu_in = 0.0
        self._gc_t0 = 0.0
        self._frames: list[bytes] | None = None
        self._cur: dict[str, float] = {}
        on_frames, send = rt._on_frames, rt._send

        def timed_on_frames(
            frames: list[bytes], stream: str, identity: bytes | None, user: str | None = None
        ) -> None:
            self._t_in, self._frames, self._cur = time.perf_counter(), frames, {}
            self._cpu_in = time.thread_time()
            try:
                on_frames(frames, stream, identity, user)
            finally:
                self._t_in = self._frames = None

        def timed_send(role: str, msg: m.Message) -> None:
            send(role, msg)
            if (
                isinstance(msg, m.Setpoint)
                and msg.cmd_id.endswith(".a1")
                and self._t_in is not None
                and self._frames is not None
                and self._frames[0].startswith(b"spectrum.")
            ):
                t_out, wall_out = time.perf_counter(), time.time()
                self.in_agent.append(t_out - self._t_in)
                self.cpu.append(time.thread_time() - self._cpu_in)
                self.from_driver.append(wall_out - json.loads(self._frames[1])["ts"])
                self.pieces.append(dict(self._cur))

        rt._on_frames = timed_on_frames  # type: ignore[method-assign]
        rt._send = timed_send  # type: ignore[method-assign]
        rt.campaign.handle = self._timed(rt.campaign.handle, "core")  # type: ignore[method-assign]
        rt._publish = self._timed(rt._publish, "announce")  # type: ignore[method-assign]
        if rt.journal is not None:
            rt.journal.commit = self._timed(rt.journal.commit, "journal")  # type: ignore[method-assign]
        self._decode = runtime_module.decode
        runtime_module.decode = self._timed(self._decode, "decode")
        gc.callbacks.append(self._on_gc)

    def close(self) -> None:
        runtime_module.decode = self._decode
        gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        elif self._t_in is not None:
            self._cur["gc"] = self._cur.get("gc", 0.0) + time.perf_counter() - self._gc_t0

    def _timed(self, fn: Callable[..., Any], piece: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._cur[piece] = self._cur.get(piece, 0.0) + time.perf_counter() - t0

        return wrapper


async def one_run(
    rounds: int,
    strategy: str,
    time_scale: float,
    journal_on: bool,
    tmp: Path,
    autocheckpoint: int | None = None,
) -> tuple[StepTimer, Campaign]:
    base = find_free_base()
    cfg = bench_config(rounds, strategy, base)
    campaign = Campaign(cfg.to_settings(), seed=0)
    journal = None
    if journal_on:
        journal = new_journal(cfg, tmp / f"journal-{base.rsplit(':', 1)[1]}.sqlite")
        if autocheckpoint is not None:  # an experiment on this connection only
            journal._db.execute(f"PRAGMA wal_autocheckpoint = {int(autocheckpoint)}")
    actx = zmq.asyncio.Context()
    rt = AgentRuntime(
        campaign,
        Endpoints.from_base(base),
        heartbeat_interval=cfg.drivers.heartbeat_interval_s,
        drain_s=0.5,
        context=actx,
        journal=journal,
    )
    timer = StepTimer(rt)
    procs = start_drivers(base, time_scale=time_scale, seed=0, log_dir=tmp / "logs")
    try:
        await asyncio.wait_for(rt.run(install_signals=False), 60 + rounds * 60)
    finally:
        timer.close()
        stop_drivers(procs)
        if journal is not None:
            journal.close()
        actx.term()
    return timer, campaign


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20, help="rounds of 15 a run (default: 20)")
    ap.add_argument("--repeats", type=int, default=2, help="runs with and without the journal")
    ap.add_argument("--time-scale", type=float, default=0.01, help="drivers' --time-scale")
    ap.add_argument("--strategy", default="lhs", help="strategy.kind (default: lhs)")
    ap.add_argument(
        "--wal-autocheckpoint",
        type=int,
        metavar="PAGES",
        help="experiment: set SQLite's wal_autocheckpoint on the journal's connection "
        "(0: never checkpoint during the run; default: SQLite's 1000 pages)",
    )
    ap.add_argument("--no-write", action="store_true", help="do not touch bench/RESULTS.md")
    args = ap.parse_args(argv)
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    samples: dict[bool, dict[str, list[float]]] = {
        True: {"in": [], "drv": [], "cpu": []},
        False: {"in": [], "drv": [], "cpu": []},
    }
    pieces: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    conds: dict[bool, int] = {True: 0, False: 0}
    with tempfile.TemporaryDirectory() as tmp:
        with (Path(tmp) / "agent.log").open("w") as log_fh:
            configure_logging("info", stream=log_fh)
            for i in range(args.repeats):
                for journal_on in (True, False):
                    run_dir = Path(tmp) / f"run{i}-{int(journal_on)}"
                    run_dir.mkdir()
                    timer, campaign = asyncio.run(
                        one_run(
                            args.rounds,
                            args.strategy,
                            args.time_scale,
                            journal_on,
                            run_dir,
                            args.wal_autocheckpoint,
                        )
                    )
                    samples[journal_on]["in"] += timer.in_agent
                    samples[journal_on]["drv"] += timer.from_driver
                    samples[journal_on]["cpu"] += timer.cpu
                    pieces[journal_on] += timer.pieces
                    conds[journal_on] += sum(
                        r.state == "complete" for r in campaign.conditions.values()
                    )
                    print(
                        f"run {i + 1} journal={'on' if journal_on else 'off'}: "
                        f"{len(timer.in_agent)} steps, in agent p50 "
                        f"{pct(timer.in_agent, 50):.2f} ms p99 {pct(timer.in_agent, 99):.2f} ms;"
                        f" from driver p50 {pct(timer.from_driver, 50):.2f} ms p99 "
                        f"{pct(timer.from_driver, 99):.2f} ms",
                        flush=True,
                    )
    text = report(args, argv, samples, pieces, conds, load_start, os.getloadavg(), t_start)
    print(text)
    if not args.no_write:
        write_section("loop_latency", text)
    return 0


def report(args, argv, samples, pieces, conds, load_start, load_end, t_start) -> str:
    cpu = "unknown"
    with contextlib.suppress(OSError, AttributeError):
        cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text()).group(1)
    cmd = "python bench/loop_latency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    p99 = pct(samples[True]["drv"], 99)
    lines = [
        "## Loop latency: completing replicate in -> next setpoint out (batch pending)",
        "",
        f"- Date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- Command: `{cmd.strip()}` ({time.perf_counter() - t_start:.0f} s)",
        f"- Machine: {os.cpu_count()} CPUs (nproc), {cpu.strip()}; Python "
        f"{platform.python_version()}",
        f"- Load average (1/5/15 min) at start: {' / '.join(f'{x:.2f}' for x in load_start)}; "
        f"at end: {' / '.join(f'{x:.2f}' for x in load_end)} (shared machine).",
        f"- Setup: examples/agnp.toml, `strategy.kind = {args.strategy}`, "
        f"{args.rounds} rounds of 15 a run, the three simulated drivers as processes with "
        f"`--time-scale {args.time_scale}` (droplets {0.2 * args.time_scale * 1e3:g} ms "
        "apart), TCP loopback; the agent journalled (as `sdl-agent run`) or not, JSON logs "
        "to a file. A step is timed only when the next condition of the same round was "
        "queued (see the docstring of bench/loop_latency.py for the two clocks).",
        *(
            [
                f"- Experiment: `PRAGMA wal_autocheckpoint = {args.wal_autocheckpoint}` on the "
                "journal's connection."
            ]
            if args.wal_autocheckpoint is not None
            else []
        ),
        "",
        "| journal | steps | conditions | in agent p50 | p99 | max "
        "| from driver's send p50 | p99 | max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for journal_on in (True, False):
        s = samples[journal_on]
        lines.append(
            f"| {'on (default)' if journal_on else 'off'} | {len(s['in'])} | "
            f"{conds[journal_on]} | {pct(s['in'], 50):.2f} ms | {pct(s['in'], 99):.2f} ms | "
            f"{max(s['in']) * 1e3:.2f} ms | {pct(s['drv'], 50):.2f} ms | "
            f"{pct(s['drv'], 99):.2f} ms | {max(s['drv']) * 1e3:.2f} ms |"
        )
    verdict = "met" if p99 < TARGET_P99_MS else "missed"
    lines += [
        "",
        f"Target: p99 < {TARGET_P99_MS:g} ms (journal on, from the driver's send): "
        f"**{verdict}** ({p99:.2f} ms; median of the in-agent part "
        f"{statistics.median(samples[True]['in']) * 1e3:.2f} ms).",
    ]
    lines += [
        "",
        "Where a step's time goes (in agent, ms): the median step, and the mean of the "
        "slowest 2 % of steps (at or above the 98th percentile of *in agent*). *Other* is "
        "the rest of the step: sequence tracking, the core event, the log records, the "
        "setpoint built and sent, and any time the process was not running. *Of it CPU*: "
        "the thread's CPU time over the step; well below *in agent*, the step waited "
        "(the OS ran something else, or a system call blocked).",
        "",
        "| journal | steps | in agent | of it CPU | " + " | ".join(PIECES) + " | other |",
        "|---|---|---:|---:|" + "---:|" * (len(PIECES) + 1),
    ]
    for journal_on in (True, False):
        total = np.asarray(samples[journal_on]["in"]) * 1e3
        cpu = np.asarray(samples[journal_on]["cpu"]) * 1e3
        rows = np.array(
            [[p.get(k, 0.0) * 1e3 for k in PIECES] for p in pieces[journal_on]]
        ).reshape(len(total), len(PIECES))
        slow = total >= np.percentile(total, 98)
        for label, sel, agg in (
            ("median step", np.ones_like(slow), np.median),
            ("slowest 2 %", slow, np.mean),
        ):
            parts = [float(agg(rows[sel, i])) for i in range(len(PIECES))]
            t = float(agg(total[sel]))
            other = float(agg(total[sel] - rows[sel].sum(axis=1)))
            lines.append(
                f"| {'on' if journal_on else 'off'} | {label} ({int(sel.sum())}) | {t:.2f} | "
                f"{float(agg(cpu[sel])):.2f} | "
                + " | ".join(f"{x:.2f}" for x in parts)
                + f" | {other:.2f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
