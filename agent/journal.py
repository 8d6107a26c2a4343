"""The campaign journal: one SQLite file per campaign, written before anything is acted on.

The runtime feeds the core an event, gets its decisions back, and calls
:meth:`Journal.commit` with both *before* it sends a command, publishes a
status event or starts a proposal: one transaction per event, so a crash at
any point leaves either the whole step on disk or none of it, and nothing the
outside world saw is missing from the journal. (Group commit: a step with
nothing to act on may be deferred into the open transaction and committed with
the next step that acts; see :meth:`Journal.commit`.) :meth:`Journal.facts` reads back
what :meth:`Campaign.restore <agent.core.campaign.Campaign.restore>` needs to
rebuild the campaign; :func:`agent.export.export_csv` writes it out as CSV.

Tables (``docs/journal.md`` says what is written when):

- ``meta``: schema version, campaign id, config hash, seed, parameter names; from
  the run, the resolved campaign file (``config``) and the ``target`` spectrum.
- ``rounds``: each accepted batch (recipes, strategy tags, notes, generator state).
- ``conditions``: one row per proposed condition; its outcome when it finishes.
- ``setpoints``: the first sending of each setpoint command (resends are not rows).
- ``replicates``: every spectrum that arrived, its loss and its verdict.
- ``events``: every other input that changed something, every decision
  (commands, status announcements, log notes) and every rejection.

WAL mode with ``synchronous=NORMAL`` by default: a commit is a ``write()`` to
the WAL, which survives the agent being killed (the reliability bar); only a
power cut can lose the last commits, never corrupt the file. ``FULL`` (an
fsync per commit, ~4 ms here; ``bench/journal_cost.py``) is one option away.
Command ids are deterministic (``campaign.condition.aN``), so even a setpoint
whose journal row was lost is resent under the same id and the pump does not
apply it twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.core.campaign import Campaign
from agent.core.events import (
    AcquireAcked,
    Announce,
    Decision,
    Event,
    FlowStable,
    Note,
    PhaseLabelIn,
    ProposalReady,
    RequestProposal,
    SendAcquire,
    SendSafeState,
    SendSetpoint,
    SetpointAcked,
    SpectrumIn,
    Tick,
)
from agent.core.history import (
    ConditionOutcome,
    ConditionRetried,
    Fact,
    PhaseLabelled,
    RoundProposed,
    SetpointAnswered,
    SetpointSent,
)

__all__ = [
    "SCHEMA_VERSION",
    "Journal",
    "JournalError",
    "JournalRefused",
    "config_hash",
    "run_meta",
]

SCHEMA_VERSION = 1
_APPLICATION_ID = 0x53444C4A  # "SDLJ": PRAGMA application_id marks our files
_OWN_META = frozenset(
    {"schema_version", "campaign_id", "config_hash", "seed", "parameters", "created_at"}
)

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE rounds (
    round INTEGER PRIMARY KEY, seq INTEGER NOT NULL, at REAL NOT NULL,
    x TEXT NOT NULL, strategy TEXT NOT NULL, notes TEXT NOT NULL, rng_state TEXT
);
CREATE TABLE conditions (
    condition TEXT PRIMARY KEY, seq INTEGER NOT NULL, round INTEGER NOT NULL,
    idx INTEGER NOT NULL, strategy TEXT NOT NULL, recipe TEXT NOT NULL, flows TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'queued', done_seq INTEGER, attempt INTEGER, cmd_id TEXT,
    median_loss REAL, loss_sd REAL, median_sd REAL, median_spectrum BLOB,
    n_used INTEGER, n_rejected INTEGER, used TEXT, outliers TEXT, reason TEXT, failure TEXT
);
CREATE TABLE setpoints (
    cmd_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, at REAL NOT NULL,
    condition TEXT NOT NULL, attempt INTEGER NOT NULL, flows TEXT NOT NULL
);
CREATE TABLE replicates (
    seq INTEGER PRIMARY KEY, at REAL NOT NULL, condition TEXT NOT NULL, attempt INTEGER,
    replicate INTEGER NOT NULL, source TEXT NOT NULL, wl_start REAL, wl_step REAL,
    spectrum BLOB NOT NULL, loss REAL, verdict TEXT NOT NULL, code TEXT, reason TEXT
);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY, at REAL NOT NULL, what TEXT NOT NULL, kind TEXT NOT NULL,
    round INTEGER, condition TEXT, cmd_id TEXT, body TEXT NOT NULL
);
CREATE INDEX events_kind ON events (what, kind);
"""

