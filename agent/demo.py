"""``sdl-agent demo``: a simulated lab on loopback TCP.

Starts the simulated pump, spectrometer and XRD labeller as three separate
processes (``python -m drivers ...``: the agent never imports a driver), runs
the campaign in this process, writes ``conditions.csv`` and a fresh
``journal.sqlite`` (the previous demo's is replaced), prints a summary and
ends by writing the report of that journal into ``report/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from agent.config import CampaignConfig, ConfigError
from agent.journal import JournalRefused
from agent.logs import configure_logging
from agent.report import write_report
from agent.session import run_campaign
from protocols import messages as m

__all__ = ["find_free_base", "run_demo", "start_drivers", "stop_drivers"]

ROLES = ("pump", "spectrometer", "xrd")
BUNDLED = Path(__file__).resolve().parent.parent / "examples" / "agnp.toml"


def find_free_base(host: str = "127.0.0.1", span: int = 4, tries: int = 200) -> str:
    """A ``tcp://host:P`` whose ports P..P+span-1 are free right now.

    P is drawn below the kernel's ephemeral range, so the outgoing connections
    of other processes (which take their local ports from that range) cannot
    take one of these ports between this check and the agent's bind.
    """
    low = _ephemeral_low()
    for _ in range(tries):
        port = random.randrange(max(1024, low - 12_000), low - span)
        socks = []
        try:
            for p in range(port, port + span):
                s = socket.socket()
                socks.append(s)
                s.bind((host, p))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return f"tcp://{host}:{port}"
    raise RuntimeError(f"no {span} consecutive free ports on {host}")


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections (32768 if unknown)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return max(int(text.split()[0]), 13_100)
    except (OSError, ValueError, IndexError):
        return 32768


def start_drivers(
    base: str,
    *,
    time_scale: float,
    seed: int,
    log_dir: Path,
    extra: dict[str, list[str]] | None = None,
    roles: tuple[str, ...] = ROLES,
) -> dict[str, subprocess.Popen[bytes]]:
    """Start each simulated driver as its own process; stderr goes to ``log_dir/ROLE.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for i, role in enumerate(roles):
        cmd = driver_command(role, base, time_scale, seed + i, (extra or {}).get(role, []))
        with (log_dir / f"{role}.log").open("wb") as err:
            procs[role] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    return procs


def driver_command(
    role: str, base: str, time_scale: float, seed: int, extra: Sequence[str] = ()
) -> list[str]:
    """The command line of one simulated driver process (``python -m drivers ROLE ...``)."""
    return [
        sys.executable, "-m", "drivers", role, "--connect", base,
        "--time-scale", str(time_scale), "--seed", str(seed), *extra,
    ]  # fmt: skip


def stop_drivers(procs: dict[str, subprocess.Popen[bytes]], timeout: float = 5.0) -> None:
    """SIGTERM each driver, then SIGKILL what has not exited within ``timeout``."""
    for p in procs.values():
        if p.poll() is None:
            p.terminate()
    for p in procs.values():
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=timeout)


def run_demo(
    *,
    campaign: Path | None = None,
    rounds: int = 4,
    time_scale: float = 0.02,
    out_dir: Path = Path("demo-out"),
    seed: int = 0,
    strategy: str | None = None,
    log_level: str = "info",
) -> int:
    """Run the simulated lab; returns the process exit code."""
    base = find_free_base()
    overrides: dict[str, object] = {"stop.max_rounds": rounds, "bus.base": base}
    if strategy is not None:
        overrides["strategy.kind"] = strategy
    try:
        cfg = CampaignConfig.from_toml(campaign or BUNDLED, overrides=overrides)
    except ConfigError as exc:
        print(f"sdl-agent demo: {exc}", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "agent.log"
    journal = out_dir / "journal.sqlite"
    for stale in (journal, *(journal.with_name(journal.name + s) for s in ("-wal", "-shm"))):
        stale.unlink(missing_ok=True)  # the demo owns its output directory: a fresh journal
    print(f"sdl-agent demo: {rounds} rounds of {cfg.campaign.batch_size} on {base}")
    print(f"  drivers: {', '.join(ROLES)} (separate processes; logs in {out_dir}/logs/)")
    print(f"  agent log (JSON lines): {log_path}; journal: {journal}")
    procs = start_drivers(base, time_scale=time_scale, seed=seed, log_dir=out_dir / "logs")
    try:
        with log_path.open("w", encoding="utf-8") as log_fh:
            configure_logging(log_level, stream=log_fh)
            outcome = asyncio.run(
                run_campaign(
                    cfg,
                    seed=seed,
                    out_dir=out_dir,
                    on_status=_print_status,
                    journal_path=journal,
                )
            )
    finally:
        stop_drivers(procs)
    print(outcome.summary())
    try:
        report = write_report(journal, out_dir / "report")
    except (JournalRefused, OSError) as exc:
        print(f"sdl-agent demo: no report: {exc}", file=sys.stderr)
        return 1
    print(f"  report: {report.index} (open it in a browser; PNGs beside it)")
    crashed = [r for r, p in procs.items() if p.returncode not in (0, -15)]
    if crashed:
        print(f"sdl-agent demo: drivers exited badly: {crashed}", file=sys.stderr)
        return 1
    stopped = outcome.campaign.stop_reason
    return 0 if stopped is not None and stopped.rule != "operator" else 1


def _print_status(msg: m.Message) -> None:
    match msg:
        case m.Proposal():
            tags = sorted({c.strategy for c in msg.conditions})
            print(
                f"round {msg.round}: proposed {len(msg.conditions)} conditions ({', '.join(tags)})"
            )
        case m.RoundComplete():
            best = "n/a" if msg.best_loss is None else f"{msg.best_loss:.4f}"
            print(
                f"round {msg.round}: complete {msg.n_complete}, failed {msg.n_failed}, "
                f"best median loss so far {best} ({msg.best_condition})"
            )
        case m.BoundaryExpanded():
            print(
                f"round {msg.round}: widened {msg.parameter} {msg.face} "
                f"{list(msg.old_bounds)} -> {[round(x, 3) for x in msg.new_bounds]}"
            )
        case m.CampaignStopped():
            print(f"stopped: {msg.reason}")
    with contextlib.suppress(Exception):
        sys.stdout.flush()
