"""``sdl-agent monitor``: watch a running agent from any machine, read-only.

It connects one SUB socket to the agent's status endpoint (the base port + 2,
docs/protocol.md §12) and never sends a message: it cannot command anything.
What it shows comes from the status events, chiefly ``campaign_status`` (every
``[bus] status_interval_s``) and ``condition_progress`` (the replicates filed,
a drained batch at a time).

Three ways to show it:

- a live view redrawn in place when stdout is a terminal: round and a bar of
  its conditions, the condition being measured and a bar of its replicates,
  the best loss, the box, and the stop rules, closest to firing first;
- one plain line per event when stdout is not a terminal (a log file, a pipe);
- ``--json``: one JSON object per line per event, the message as it came
  (for scripts).

``--once`` prints one ``campaign_status`` and exits (non-zero if none comes
within ``--timeout``). A message that fails to decode, or is not a status
event, is logged to stderr as ``message_rejected`` with its reason, and the
monitor carries on; when the agent restarts, ZeroMQ reconnects by itself and
the monitor notes that the status sequence began again.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO
from urllib.parse import urlsplit

import structlog
import zmq
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from protocols import messages as m
from protocols.codec import DEFAULT_MAX_BYTES, decode
from protocols.errors import CodecError
from protocols.security import CurveClient
from protocols.sockets import configure

__all__ = ["MonitorView", "parse_endpoint", "plain_line", "watch"]

log = structlog.get_logger("sdl_agent.monitor")

#: how long one poll waits before the loop checks its deadline again (ms)
_POLL_MS = 200
_RECONNECT_MS = 200
_RECONNECT_MAX_MS = 2000
_BAR_WIDTH = 30


def parse_endpoint(text: str) -> str:
    """``tcp://HOST:PORT`` or ``HOST:PORT`` -> ``tcp://HOST:PORT`` (the status endpoint).

    >>> parse_endpoint("lab-pc:5562")
    'tcp://lab-pc:5562'

    Raises:
        ValueError: anything else, with what was expected.
    """
    raw = text.strip()
    url = raw if "://" in raw else f"tcp://{raw}"
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if (
        parts.scheme != "tcp"
        or not parts.hostname
        or port is None
        or not 1 <= port <= 65535
        or parts.path
        or parts.query
        or parts.fragment
    ):
        raise ValueError(
            f"--connect wants the agent's status endpoint as tcp://HOST:PORT or HOST:PORT "
            f"(the base port + 2, e.g. tcp://127.0.0.1:5562), got {text!r}"
        )
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"tcp://{host}:{port}"


# --------------------------------------------------------------------- the view


@dataclass
class MonitorView:
    """What the monitor knows: the latest snapshot, the latest replicate count of
    the condition being measured, and the last few events, as one line each."""

    endpoint: str
    status: m.CampaignStatus | None = None
    progress: m.ConditionProgress | None = None
    stopped: m.CampaignStopped | None = None
    recent: list[str] = field(default_factory=list)
    rejected: int = 0

    def update(self, msg: m.Message) -> None:
        match msg:
            case m.CampaignStatus():
                self.status = msg
                if self.progress is not None and not any(
                    a.condition == self.progress.condition for a in msg.active
                ):
                    self.progress = None  # that condition is done
            case m.ConditionProgress():
                self.progress = msg
            case m.CampaignStopped():
                self.stopped = msg
        if not isinstance(msg, m.CampaignStatus | m.ConditionProgress):
            line = plain_line(msg)
            if line:
                self.recent = [*self.recent, line][-5:]

    def render(self) -> RenderableType:
        """The live view (a rich renderable)."""
        s = self.status
        head = Text.assemble(
            ("sdl-agent monitor ", "bold"),
            f"{self.endpoint}  (read-only)",
        )
        if s is None:
            return Group(head, Text("waiting for the first campaign_status ...", style="dim"))
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(no_wrap=True, min_width=_BAR_WIDTH)
        grid.add_column()
        elapsed = "" if s.elapsed_s is None else f", {_duration(s.elapsed_s)}"
        grid.add_row("campaign", f"{s.campaign or '?'}: {s.state}{elapsed}", "")
        grid.add_row(
            f"round {s.round}",
            _bar(s.conditions_done, s.conditions_total),
            f"{s.conditions_done}/{s.conditions_total} conditions "
            f"(rounds complete: {s.rounds_complete})",
        )
        p = self.progress
        if p is not None:
            median = "" if p.median_loss is None else f", median loss {p.median_loss:.4f}"
            grid.add_row(
                p.condition,
                _bar(min(p.n_accepted, p.n_min), p.n_min),
                f"{p.n_accepted} used, {p.n_rejected} rejected "
                f"(complete at {p.n_min}..{p.n_max}){median}, {p.elapsed_s:.1f} s",
            )
        elif s.active:
            a = s.active[0]
            grid.add_row(a.condition, a.state, f"{a.n_accepted} used, {a.n_rejected} rejected")
        best = "none yet" if s.best_loss is None else f"{s.best_loss:.4f} at {s.best_condition}"
        grid.add_row("best loss", best, "")
        for g in sorted(s.stop, key=lambda g: -g.fraction):
            grid.add_row(
                f"stop: {g.rule}",
                _bar(round(g.fraction * 100), 100),
                f"{g.fraction:4.0%}  {_numbers(g.numbers)}",
            )
        box = "  ".join(f"{k} [{lo:.4g}, {hi:.4g}]" for k, (lo, hi) in s.box.items())
        parts: list[RenderableType] = [head, grid, Text.assemble(("box ", "bold"), box)]
        if self.stopped is not None:
            parts.append(Text(f"stopped: {self.stopped.reason}", style="bold"))
        if self.recent:
            parts.append(Text("\n".join(self.recent), style="dim"))
        if self.rejected:
            parts.append(Text(f"{self.rejected} messages rejected (see stderr)", style="yellow"))
        return Group(*parts)


def plain_line(msg: m.Message) -> str:
    """One line for humans about a status event ("" for other kinds)."""
    match msg:
        case m.CampaignStatus():
            closest = max(msg.stop, key=lambda g: g.fraction, default=None)
            near = (
                "" if closest is None else f"; closest stop {closest.rule} {closest.fraction:.0%}"
            )
            best = "n/a" if msg.best_loss is None else f"{msg.best_loss:.4f} ({msg.best_condition})"
            return (
                f"status {msg.state}: round {msg.round} "
                f"{_text_bar(msg.conditions_done, msg.conditions_total)} "
                f"{msg.conditions_done}/{msg.conditions_total}; best {best}{near}"
            )
        case m.ConditionProgress():
            median = "" if msg.median_loss is None else f", median loss {msg.median_loss:.4f}"
            return (
                f"round {msg.round} {msg.condition}: {msg.n_accepted} used, "
                f"{msg.n_rejected} rejected (complete at {msg.n_min}..{msg.n_max}){median}"
            )
        case m.Proposal():
            tags = ", ".join(sorted({c.strategy for c in msg.conditions}))
            return f"round {msg.round}: proposed {len(msg.conditions)} conditions ({tags})"
        case m.ConditionComplete():
            if msg.status == "failed":
                return f"round {msg.round} {msg.condition}: failed: {msg.reason}"
            loss = "n/a" if msg.median_loss is None else f"{msg.median_loss:.4f}"
            return (
                f"round {msg.round} {msg.condition}: complete, median loss {loss} "
                f"({msg.n_used} used, {msg.n_rejected} rejected)"
            )
        case m.RoundComplete():
            best = "n/a" if msg.best_loss is None else f"{msg.best_loss:.4f}"
            return (
                f"round {msg.round}: complete {msg.n_complete}, failed {msg.n_failed}, "
                f"best so far {best} ({msg.best_condition})"
            )
        case m.BoundaryExpanded():
            return (
                f"round {msg.round}: widened {msg.parameter} {msg.face} "
                f"[{msg.old_bounds[0]:.4g}, {msg.old_bounds[1]:.4g}] -> "
                f"[{msg.new_bounds[0]:.4g}, {msg.new_bounds[1]:.4g}]"
            )
        case m.CampaignStopped():
            return f"stopped ({msg.rule}): {msg.reason}"
    return ""


# --------------------------------------------------------------------- the loop


def watch(
    endpoint: str,
    *,
    once: bool = False,
    as_json: bool = False,
    timeout: float = 10.0,
    until_stopped: bool = False,
    out: TextIO | None = None,
    live: bool | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    curve: CurveClient | None = None,
) -> int:
    """Subscribe to ``endpoint`` and show what comes; returns the exit code.

    Args:
        endpoint: the agent's status endpoint, ``tcp://HOST:PORT``.
        once: print the first ``campaign_status`` and return 0; 1 if none
            arrives within ``timeout`` seconds.
        as_json: one JSON line per event instead of text.
        timeout: with ``once``, how long to wait.
        until_stopped: return 0 after the ``campaign_stopped`` event (else watch
            until interrupted, across agent restarts).
        out: where to write (default stdout).
        live: redraw in place (default: when ``out`` is a terminal, without
            ``as_json`` and ``once``).
        curve: CURVE client keys, for an agent with ``[security]`` (docs/security.md).
    """
    out = out or sys.stdout
    if live is None:
        live = out.isatty() and not as_json and not once
    ctx = zmq.Context()
    sub = configure(ctx.socket(zmq.SUB), max_bytes=max_bytes)
    sub.setsockopt(zmq.RECONNECT_IVL, _RECONNECT_MS)
    sub.setsockopt(zmq.RECONNECT_IVL_MAX, _RECONNECT_MAX_MS)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    if curve is not None:
        curve.apply(sub)
    view = MonitorView(endpoint)
    feed = _Feed(sub, view)
    try:
        sub.connect(endpoint)
        log.info("monitor_connected", endpoint=endpoint, curve=curve is not None)
        if once:
            return _once(feed, endpoint, as_json, timeout, out)
        if live:
            return _live(feed, view, until_stopped, out)
        for msg in feed.messages(None):
            print(_json(msg) if as_json else plain_line(msg), file=out, flush=True)
            if until_stopped and isinstance(msg, m.CampaignStopped):
                return 0
        return 0  # pragma: no cover - the feed only ends at a deadline
    except KeyboardInterrupt:
        return 0
    finally:
        sub.close(linger=0)
        ctx.term()


def _once(feed: _Feed, endpoint: str, as_json: bool, timeout: float, out: TextIO) -> int:
    for msg in feed.messages(time.monotonic() + timeout):
        if isinstance(msg, m.CampaignStatus):
            print(_json(msg) if as_json else plain_line(msg), file=out, flush=True)
            return 0
    print(
        f"sdl-agent monitor: no campaign_status from {endpoint} within {timeout:g} s "
        "(is the agent running, and is this its status endpoint, the base port + 2?)",
        file=sys.stderr,
    )
    return 1


def _live(feed: _Feed, view: MonitorView, until_stopped: bool, out: TextIO) -> int:
    console = Console(file=out)
    with Live(view.render(), console=console, auto_refresh=False, transient=False) as screen:
        for msg in feed.messages(None):
            screen.update(view.render(), refresh=True)
            if until_stopped and isinstance(msg, m.CampaignStopped):
                return 0
    return 0  # pragma: no cover


class _Feed:
    """Decoded status events off one SUB socket; rejections logged, sequence watched."""

    def __init__(self, sub: zmq.Socket, view: MonitorView) -> None:
        self.sub = sub
        self.view = view
        self.last_seq: int | None = None

    def messages(self, deadline: float | None) -> Iterator[m.Message]:
        """Yield each valid status event until ``deadline`` (monotonic; None: never)."""
        while deadline is None or time.monotonic() < deadline:
            wait = _POLL_MS
            if deadline is not None:
                wait = max(1, min(wait, int((deadline - time.monotonic()) * 1000)))
            if not self.sub.poll(wait):
                continue
            frames = self.sub.recv_multipart()
            msg = self._check(frames)
            if msg is not None:
                self.view.update(msg)
                yield msg

    def _check(self, frames: list[bytes]) -> m.Message | None:
        try:
            msg = decode(frames)
        except CodecError as exc:
            self._reject(exc.code, str(exc))
            return None
        if msg.kind not in m.STATUS_KINDS:
            self._reject("unexpected_kind", f"{msg.kind!r} is not a status event", msg)
            return None
        last, self.last_seq = self.last_seq, msg.seq
        if last is not None and msg.seq <= last:
            log.info("agent_restarted", seq=msg.seq, last_seq=last, campaign=msg.campaign)
        elif last is not None and msg.seq > last + 1:
            log.warning("status_events_missed", missing=msg.seq - last - 1, seq=msg.seq)
        return msg

    def _reject(self, code: str, reason: str, msg: m.Message | None = None) -> None:
        self.view.rejected += 1
        fields: dict[str, object] = {"stream": "status", "code": code, "reason": reason}
        if msg is not None:
            fields.update(kind=msg.kind, source=msg.source, seq=msg.seq)
        log.warning("message_rejected", **fields)


def _json(msg: m.Message) -> str:
    return json.dumps(msg.model_dump(mode="json"), separators=(",", ":"))


def _bar(done: int, total: int) -> ProgressBar:
    return ProgressBar(total=max(total, 1), completed=min(done, max(total, 1)), width=_BAR_WIDTH)


def _text_bar(done: int, total: int, width: int = 20) -> str:
    filled = 0 if total <= 0 else round(width * min(done, total) / total)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _numbers(numbers: dict[str, float]) -> str:
    return " ".join(f"{k}={_num(v)}" for k, v in list(numbers.items())[:6])


def _num(v: float) -> str:
    return f"{int(v)}" if math.isfinite(v) and v == int(v) and abs(v) < 1e9 else f"{v:.4g}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    mins, s = divmod(rest, 60)
    return f"{h}:{mins:02d}:{s:02d}" if h else f"{mins}:{s:02d}"