_SYNC = ("NORMAL", "FULL")
_INSERT_REPLICATE = "INSERT INTO replicates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_CHECKPOINT_S = 0.25  # seconds between WAL checkpoints of the checkpoint thread


class JournalError(Exception):
    """A journal could not be written or read."""


class JournalRefused(JournalError):
    """A journal that must not be used: corrupt, another campaign's, or already there."""


def config_hash(config: Any, seed: int) -> str:
    """SHA-256 of what defines a campaign: the validated config (not where the bus
    binds) with its target spectrum, and the seed."""
    dumped = config.model_dump(mode="json", exclude={"bus", "base_dir"})
    target = np.ascontiguousarray(config.target(), dtype="<f8").tobytes()
    h = hashlib.sha256(json.dumps(dumped, sort_keys=True).encode())
    h.update(target)
    h.update(str(int(seed)).encode())
    return h.hexdigest()


def run_meta(config: Any) -> dict[str, str]:
    """What a run stores in ``meta`` beside its own keys, so that a report or an
    audit needs nothing but the journal: ``config``, the validated campaign file
    with its overrides (JSON, without ``[bus]``), and ``target``, the target
    spectrum on the campaign grid (JSON: ``wl_start``, ``wl_step``, ``values``)."""
    dumped = config.model_dump(mode="json", exclude={"bus", "base_dir"})
    grid = config.objective.grid
    target = {
        "wl_start": grid.start,
        "wl_step": grid.step,
        "values": [float(v) for v in config.target()],
    }
    return {"config": json.dumps(dumped, sort_keys=True), "target": json.dumps(target)}


class Journal:
    """One campaign's journal file. Use :meth:`create` or :meth:`open`, then :meth:`close`.

    Args are those of :meth:`create`; the constructor is private.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._db = conn
        self._seq = self._max_seq()
        #: (seq, commands) when the open group of deferred steps began (None: none open)
        self._group: tuple[int, dict[str, str | None]] | None = None
        self.deferred = 0  # steps written into the open group, not yet committed
        #: replicate rows of deferred steps not yet inserted: one ``executemany`` for them all
        self._rows: list[tuple[Any, ...]] = []
        self._checkpointer: _Checkpointer | None = None
        #: cmd_id -> its condition (None: a safe state), of the journalled commands that
        #: may be sent again (resent or restored); a finished condition's never are
        #: (the campaign drops them), so they leave with its outcome and this stays small
        finished = {
            r[0]
            for r in conn.execute(
                "SELECT condition FROM conditions WHERE status IN ('complete', 'failed')"
            )
        }
        rows = conn.execute(
            "SELECT cmd_id, condition FROM events WHERE what = 'command' "
            "UNION ALL SELECT cmd_id, condition FROM setpoints"
        )
        self._commands: dict[str, str | None] = {
            cmd: cid for cmd, cid in rows if cid not in finished
        }
        self.meta: dict[str, str] = dict(conn.execute("SELECT key, value FROM meta").fetchall())

    # ---------------------------------------------------------------- opening

    @classmethod
    def create(
        cls,
        path: Path | str,
        *,
        campaign_id: str,
        config_hash: str,
        seed: int,
        parameters: Sequence[str],
        synchronous: str = "NORMAL",
        extra_meta: Mapping[str, str] | None = None,
    ) -> Journal:
        """Start a new journal at ``path``.

        The file is built under a temporary name and linked into place, so
        ``path`` is either absent or a complete journal, even if the agent dies
        while creating it. ``extra_meta`` adds keys to ``meta`` (the run stores
        the resolved ``config`` and the ``target`` spectrum there, so that a
        report needs nothing but the journal).

        Raises:
            JournalRefused: something is already at ``path`` (it is never overwritten).
            ValueError: ``extra_meta`` names a key the journal sets itself.
        """
        path = Path(path)
        clash = set(extra_meta or {}) & _OWN_META
        if clash:
            raise ValueError(f"extra_meta may not set {', '.join(sorted(clash))}")
        refusal = JournalRefused(
            f"journal {path} already exists; resume it with --resume, or choose "
            "another --journal/--out (a journal is never overwritten)"
        )
        if path.exists():
            raise refusal
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.creating")
        tmp.unlink(missing_ok=True)
        try:
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
                meta = {
                    "schema_version": str(SCHEMA_VERSION),
                    "campaign_id": campaign_id,
                    "config_hash": config_hash,
                    "seed": str(int(seed)),
                    "parameters": json.dumps(list(parameters)),
                    "created_at": str(time.time()),
                    **(extra_meta or {}),
                }
                conn.execute("BEGIN")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
                conn.execute("COMMIT")
            finally:
                conn.close()
            _fsync(tmp)
            try:  # link, not rename: it fails rather than replace what appeared meanwhile
                os.link(tmp, path)
            except FileExistsError:
                raise refusal from None
        finally:
            tmp.unlink(missing_ok=True)
        return cls(path, _connect(path, synchronous))

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        campaign_id: str | None = None,
        config_hash: str | None = None,
        synchronous: str = "NORMAL",
        check: bool = True,
        read_only: bool = False,
    ) -> Journal:
        """Open an existing journal, refusing one that is corrupt or another campaign's.

        ``read_only`` (export, report) opens it through SQLite's ``mode=ro``: the
        file is never written nor migrated, a running campaign may go on
        writing meanwhile, and :meth:`commit` fails. (SQLite may leave an empty
        ``-wal``/``-shm`` beside the file, which the next writer reuses; in a
        directory this process cannot write, a journal with no ``-wal`` is read
        as immutable.)

        Raises:
            JournalRefused: no such file, not a journal, corrupt, another schema
                version, or (when given) another campaign id or config hash.
        """
        path = Path(path)
        if not path.is_file():
            raise JournalRefused(f"no journal at {path}")
        try:  # validate before any pragma that would write to the file
            if read_only:
                uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
                if not os.access(path.parent, os.W_OK) and not _wal(path).exists():
                    # SQLite cannot create the -shm it reads a WAL file with; with no -wal
                    # there is no writer and nothing un-checkpointed: read the file as it is
                    uri += "&immutable=1"
                conn = sqlite3.connect(uri, uri=True, isolation_level=None)
            else:
                conn = sqlite3.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise JournalRefused(f"journal {path} cannot be opened: {exc}") from None
        try:
            meta = _read_meta(path, conn, check)
            if campaign_id is not None and meta["campaign_id"] != campaign_id:
                raise JournalRefused(
                    f"journal {path} belongs to campaign {meta['campaign_id']!r}, "
                    f"not {campaign_id!r}"
                )
            if config_hash is not None and meta["config_hash"] != config_hash:
                raise JournalRefused(
                    f"journal {path} was written with another configuration of campaign "
                    f"{meta['campaign_id']!r} (config hash {meta['config_hash'][:12]}, "
                    f"this run's {config_hash[:12]}; the seed counts too); resume with the "
                    "same campaign file, overrides and seed"
                )
            if read_only:
                conn.execute("PRAGMA query_only = ON")
            else:
                _configure(conn, path, synchronous)
            return cls(path, conn)
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        """Commit any deferred steps (:meth:`flush`), stop the checkpoints, close the file."""
        with contextlib.suppress(JournalError):
            self.flush()
        self.stop_checkpoints()
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- writing

    def commit(
        self,
        campaign: Campaign,
        event: Event | None,
        decisions: Sequence[Decision],
        now: float,
        *,
        rng_state: dict[str, Any] | None = None,
        defer: bool = False,
    ) -> None:
        """Write one step (the event fed to ``campaign`` and the decisions it returned)
        in one transaction, before any decision is carried out.

        An input that changed nothing (a tick with no decisions, a repeated
        readback) writes nothing; a resend of a journalled command is not written
        again. ``rng_state`` goes with a :class:`ProposalReady` that was accepted.

        ``defer`` (group commit): write the step into an open transaction and
        leave it open, for a step with nothing to act on (a spectrum filed with no
        decision). The group is committed by the next step written without
        ``defer`` (in the same transaction, so before that step is acted on), by
        :meth:`rejection`, :meth:`note`, :meth:`flush` or :meth:`close`. Until
        then a crash loses the whole group, and no one outside saw any of it.

        Raises:
            JournalError: the write failed (disk full, file gone); the caller must
                not act on the decisions. A failure drops the open group too.
        """
        if not decisions and (event is None or isinstance(event, Tick | FlowStable)):
            if not defer:
                self.flush()
            return
        try:
            if defer and not decisions and isinstance(event, SpectrumIn):
                # the common step (a droplet filed, nothing to act on): its row, numbered
                # now, joins the group's batch; inserted in one executemany before the
                # next statement of this connection (same rows, same order)
                self._open_group()
                self._rows.append(self._replicate_row(campaign, event, decisions, now))
                self.deferred += 1
                return
            with self._transaction(keep_open=defer):
                if event is not None:
                    self._write_event(campaign, event, decisions, now, rng_state)
                for d in decisions:
                    self._write_decision(campaign, d, now)
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: write failed: {exc}") from exc

    def flush(self) -> None:
        """Commit the deferred steps (see :meth:`commit`); nothing if none are open.

        Raises:
            JournalError: the commit failed; the deferred steps are not on disk.
        """
        if self._group is None:
            return
        try:
            self._insert_rows()
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise JournalError(f"journal {self.path}: write failed: {exc}") from exc
        self._group, self.deferred = None, 0

    def start_checkpoints(self, interval_s: float = _CHECKPOINT_S) -> None:
        """Move WAL checkpoints off the writer's commits, into a thread.

        SQLite's automatic checkpoint runs inside the commit that takes the WAL
        past 1000 pages, with an fsync even at ``synchronous=NORMAL``: a few
        milliseconds in the runtime's event loop (``bench/loop_latency.py``).
        Here it is turned off (``wal_autocheckpoint = 0``) and a thread with its
        own connection runs ``wal_checkpoint(PASSIVE)`` every ``interval_s``
        seconds (PASSIVE never blocks the writer; sqlite3 releases the GIL). The
        WAL holds at most what is written between two checkpoints: SQLite
        rewinds it once a checkpoint has caught up. Undone by
        :meth:`stop_checkpoints` (and :meth:`close`).
        """
        if self._checkpointer is not None:
            return
        self._db.execute("PRAGMA wal_autocheckpoint = 0")
        self._checkpointer = _Checkpointer(self.path, interval_s)
        self._checkpointer.start()

    def stop_checkpoints(self) -> None:
        """Stop the checkpoint thread (if any) and give checkpoints back to SQLite."""
        worker, self._checkpointer = self._checkpointer, None
        if worker is None:
            return
        worker.stop()
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_autocheckpoint = 1000")

    def checkpoint_now(self, timeout: float = 10.0) -> None:
        """Wake the checkpoint thread and wait until it has run one checkpoint.

        Raises:
            JournalError: no checkpoint thread, it failed, or it took longer than ``timeout``.
        """
        if self._checkpointer is None:
            raise JournalError(f"journal {self.path}: no checkpoint thread")
        self._checkpointer.run_once(timeout)

    @property
    def checkpoints(self) -> int:
        """Checkpoints the thread has run (0 without one)."""
        return 0 if self._checkpointer is None else self._checkpointer.done

    def rejection(self, now: float, fields: dict[str, Any]) -> None:
        """A message the runtime rejected before the core saw it."""
        self._single(now, "rejection", "message_rejected", fields)

    def note(self, now: float, event: str, fields: dict[str, Any]) -> None:
        """A record of the shell's own (e.g. ``campaign_resumed``)."""
        self._single(now, "note", event, fields)

    def _single(self, now: float, what: str, kind: str, fields: dict[str, Any]) -> None:
        try:
            with self._transaction():
                self._event(now, what, kind, None, None, None, fields)
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: write failed: {exc}") from exc

    # ---------------------------------------------------------------- reading

    def facts(self) -> list[Fact]:
        """What :meth:`Campaign.restore` needs, in the order it happened.

        Raises:
            JournalRefused: a row cannot be read back (damaged contents).
        """
        try:
            return self._facts()
        except (sqlite3.Error, ValueError, KeyError, TypeError) as exc:
            raise JournalRefused(f"journal {self.path} cannot be read back: {exc!r}") from None

    def _facts(self) -> list[Fact]:
        db = self._db
        out: list[tuple[int, Fact]] = []
        for rnd, seq, x, strategy, notes, rng in db.execute(
            "SELECT round, seq, x, strategy, notes, rng_state FROM rounds"
        ):
            out.append(
                (
                    seq,
                    RoundProposed(
                        rnd,
                        np.array(json.loads(x), dtype=float),
                        tuple(json.loads(strategy)),
                        json.loads(notes),
                        json.loads(rng) if rng else None,
                    ),
                )
            )
        for seq, cid, cmd_id, attempt in db.execute(
            "SELECT seq, condition, cmd_id, attempt FROM setpoints"
        ):
            out.append((seq, SetpointSent(cid, cmd_id, attempt)))
        for seq, kind, cid, cmd_id, body in db.execute(
            "SELECT seq, kind, condition, cmd_id, body FROM events WHERE what = 'input' "
            "AND kind IN ('setpoint_ack', 'phase_label') "
            "UNION ALL SELECT seq, kind, condition, cmd_id, body FROM events "
            "WHERE what = 'note' AND kind = 'condition_retry'"
        ):
            b = json.loads(body)
            if kind == "setpoint_ack":
                out.append((seq, SetpointAnswered(cmd_id, bool(b["accepted"]))))
            elif kind == "phase_label":
                out.append((seq, PhaseLabelled(cid, b["phase"], float(b["confidence"]))))
            else:
                out.append((seq, ConditionRetried(cid)))
        for row in db.execute(
            "SELECT done_seq, condition, status, median_loss, loss_sd, median_sd, "
            "median_spectrum, n_used, n_rejected, failure FROM conditions "
            "WHERE done_seq IS NOT NULL"
        ):
            seq, cid, status, med, sd, msd, spec, n_used, n_rej, failure = row
            out.append(
                (
                    seq,
                    ConditionOutcome(
                        cid,
                        status,
                        med,
                        sd,
                        msd,
                        None if spec is None else np.frombuffer(spec, dtype="<f8").copy(),
                        n_used or 0,
                        n_rej or 0,
                        failure or "",
                    ),
                )
            )
        out.sort(key=lambda sf: sf[0])
        return [f for _, f in out]

    def query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        """Rows of a read-only query over the tables (for export and reports)."""
        if not sql.lstrip().upper().startswith("SELECT"):
            raise ValueError("query() only reads")
        self._insert_rows()  # this connection reads its own open group, whole
        return iter(self._db.execute(sql, params))

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Read inside one transaction: every query sees the same state of the
        file, even while a running campaign goes on writing it."""
        self.flush()
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("COMMIT")

    def count(self, table: str) -> int:
        if table not in ("rounds", "conditions", "setpoints", "replicates", "events"):
            raise ValueError(f"no table {table!r}")
        self._insert_rows()
        return int(self._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    # ---------------------------------------------------------------- internals

    @contextlib.contextmanager
    def _transaction(self, *, keep_open: bool = False) -> Iterator[None]:
        """One transaction, or a step added to the open group of deferred steps;
        committed unless ``keep_open`` (then it stays the open group)."""
        self._open_group()
        try:
            self._insert_rows()
            yield
            if keep_open:
                self.deferred += 1
            else:
                self._db.execute("COMMIT")
                self._group, self.deferred = None, 0
        except BaseException:
            self._rollback()
            raise

    def _open_group(self) -> None:
        if self._group is None:
            self._group = (self._seq, dict(self._commands))
            self._db.execute("BEGIN")

    def _insert_rows(self) -> None:
        """Insert the batched replicate rows of the open group (see :meth:`commit`)."""
        if self._rows:
            rows, self._rows = self._rows, []
            self._db.executemany(_INSERT_REPLICATE, rows)

    def _rollback(self) -> None:
        self._rows = []
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")
        if self._group is not None:
            self._seq, self._commands = self._group
        self._group, self.deferred = None, 0

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _max_seq(self) -> int:
        q = " UNION ALL ".join(
            f"SELECT max({c}) FROM {t}"
            for t, c in (
                ("rounds", "seq"),
                ("conditions", "seq"),
                ("conditions", "done_seq"),
                ("setpoints", "seq"),
                ("replicates", "seq"),
                ("events", "seq"),
            )
        )
        return max((r[0] for r in self._db.execute(q) if r[0] is not None), default=0)

    def _event(
        self,
        now: float,
        what: str,
        kind: str,
        round_no: int | None,
        condition: str | None,
        cmd_id: str | None,
        body: dict[str, Any],
    ) -> None:
        self._db.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (self._next(), now, what, kind, round_no, condition, cmd_id, _json(body)),
        )

    def _write_event(
        self,
        campaign: Campaign,
        event: Event,
        decisions: Sequence[Decision],
        now: float,
        rng_state: dict[str, Any] | None,
    ) -> None:
        match event:
            case SpectrumIn():
                self._db.execute(
                    _INSERT_REPLICATE, self._replicate_row(campaign, event, decisions, now)
                )
            case ProposalReady():
                if not any(isinstance(d, Announce) and d.kind == "proposal" for d in decisions):
                    return  # ignored by the core: not a round
                x = np.asarray(event.batch.x, dtype=float)
                self._db.execute(
                    "INSERT INTO rounds VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        campaign.round,
                        self._next(),
                        now,
                        json.dumps(x.tolist()),
                        json.dumps(list(event.batch.strategy)),
                        _json(event.notes),
                        None if rng_state is None else json.dumps(rng_state),
                    ),
                )
                for cid in [c for c, r in campaign.conditions.items() if r.round == campaign.round]:
                    r = campaign.conditions[cid]
                    self._db.execute(
                        "INSERT INTO conditions (condition, seq, round, idx, strategy, recipe, "
                        "flows) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            cid,
                            self._next(),
                            r.round,
                            r.index,
                            r.strategy,
                            json.dumps(r.recipe),
                            json.dumps(r.flows),
                        ),
                    )
            case SetpointAcked() | AcquireAcked():
                kind = "setpoint_ack" if isinstance(event, SetpointAcked) else "acquire_ack"
                body = {"accepted": event.accepted, "reason": event.reason}
                self._event(now, "input", kind, None, None, event.cmd_id, body)
            case PhaseLabelIn():
                rec = campaign.conditions.get(event.condition)
                body = {
                    "phase": event.phase,
                    "confidence": event.confidence,
                    "source": event.source,
                }
                rnd = None if rec is None else rec.round
                self._event(now, "input", "phase_label", rnd, event.condition, None, body)
            case FlowStable():
                body = {"condition": event.condition}
                self._event(now, "input", "flow_stable", None, None, event.cmd_id, body)
            case _:  # ticks, driver up/down: their decisions say what they changed
                return

    def _replicate_row(
        self, campaign: Campaign, event: SpectrumIn, decisions: Sequence[Decision], now: float
    ) -> tuple[Any, ...]:
        """The ``replicates`` row of a spectrum filed (its verdict from ``decisions``)."""
        rec = campaign.conditions.get(event.condition)
        code = reason = None
        for d in decisions:
            f = d.fields if isinstance(d, Note) else {}
            if (
                isinstance(d, Note)
                and d.event == "message_rejected"
                and f.get("condition") == event.condition
                and f.get("replicate") == event.replicate
            ):
                code, reason = str(f.get("code")), str(f.get("reason"))
        loss = None
        if rec is not None and rec.replicates is not None and code in (None, "outlier"):
            loss = rec.replicates.loss_of(event.replicate)
        values = np.ascontiguousarray(event.values, dtype="<f8")
        return (
            self._next(),
            now,
            event.condition,
            None if rec is None else rec.attempt,
            int(event.replicate),
            event.source,
            event.wl_start,
            event.wl_step,
            values.tobytes(),
            loss,
            "accepted" if code is None else "rejected",
            code,
            reason,
        )

    def _write_decision(self, campaign: Campaign, d: Decision, now: float) -> None:
        match d:
            case SendSetpoint():
                if d.cmd_id in self._commands:
                    return
                self._commands[d.cmd_id] = d.condition
                self._db.execute(
                    "INSERT INTO setpoints VALUES (?, ?, ?, ?, ?, ?)",
                    (d.cmd_id, self._next(), now, d.condition, d.attempt, json.dumps(d.flows)),
                )
            case SendAcquire() | SendSafeState():
                if d.cmd_id in self._commands:
                    return
                self._commands[d.cmd_id] = getattr(d, "condition", None)
                kind = "acquire" if isinstance(d, SendAcquire) else "safe_state"
                body = {k: v for k, v in d.__dict__.items() if k not in ("cmd_id", "condition")}
                cid = getattr(d, "condition", None)
                self._event(now, "command", kind, _round(campaign, cid), cid, d.cmd_id, body)
            case Announce():
                cid = d.fields.get("condition")
                cid = cid if isinstance(cid, str) else None
                rnd = d.fields.get("round")
                self._event(
                    now, "announce", d.kind, rnd if isinstance(rnd, int) else None, cid, None,
                    d.fields,
                )  # fmt: skip
                if d.kind == "condition_complete" and cid is not None:
                    self._write_outcome(campaign, cid)
            case Note():
                cid = d.fields.get("condition")
                cid = cid if isinstance(cid, str) else None
                body = dict(d.fields, level=d.level)
                self._event(now, "note", d.event, _round(campaign, cid), cid, None, body)
            case RequestProposal():
                self._event(now, "note", "proposal_requested", d.round, None, None, {})

    def _write_outcome(self, campaign: Campaign, cid: str) -> None:
        rec = campaign.conditions[cid]
        if rec.state in ("complete", "failed"):  # its commands are never sent again
            self._commands = {k: v for k, v in self._commands.items() if v != cid}
        st = rec.replicates.status() if rec.replicates is not None else None
        spectrum = rec.median_spectrum
        self._db.execute(
            "UPDATE conditions SET status = ?, done_seq = ?, attempt = ?, cmd_id = ?, "
            "median_loss = ?, loss_sd = ?, median_sd = ?, median_spectrum = ?, n_used = ?, "
            "n_rejected = ?, used = ?, outliers = ?, reason = ?, failure = ? WHERE condition = ?",
            (
                rec.state,
                self._next(),
                rec.attempt,
                rec.cmd_id,
                _finite(rec.median_loss),
                _finite(rec.loss_sd),
                _finite(rec.median_sd),
                None if spectrum is None else np.ascontiguousarray(spectrum, dtype="<f8").tobytes(),
                rec.n_used,
                rec.n_rejected,
                json.dumps(list(st.used) if st else []),
                json.dumps([[k, loss, why] for k, loss, why in st.outliers] if st else []),
                st.reason if st else "",
                rec.failure,
                cid,
            ),
        )


# --- helpers ---------------------------------------------------------------------


class _Checkpointer(threading.Thread):
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` on its own connection (made and used
    in this thread only) every ``interval_s`` seconds, or when woken."""

    def __init__(self, path: Path, interval_s: float) -> None:
        super().__init__(name=f"journal-checkpoint:{path.name}", daemon=True)
        self._path = path
        self._interval = float(interval_s)
        self._wake = threading.Event()
        self._stopping = False
        self._cond = threading.Condition()
        self.done = 0
        self.error: str | None = None

    def run(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, timeout=0)
        except sqlite3.Error as exc:
            self._stopping = True
            self._finish(str(exc))
            return
        try:
            while True:
                self._wake.wait(self._interval)  # a timer, not a synchronisation
                self._wake.clear()
                if self._stopping:
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    error = None
                except sqlite3.Error as exc:  # e.g. busy: the next round tries again
                    error = str(exc)
                self._finish(error)
        finally:
            conn.close()
            with self._cond:
                self._stopping = True
                self._cond.notify_all()

    def _finish(self, error: str | None) -> None:
        with self._cond:
            self.done += 1
            self.error = error
            self._cond.notify_all()

    def run_once(self, timeout: float) -> None:
        with self._cond:
            target = self.done + 1
            self._wake.set()
            if not self._cond.wait_for(lambda: self.done >= target or self._stopping, timeout):
                raise JournalError(f"journal {self._path}: no checkpoint within {timeout} s")
            if self.error is not None:
                raise JournalError(f"journal {self._path}: checkpoint failed: {self.error}")

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self.join(timeout=10)


def _wal(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        _configure(conn, path, synchronous)
    except BaseException:
        conn.close()
        raise
    return conn


def _configure(conn: sqlite3.Connection, path: Path, synchronous: str) -> None:
    sync = synchronous.upper()
    if sync not in _SYNC:
        raise ValueError(f"synchronous must be one of {_SYNC}, got {synchronous!r}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise JournalError(f"journal {path}: cannot use WAL mode (got {mode})")
    conn.execute(f"PRAGMA synchronous = {sync}")


def _read_meta(path: Path, conn: sqlite3.Connection, check: bool) -> dict[str, str]:
    try:
        app = conn.execute("PRAGMA application_id").fetchone()[0]
        if app != _APPLICATION_ID:
            raise JournalRefused(f"{path} is not an sdl-agent journal")
        if check:
            verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
            if verdict != "ok":
                raise JournalRefused(f"journal {path} is corrupt: {verdict}")
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.DatabaseError as exc:
        raise JournalRefused(f"journal {path} is corrupt or not a journal: {exc}") from None
    missing = {"schema_version", "campaign_id", "config_hash", "parameters"} - set(meta)
    if missing:
        raise JournalRefused(f"journal {path} lacks {', '.join(sorted(missing))} in its header")
    if meta["schema_version"] != str(SCHEMA_VERSION):
        raise JournalRefused(
            f"journal {path} has schema version {meta['schema_version']}, "
            f"this agent reads {SCHEMA_VERSION}"
        )
    return meta


def _round(campaign: Campaign, condition: str | None) -> int | None:
    rec = campaign.conditions.get(condition) if condition else None
    return None if rec is None else rec.round


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _json(obj: Any) -> str:
    return json.dumps(obj, default=_plain, allow_nan=True, separators=(",", ":"))


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    return repr(obj)
