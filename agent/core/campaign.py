"""The campaign state machine. Everything that changes a campaign's state lives here.

One :class:`Campaign` object serves two callers:

- offline, :meth:`Campaign.ask` / :meth:`Campaign.tell` (benchmarks, scripts);
- live, :meth:`Campaign.start` and :meth:`Campaign.handle` (the asyncio
  runtime feeds it :mod:`~agent.core.events` and carries out the decisions it
  returns). Live rounds call the same ``ask``/``tell`` internally, so a
  benchmark of the optimiser is a benchmark of what runs beside the hardware.

A condition moves through::

    queued -> setting -> settling -> measuring -> complete
                 |          |            |  \\-> (timeout) retry once -> setting
                 |          |            |  (droplets missing for droplet_timeout_s: asked
                 |          |            |   for again, same attempt, replicates kept)
                 |          |            \\----> failed (second timeout)
                 \\--------- +--> failed (pump refused the setpoint / never settled twice)

and the campaign through ``waiting`` (for driver hellos) -> ``running`` <->
``paused`` (a required driver went silent or reported a fatal fault) ->
``stopped``. An illegal transition raises :class:`CampaignError`.

Safe states: the pump is sent ``safe_state`` when the campaign stops and when
it pauses while the pump is still listening (another required driver is down,
or the pump itself reported a fatal fault); the condition it was running then
starts a new attempt when the campaign resumes.

Attempts: each attempt of a condition (a new setpoint ``cmd_id``) gets a fresh
replicate rule, and its spectrometer acquires number their droplets from 0
(``first``, counting up across the attempt's acquires), so indices are unique
within what the rule sees even when the spectrometer restarts. A droplet that
names an acquire (``acquire_id``) not of the measuring attempt belongs to an
abandoned one and is turned away (``stale_attempt``); one that names none
counts for the measuring attempt.

>>> from agent.core.testing import toy_settings
>>> campaign = Campaign(toy_settings(), seed=0)
>>> batch = campaign.ask()
>>> campaign.tell(batch, [Result(loss=sum(r.values()) / 10) for r in batch])
>>> campaign.rounds_complete
1
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from agent.core.events import (
    AcquireAcked,
    Announce,
    Decision,
    DriverDown,
    DriverFault,
    DriverUp,
    Event,
    FlowStable,
    Note,
    PhaseLabelIn,
    ProposalFailed,
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
from agent.core.phase import PhaseSettings, chosen_label, feasible_value, label_problem
from agent.core.replicates import ConditionReplicates, Grid, Rejected, ReplicateSettings
from agent.core.space import Space
from agent.core.stopping import Progress, StopReason, StopRule
from agent.core.strategies.base import Batch, Observations, Strategy, StrategyError

__all__ = [
    "Campaign",
    "CampaignError",
    "CampaignSettings",
    "ConditionRecord",
    "Expander",
    "RestoreError",
    "Result",
    "TellError",
]


class CampaignError(Exception):
    """An illegal transition of the campaign state machine."""


class TellError(CampaignError, ValueError):
    """``tell`` was given results it cannot accept; nothing was changed."""


class RestoreError(CampaignError, ValueError):
    """The facts given to :meth:`Campaign.restore` do not fit together (a corrupt journal)."""


class Expander(Protocol):
    """Boundary expansion: after a round, maybe widen the box.

    Called with the current space, the proposals of every round so far and the
    incumbent (best recipe so far) after each round; returns the new space and
    one record per widened face (see :mod:`agent.core.expansion`).
    """

    def __call__(
        self,
        space: Space,
        proposals: Sequence[np.ndarray],
        incumbents: Sequence[np.ndarray | None] | None = None,
    ) -> tuple[Space, tuple[Any, ...]]: ...


@dataclass(frozen=True)
class Result:
    """What one condition gave: its median loss, its uncertainty, optionally the spectrum.

    ``loss_sd`` is the standard deviation of the *median* loss (the standard
    error the GP may use as known noise), not the droplet-to-droplet spread;
    NaN if unknown.
    """

    loss: float
    loss_sd: float = math.nan
    spectrum: np.ndarray | None = None
    n_used: int = 1
    phase: tuple[str, float] | None = None  # (phase, confidence), when labelled already


@dataclass(frozen=True)
class CampaignSettings:
    """Everything the core needs; built by the shell from the campaign file."""

    campaign_id: str
    space: Space
    loss: Any  # callable spectrum -> loss (agent.core.objective.AgnpLoss)
    grid: Grid
    replicates: ReplicateSettings
    initial_strategy: Strategy
    strategy: Strategy
    stop_rule: StopRule
    batch_size: int = 15
    initial_rounds: int = 1
    expansion: Expander | None = None
    required_roles: tuple[str, ...] = ("pump", "spectrometer", "xrd")
    label_role: str | None = "xrd"
    spectrometer_role: str = "spectrometer"
    pump_role: str = "pump"
    heartbeat_timeout_s: float = 5.0
    settle_timeout_s: float = 60.0
    resend_initial_s: float = 0.25
    resend_max_s: float = 5.0
    phase: PhaseSettings = field(default_factory=PhaseSettings)


@dataclass
class ConditionRecord:
    """One condition: its recipe, where it is, and what it gave."""

    condition: str
    round: int
    index: int
    recipe: dict[str, float]
    strategy: str
    flows: dict[str, float]
    state: str = "queued"
    attempt: int = 0
    cmd_id: str = ""
    state_since: float = 0.0
    replicates: ConditionReplicates | None = None
    median_loss: float | None = None
    loss_sd: float | None = None  # droplet-to-droplet spread (robust)
    median_sd: float | None = None  # standard error of the median loss
    median_spectrum: np.ndarray | None = None
    n_used: int = 0
    n_rejected: int = 0
    failure: str = ""
    labels: list[tuple[str, float]] = field(default_factory=list)
    timeouts: int = 0  # attempts that stalled (the retry budget counts these)
    n_requested: int = 0  # droplets asked of the spectrometer in this attempt
    n_commands: int = 0  # acquire commands sent in this attempt
    next_replicate: int = 0  # index of the next droplet asked of the spectrometer, this attempt
    droplets_since: float = 0.0  # last spectrometer acquire sent or acked, or droplet in
    unlabelled: bool = False  # complete, and no label came within the label timeout

    @property
    def phase(self) -> tuple[str, float] | None:
        """The most confident label so far (None until one arrives)."""
        return chosen_label(self.labels)


@dataclass
class _Pending:
    """A command awaiting its ack; resent with exponential backoff."""

    decision: SendSetpoint | SendAcquire | SendSafeState
    role: str
    sent_at: float
    interval: float


class Campaign:
    """The campaign: rounds, conditions, pending work; all transitions."""

    def __init__(self, settings: Any, seed: int = 0) -> None:
        if hasattr(settings, "to_settings"):
            settings = settings.to_settings()
        self.settings: CampaignSettings = settings
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.space: Space = settings.space
        self.state = "waiting"
        self.stop_reason: StopReason | None = None
        self.conditions: dict[str, ConditionRecord] = {}
        self.rounds_complete = 0
        self.best_by_round: list[float] = []
        self._round_ids: list[list[str]] = []
        self._asked: list[dict[str, float]] | None = None
        self._asked_tags: tuple[str, ...] = ()
        self._proposals: list[np.ndarray] = []
        self._incumbents: list[np.ndarray | None] = []
        self._x: list[np.ndarray] = []
        self._loss: list[float] = []
        self._loss_sd: list[float] = []
        self._spectra: list[np.ndarray | None] = []
        self._obs_round: list[int] = []
        self._obs_strategy: list[str] = []  # the tag of the strategy that proposed each
        # each observation's labels: live, the condition's own list (late labels show up)
        self._obs_labels: list[list[tuple[str, float]]] = []
        self._awaiting_label: dict[str, float] = {}  # condition -> label deadline
        self._queue: list[str] = []
        self._active: str | None = None
        self._pending: dict[str, _Pending] = {}
        #: cmd_ids of the spectrometer acquires of the measuring attempt (of the
        #: active condition): a droplet naming another is of an abandoned attempt
        self._attempt_acquires: set[str] = set()
        #: finished conditions whose replicates the step that finished them still
        #: reads (journal, progress view); released when the next event comes in
        self._finished: list[ConditionRecord] = []
        self._up: dict[str, float] = {}
        self._started_at: float | None = None
        self._proposing = False
        self._lost: set[str] = set()  # drivers that went down since the last resume
        self._notes_last_proposal: dict[str, object] = {}
        self._lost_reason = "the pump was lost while it ran"
        self._last_setpoint = ""  # cmd_id of the last setpoint sent (the pump may be at it)
        self._pump_safe = ""  # why the pump was sent to its safe state since (empty: it was not)
        self._session: dict[str, str] = {}  # role -> session of its latest hello
        #: role -> (session, code): a fatal fault; counted down until a hello of a new session
        self._faulted: dict[str, tuple[str, str]] = {}
        #: numbers the strategy reported with the current round's proposal (stop rules)
        self._metrics: dict[str, float] = {}
        #: every widening of the box so far (records from the expansion rule)
        self.expansions: list[Any] = []

    # ------------------------------------------------------------------ views

    @property
    def stopped(self) -> bool:
        return self.state == "stopped"

    @property
    def active(self) -> ConditionRecord | None:
        """The condition being set or measured now (None between conditions)."""
        return self.conditions.get(self._active) if self._active else None

    @property
    def round(self) -> int:
        """The current round (1-based); 0 before the first ask."""
        return len(self._round_ids)

    @property
    def observations(self) -> Observations:
        """Every completed condition so far, in physical units."""
        return self._observations(spectra=True)

    def _observations(self, *, spectra: bool) -> Observations:
        """:attr:`observations`; their ``spectra`` only if asked for: stacking them
        copies every median spectrum measured so far (~3.4 kB a condition)."""
        stacked = None
        if spectra and self._spectra and all(s is not None for s in self._spectra):
            stacked = np.stack(self._spectra)  # type: ignore[arg-type]
        return Observations(
            x=np.array(self._x).reshape(-1, self.space.dim),
            loss=np.array(self._loss, dtype=float),
            loss_sd=np.array(self._loss_sd, dtype=float),
            spectra=stacked,
            round=np.array(self._obs_round, dtype=int),
            feasible=self._feasible(),
            p_floor=self.settings.phase.p_floor,
        )

    def _feasible(self) -> np.ndarray | None:
        ph = self.settings.phase
        if not ph.active:
            return None
        return np.array([feasible_value(lab, ph) for lab in self._obs_labels], dtype=float)

    @property
    def best(self) -> tuple[dict[str, float], float] | None:
        """The best recipe so far and its median loss."""
        if not self._loss:
            return None
        i = int(np.argmin(self._loss))
        return self.space.to_recipes(self._x[i][None, :])[0], self._loss[i]

    @property
    def best_strategy(self) -> str | None:
        """The tag of the strategy that proposed the best recipe so far (e.g. "lp-ei", "dnn")."""
        if not self._loss:
            return None
        return self._obs_strategy[int(np.argmin(self._loss))]

    def progress(self, now: float | None = None) -> Progress:
        """What the stop rules see at ``now`` (campaign time; None: no clock).

        ``elapsed_s`` counts from :meth:`start` (live) or from the first
        :meth:`ask` given a ``now`` (offline); ``metrics`` are those of the
        proposal of the latest round; ``replicate_sd`` is the median standard
        error of the median loss over the conditions that have one.
        """
        elapsed = None if now is None or self._started_at is None else now - self._started_at
        sds = [v for v in self._loss_sd if math.isfinite(v)]
        return Progress(
            rounds=self.rounds_complete,
            conditions=len(self._loss),
            best_loss=min(self._loss) if self._loss else None,
            best_by_round=tuple(self.best_by_round),
            elapsed_s=elapsed,
            metrics=dict(self._metrics),
            replicate_sd=float(np.median(sds)) if sds else None,
        )

    # --------------------------------------------------------- offline API

    def ask(self, now: float | None = None) -> list[dict[str, float]]:
        """Propose the next round: a list of recipes (plain floats).

        Asking again before telling returns the same batch. ``now`` (any clock,
        in seconds) given to the first ``ask`` starts the campaign's clock, so
        that a wall-time rule can fire at a later ``tell(..., now=...)``.
        """
        if self.stopped:
            raise CampaignError("the campaign has stopped; nothing more to ask")
        if now is not None and self._started_at is None:
            self._started_at = now
        if self._asked is not None:
            return [dict(r) for r in self._asked]
        self._accept(*self.propose_batch())
        return [dict(r) for r in self._asked]  # type: ignore[union-attr]

    def propose_batch(self) -> tuple[Batch, dict[str, object]]:
        """Compute the next round's batch without changing the campaign's state.

        The expensive part of a round (fitting and optimising); the live shell
        runs it in a worker thread and hands the result back as a
        :class:`~agent.core.events.ProposalReady` event. Falls back to the
        initial strategy (with a note saying why) when the strategy fails.

        Raises:
            StrategyError: even the initial strategy could not propose.
            CampaignError: a strategy proposed an infeasible point (a bug; never sent).
        """
        s = self.settings
        first = self.round < s.initial_rounds or len(self._loss) < 2
        strategy = s.initial_strategy if first else s.strategy
        # the initial strategy is the fallback: it reads the same data
        reads = [getattr(x, "reads_spectra", True) for x in (strategy, s.initial_strategy)]
        data = self._observations(spectra=any(reads))
        notes: dict[str, object] = {"strategy": strategy.name}
        try:
            batch = strategy.propose(self.space, data, s.batch_size, self.rng)
        except StrategyError as exc:
            if strategy is s.initial_strategy:
                raise
            notes["fallback"] = f"{strategy.name} failed: {exc}; used {s.initial_strategy.name}"
            batch = s.initial_strategy.propose(self.space, data, s.batch_size, self.rng)
        ok = self.space.is_feasible(batch.x, in_box=False)
        if not np.all(ok):  # never let a strategy bug reach the pump
            raise CampaignError(f"strategy {strategy.name} proposed infeasible points")
        notes.update(batch.notes)
        return batch, notes

    def tell(
        self,
        batch: Sequence[Mapping[str, float]],
        results: Sequence[Result],
        now: float | None = None,
    ) -> None:
        """Record the results of the batch from :meth:`ask` (same order), then
        check the stop rules (at ``now``, on the clock ``ask`` was given).

        Raises:
            TellError: wrong count, non-finite loss, a recipe that was not asked
                or lies outside the hard limits; nothing is recorded then.
        """
        if self._asked is None:
            raise TellError("tell() without a pending ask()")
        if len(batch) != len(results):
            raise TellError(f"{len(batch)} recipes but {len(results)} results")
        try:
            x = self.space.to_array(list(batch))
        except (ValueError, TypeError, KeyError) as exc:
            raise TellError(f"bad recipe: {exc}") from None
        asked = self.space.to_array(self._asked)
        tags = []
        for i, row in enumerate(x):
            hit = np.all(np.isclose(asked, row, rtol=0, atol=1e-9), axis=1)
            if not np.any(hit):
                bad = self.space.violations(batch[i])
                why = "; ".join(bad) if bad else "it was not in the asked batch"
                raise TellError(f"recipe {i} cannot be told: {why}")
            tags.append(self._asked_tags[int(np.argmax(hit))])
        for i, r in enumerate(results):
            if not isinstance(r, Result):
                raise TellError(f"result {i} is not a Result")
            if not math.isfinite(r.loss):
                raise TellError(f"result {i} has a non-finite loss {r.loss!r}")
            if not (math.isnan(r.loss_sd) or (math.isfinite(r.loss_sd) and r.loss_sd >= 0)):
                raise TellError(f"result {i} has an invalid loss_sd {r.loss_sd!r}")
            if r.spectrum is not None and not np.all(np.isfinite(r.spectrum)):
                raise TellError(f"result {i} has a non-finite spectrum")
            if r.phase is not None:
                bad_label = label_problem(r.phase[0], r.phase[1], self.settings.phase)
                if bad_label is not None:
                    raise TellError(f"result {i} has a bad phase label: {bad_label[1]}")
        round_no = self.round
        for row, r, tag in zip(x, results, tags, strict=True):
            self._record(row, r, round_no, tag)
        self._asked = None
        _, reason = self._finish_round(round_no, now)
        if reason is not None:
            self.state = "stopped"
            self.stop_reason = reason

    # ----------------------------------------------------------- live API

    def start(self, now: float) -> list[Decision]:
        """Begin the live campaign; commands wait for the required drivers' hellos."""
        if self.state != "waiting" or self._started_at is not None:
            raise CampaignError(f"start() in state {self.state!r}")
        self._started_at = now
        label_wait = self.settings.phase.label_timeout_s
        for rec in self.conditions.values():  # a restored campaign's timers start now
            if rec.state not in ("complete", "failed"):
                rec.state_since = now
            elif rec.state == "complete" and self.settings.label_role and not rec.labels:
                self._awaiting_label[rec.condition] = now + label_wait
        for p in self._pending.values():
            p.sent_at = now
        out: list[Decision] = [
            Note("campaign_started", {"required": list(self.settings.required_roles)})
        ]
        out += self._maybe_run(now)
        return out

    def handle(self, event: Event) -> list[Decision]:
        """Feed one event; returns the decisions to carry out, in order.

        A condition finished by the previous event drops its replicates now (its
        outcome is on the record): the campaign keeps per finished condition only
        what the strategies and reports read (recipe, median loss and spectrum,
        counts, labels), so its memory grows by about one median spectrum a condition.
        """
        self._release_finished()
        match event:
            case Tick(now=now):
                return self._on_tick(now)
            case DriverUp():
                return self._on_driver_up(event)
            case DriverDown():
                return self._on_driver_down(event)
            case DriverFault():
                return self._on_fault(event)
            case SetpointAcked():
                return self._on_setpoint_ack(event)
            case AcquireAcked():
                return self._on_acquire_ack(event)
            case FlowStable():
                return self._on_flow_stable(event)
            case SpectrumIn():
                return self._on_spectrum(event)
            case PhaseLabelIn():
                return self._on_label(event)
            case ProposalReady() | ProposalFailed():
                return self._on_proposal(event)
        raise CampaignError(f"unknown event {event!r}")

    def is_up(self, role: str) -> bool:
        """Whether ``role`` said hello and has not gone silent since."""
        return role in self._up

    def awaiting_safe_state(self) -> bool:
        """Whether a safe-state command to a pump that is up still waits for its ack."""
        return any(
            isinstance(p.decision, SendSafeState) and p.role in self._up
            for p in self._pending.values()
        )

    def is_faulted(self, role: str) -> bool:
        """Whether ``role`` reported a fatal fault and has not said hello from a new session."""
        return role in self._faulted

    def driver_seen(self, role: str, now: float) -> None:
        """Any message from ``role`` counts as a heartbeat."""
        if role in self._up:
            self._up[role] = now

    def stop(self, now: float, reason: str, rule: str = "operator") -> list[Decision]:
        """Stop on request (signal, operator); the pump goes to its safe state."""
        if self.stopped:
            return []
        return self._stop(now, StopReason(rule, reason))

    # ------------------------------------------------------------- restore

    @classmethod
    def restore(cls, settings: Any, seed: int, facts: Iterable[Fact]) -> Campaign:
        """Rebuild a campaign from its journalled facts, in the order they happened.

        Rounds are re-created from their journalled batches (never recomputed)
        and the generator takes the state journalled with the last one, so the
        next proposal equals the one an uninterrupted run would make. Finished
        conditions keep their outcome and are not measured again; each finished
        round is told to the strategy data, the boundary rule and the stop rules
        exactly as it was live. The condition in flight when the journal ends:

        - setpoint sent but not acknowledged: it stays pending with the same
          ``cmd_id`` and is resent when the drivers are up (the pump applies a
          ``cmd_id`` at most once, so a setpoint it already took is not applied
          again);
        - setpoint acknowledged (settling or measuring): the pump may have gone
          to its safe state since, so the condition starts a new attempt (a new
          ``cmd_id``); its earlier replicates are not used.

        An operator stop is not a fact: a restored campaign carries on.

        Raises:
            RestoreError: the facts contradict each other (unknown condition,
                rounds out of order, ...).
        """
        campaign = cls(settings, seed)
        for fact in facts:
            campaign._replay(fact)
        campaign._settle_restore()
        return campaign

    @property
    def rng_state(self) -> dict[str, Any]:
        """The generator's state (JSON-able); journalled with every accepted round."""
        return dict(self.rng.bit_generator.state)

    # ============================================================ internals

    def _accept(self, batch: Batch, notes: dict[str, object]) -> None:
        """Make ``batch`` the pending round (what :meth:`ask` returns)."""
        self._round_ids.append([])
        self._asked = self.space.to_recipes(batch.x)
        self._asked_tags = batch.strategy
        self._proposals.append(batch.x)
        self._notes_last_proposal = notes
        self._metrics = _finite_metrics(notes.get("metrics"))

    # --- restore: replaying journalled facts -----------------------------------

    def _replay(self, fact: Fact) -> None:
        match fact:
            case RoundProposed():
                if fact.round != self.round + 1 or self._queue or self._asked is not None:
                    raise RestoreError(
                        f"round {fact.round} proposed while round {self.round} is unfinished "
                        "or out of order"
                    )
                self._accept(Batch(np.asarray(fact.x, float), fact.strategy), fact.notes)
                self._start_round(0.0)
                if fact.rng_state is not None:
                    self.rng.bit_generator.state = fact.rng_state
            case SetpointSent():
                rec = self._restored(fact.condition)
                if rec.state in ("complete", "failed"):
                    raise RestoreError(f"setpoint {fact.cmd_id} for finished {rec.condition}")
                if rec.condition in self._queue:
                    self._queue.remove(rec.condition)
                self._drop_pending(rec.condition)
                self._active = rec.condition
                self._last_setpoint = fact.cmd_id
                rec.attempt, rec.cmd_id, rec.state = fact.attempt, fact.cmd_id, "setting"
                rec.replicates = None
                d = SendSetpoint(rec.cmd_id, rec.condition, dict(rec.flows), rec.attempt)
                self._command(d, self.settings.pump_role, 0.0)
            case SetpointAnswered():
                p = self._pending.pop(fact.cmd_id, None)
                if p is not None and isinstance(p.decision, SendSetpoint) and fact.accepted:
                    rec = self.conditions[p.decision.condition]
                    if rec.cmd_id == fact.cmd_id and rec.state == "setting":
                        rec.state = "settling"
            case ConditionRetried():
                self._restored(fact.condition).timeouts += 1
            case PhaseLabelled():
                # a label the campaign rejected (unknown condition or phase, bad
                # confidence) is journalled as input but stays out, as it did live
                rec = self.conditions.get(fact.condition)
                ok = label_problem(fact.phase, fact.confidence, self.settings.phase) is None
                if rec is not None and ok:
                    rec.labels.append((fact.phase, fact.confidence))
            case ConditionOutcome():
                self._replay_outcome(fact)
            case _:
                raise RestoreError(f"not a journal fact: {fact!r}")

    def _restored(self, condition: str) -> ConditionRecord:
        rec = self.conditions.get(condition)
        if rec is None:
            raise RestoreError(f"the journal names condition {condition!r} before proposing it")
        return rec

    def _replay_outcome(self, fact: ConditionOutcome) -> None:
        rec = self._restored(fact.condition)
        if fact.status not in ("complete", "failed") or rec.state in ("complete", "failed"):
            raise RestoreError(f"{rec.condition}: outcome {fact.status!r} in state {rec.state!r}")
        if fact.status == "complete" and fact.median_loss is None:
            raise RestoreError(f"{rec.condition}: complete without a median loss")
        rec.state = fact.status
        rec.median_loss, rec.loss_sd, rec.median_sd = fact.median_loss, fact.loss_sd, fact.median_sd
        rec.median_spectrum = fact.median_spectrum
        rec.n_used, rec.n_rejected, rec.failure = fact.n_used, fact.n_rejected, fact.failure
        rec.replicates = None
        self._drop_pending(rec.condition)
        if rec.condition in self._queue:
            self._queue.remove(rec.condition)
        if self._active == rec.condition:
            self._active = None
        recs = [self.conditions[c] for c in self._round_ids[rec.round - 1]]
        if all(r.state in ("complete", "failed") for r in recs):
            _, reason, _ = self._tell_round(rec.round, recs, None)
            if reason is not None:
                self.state, self.stop_reason = "stopped", reason
                self._queue.clear()
                self._pending.clear()

    def _settle_restore(self) -> None:
        """After the last fact: put the condition in flight where the rules above say."""
        rec = self.conditions.get(self._active) if self._active else None
        if rec is None or self.stopped:
            return
        if rec.state in ("settling", "measuring"):
            self._lost.add(self.settings.pump_role)
            self._lost_reason = "the agent restarted after the pump had taken this setpoint"

    def _record(
        self,
        x: np.ndarray,
        r: Result,
        round_no: int,
        strategy: str = "",
        labels: list[tuple[str, float]] | None = None,
    ) -> None:
        if labels is None:
            labels = [] if r.phase is None else [(str(r.phase[0]), float(r.phase[1]))]
        self._obs_labels.append(labels)
        self._x.append(np.asarray(x, dtype=float))
        self._loss.append(float(r.loss))
        self._loss_sd.append(float(r.loss_sd))
        self._spectra.append(None if r.spectrum is None else np.asarray(r.spectrum, float))
        self._obs_round.append(round_no)
        self._obs_strategy.append(strategy)

    def _finish_round(
        self, round_no: int, now: float | None
    ) -> tuple[list[Decision], StopReason | None]:
        """After a round's results are in: best so far, boundary expansion, stop rules."""
        self.rounds_complete += 1
        out: list[Decision] = []
        if self._loss:
            self.best_by_round.append(min(self._loss))
        if self.settings.expansion is not None:
            self._incumbents.append(
                self._x[int(np.argmin(self._loss))].copy() if self._loss else None
            )
            new_space, changes = self.settings.expansion(
                self.space, self._proposals, self._incumbents
            )
            self.space = new_space
            for ch in changes:
                self.expansions.append(ch)
                out.append(Announce("boundary_expanded", _expansion_fields(ch, round_no)))
                out.append(Note("boundary_expanded", _expansion_fields(ch, round_no)))
        return out, self.settings.stop_rule(self.progress(now))

    # --- live: round and condition flow -------------------------------------

    def _maybe_run(self, now: float) -> list[Decision]:
        if self.state in ("stopped",):
            return []
        missing = [r for r in self.settings.required_roles if r not in self._up]
        if missing:
            if self.state == "running":
                self.state = "paused"
                out = [Note("campaign_paused", {"missing": missing}, "warning")]
                return out + self._make_pump_safe(now, missing)
            return []
        out: list[Decision] = []
        if self.state in ("waiting", "paused"):
            out.append(Note("campaign_running", {"was": self.state}))
            self.state = "running"
            out += self._resume(now)
        if self._active is None:
            out += self._next_condition(now)
        return out

    def _next_condition(self, now: float) -> list[Decision]:
        out: list[Decision] = []
        if not self._queue:
            if self.stopped or self._proposing:
                return out
            self._proposing = True
            return [RequestProposal(self.round + 1)]
        cid = self._queue.pop(0)
        self._active = cid
        out += self._send_setpoint(self.conditions[cid], now)
        return out

    def _on_proposal(self, ev: ProposalReady | ProposalFailed) -> list[Decision]:
        if not self._proposing or self.stopped:
            return [Note("proposal_ignored", {"reason": "no proposal was requested"})]
        self._proposing = False
        self._lost: set[str] = set()  # drivers that went down since the last resume
        if isinstance(ev, ProposalFailed):
            return self._stop(ev.now, StopReason("no_proposal", f"could not propose: {ev.reason}"))
        self._accept(ev.batch, ev.notes)
        out = self._start_round(ev.now)
        if self.state == "running" and self._active is None:
            out += self._next_condition(ev.now)
        return out

    def _start_round(self, now: float) -> list[Decision]:
        recipes = [dict(r) for r in self._asked or []]
        round_no = self.round
        out: list[Decision] = []
        notes = self._notes_last_proposal
        if "fallback" in notes:
            out.append(Note("strategy_fallback", {"round": round_no, **notes}, "warning"))
        proposed = []
        for i, (recipe, tag) in enumerate(zip(recipes, self._asked_tags, strict=True)):
            cid = f"r{round_no:02d}-c{i + 1:02d}"
            # without a channel map the pump's channels are the recipe's parameters
            channels = self.space.channels
            flows = channels.flows(recipe) if channels is not None else dict(recipe)
            self.conditions[cid] = ConditionRecord(
                cid, round_no, i, recipe, tag, flows, state_since=now
            )
            self._round_ids[-1].append(cid)
            self._queue.append(cid)
            proposed.append({"condition": cid, "recipe": recipe, "strategy": tag})
        out.append(Announce("proposal", {"round": round_no, "conditions": proposed}))
        out.append(
            Note(
                "round_proposed",
                {"round": round_no, "n": len(recipes), "box": self._box(), **notes},
            )
        )
        return out

    def _make_pump_safe(self, now: float, missing: list[str]) -> list[Decision]:
        """Pausing: send the pump to its safe state, if it listens (it is up, or it
        reported the fatal fault itself) and was sent a setpoint since it last was.

        The command id is the last setpoint's plus ``.safe``: one per setpoint, so
        it is never one the pump already applied while it still runs a later one.
        """
        pump = self.settings.pump_role
        listening = pump in self._up or pump in self._faulted
        if not listening or not self._last_setpoint or self._pump_safe:
            return []
        causes = [
            f"{r} reported a fatal fault ({self._faulted[r][1]})"
            if r in self._faulted
            else f"{r} is silent"
            for r in missing
        ]
        self._pump_safe = "the pump was sent to its safe state: " + "; ".join(causes)
        d = SendSafeState(f"{self._last_setpoint}.safe", f"campaign paused: {'; '.join(causes)}", 1)
        return [self._command(d, pump, now)]

    def _drop_safe_states(self) -> None:
        for cmd_id, p in list(self._pending.items()):
            if isinstance(p.decision, SendSafeState):
                del self._pending[cmd_id]

    def _send_setpoint(self, rec: ConditionRecord, now: float) -> list[Decision]:
        self._drop_safe_states()  # superseded: the pump is told where to go next
        rec.attempt += 1
        rec.cmd_id = f"{self.settings.campaign_id}.{rec.condition}.a{rec.attempt}"
        self._last_setpoint = rec.cmd_id
        rec.replicates = None
        rec.n_requested = rec.n_commands = rec.next_replicate = 0
        self._attempt_acquires = set()  # the last attempt's droplets are stale from now
        self._set_state(rec, "setting", now)
        d = SendSetpoint(rec.cmd_id, rec.condition, dict(rec.flows), rec.attempt)
        return [self._command(d, self.settings.pump_role, now)]

    def _command(
        self, d: SendSetpoint | SendAcquire | SendSafeState, role: str, now: float
    ) -> SendSetpoint | SendAcquire | SendSafeState:
        self._pending[d.cmd_id] = _Pending(d, role, now, self.settings.resend_initial_s)
        return d

    def _acquire(self, rec: ConditionRecord, role: str, n: int, now: float) -> SendAcquire:
        cmd_id = f"{rec.cmd_id}.{role}.{rec.n_commands}"
        rec.n_commands += 1
        first = None
        if role == self.settings.spectrometer_role:
            rec.n_requested += n
            rec.droplets_since = now
            if rec.next_replicate + n - 1 <= _MAX_REPLICATE:  # else the instrument numbers
                first = rec.next_replicate
            rec.next_replicate += n
            self._attempt_acquires.add(cmd_id)
        d = SendAcquire(cmd_id, role, rec.condition, n, rec.attempt, first)
        self._command(d, role, now)
        return d

    def _set_state(self, rec: ConditionRecord, state: str, now: float) -> None:
        legal = _TRANSITIONS.get(rec.state, ())
        if state not in legal:
            raise CampaignError(f"{rec.condition}: illegal transition {rec.state} -> {state}")
        rec.state = state
        rec.state_since = now

    def _complete(self, rec: ConditionRecord, now: float) -> list[Decision]:
        assert rec.replicates is not None
        st = rec.replicates.status()
        rec.median_loss = st.median_loss
        rec.loss_sd = st.loss_sd
        rec.median_sd = st.median_sd
        rec.median_spectrum = st.median_spectrum
        rec.n_used = st.n_used
        rec.n_rejected = st.n_outliers
        self._set_state(rec, "complete", now)
        self._drop_pending(rec.condition)
        if self.settings.label_role is not None and not rec.labels:
            self._awaiting_label[rec.condition] = now + self.settings.phase.label_timeout_s
        out: list[Decision] = [
            Announce(
                "condition_complete",
                {
                    "round": rec.round,
                    "condition": rec.condition,
                    "status": "complete",
                    "n_used": st.n_used,
                    "n_rejected": st.n_outliers,
                    "median_loss": st.median_loss,
                    "loss_sd": st.loss_sd,
                    "reason": st.reason,
                },
            )
        ]
        return out + self._condition_done(rec, now)

    def _fail(self, rec: ConditionRecord, now: float, why: str) -> list[Decision]:
        rec.failure = why
        self._set_state(rec, "failed", now)
        self._drop_pending(rec.condition)
        out: list[Decision] = [
            Announce(
                "condition_complete",
                {
                    "round": rec.round,
                    "condition": rec.condition,
                    "status": "failed",
                    "n_used": rec.replicates.status().n_used if rec.replicates else 0,
                    "reason": why,
                },
            ),
            Note("condition_failed", {"condition": rec.condition, "reason": why}, "warning"),
        ]
        return out + self._condition_done(rec, now)

    def _condition_done(self, rec: ConditionRecord, now: float) -> list[Decision]:
        self._active = None
        self._attempt_acquires = set()
        if rec.replicates is not None:
            self._finished.append(rec)
        out: list[Decision] = []
        ids = self._round_ids[rec.round - 1]
        recs = [self.conditions[c] for c in ids]
        if all(r.state in ("complete", "failed") for r in recs):
            out += self._round_done(rec.round, recs, now)
        if self.state == "running":
            out += self._next_condition(now)
        return out

    def _round_done(self, round_no: int, recs: list[ConditionRecord], now: float) -> list[Decision]:
        out, reason, n_done = self._tell_round(round_no, recs, now)
        best = self.best
        out.insert(
            0,
            Announce(
                "round_complete",
                {
                    "round": round_no,
                    "best_loss": None if best is None else best[1],
                    "best_condition": self._best_condition(),
                    "n_complete": n_done,
                    "n_failed": len(recs) - n_done,
                },
            ),
        )
        if reason is not None:
            out += self._stop(now, reason)
        return out

    def _tell_round(
        self, round_no: int, recs: list[ConditionRecord], now: float | None
    ) -> tuple[list[Decision], StopReason | None, int]:
        """Tell a finished round's completed conditions (failed ones are not data).

        ``now`` is None when replaying a journal: no clock, so a wall-time rule
        does not fire on the replay (timers restart at resume)."""
        done = [r for r in recs if r.state == "complete" and r.median_loss is not None]
        results = [
            Result(
                loss=float(r.median_loss),  # type: ignore[arg-type]
                loss_sd=math.nan if r.median_sd is None else float(r.median_sd),
                spectrum=r.median_spectrum,
                n_used=r.n_used,
            )
            for r in done
        ]
        for r, res in zip(done, results, strict=True):
            self._record(self.space.to_array([r.recipe])[0], res, round_no, r.strategy, r.labels)
        self._asked = None
        out, reason = self._finish_round(round_no, now)
        return out, reason, len(done)

    def _stop(self, now: float, reason: StopReason) -> list[Decision]:
        self.state = "stopped"
        self.stop_reason = reason
        self._queue.clear()
        self._pending.clear()
        best = self.best
        safe = SendSafeState(
            f"{self.settings.campaign_id}.safe.{len(self._round_ids)}",
            f"campaign stopped: {reason.rule}",
            1,
        )
        numbers = _wire_numbers(reason.numbers)
        out: list[Decision] = [
            Announce(
                "campaign_stopped",
                {
                    "reason": reason.reason[:_MAX_TEXT],
                    "rule": reason.rule[:_MAX_NAME],
                    "rounds": self.rounds_complete,
                    "conditions": len(self._loss),
                    "best_loss": None if best is None else best[1],
                    "best_condition": self._best_condition(),
                    "numbers": numbers,
                },
            ),
            Note(
                "campaign_stopped",
                {
                    "rule": reason.rule,
                    "reason": reason.reason,
                    "numbers": numbers,
                    "best_loss": None if best is None else best[1],
                    "best_condition": self._best_condition(),
                    "best_strategy": self.best_strategy,
                },
            ),
        ]
        if self.settings.pump_role in self._up:
            out.append(self._command(safe, self.settings.pump_role, now))
        return out

    # --- live: event handlers -------------------------------------------------

    def _on_tick(self, now: float) -> list[Decision]:
        out: list[Decision] = []
        timeout = self.settings.heartbeat_timeout_s
        for role, seen in list(self._up.items()):
            if now - seen > timeout:
                out += self._on_driver_down(DriverDown(role, now))
        if self._awaiting_label:
            out += self._check_labels(now)
        if self.state not in ("running", "paused", "stopped"):
            return out
        for p in list(self._pending.values()):
            if self.state != "running" and not isinstance(p.decision, SendSafeState):
                continue  # while paused or stopped only a safe state goes out
            if now - p.sent_at >= p.interval and p.role in self._up:
                p.sent_at = now
                p.interval = min(p.interval * 2, self.settings.resend_max_s)
                out.append(p.decision)
        if self.state != "running":
            return out
        if self._active is not None:
            rec = self.conditions[self._active]
            out += self._check_timeouts(rec, now)
        return out

    def _check_timeouts(self, rec: ConditionRecord, now: float) -> list[Decision]:
        s = self.settings
        stuck = rec.state in ("setting", "settling") and now - rec.state_since > s.settle_timeout_s
        measuring = rec.state == "measuring" and rec.replicates is not None
        timed_out = measuring and rec.replicates.timed_out(now)  # type: ignore[union-attr]
        if not (stuck or timed_out):
            return self._check_missing(rec, now) if measuring else []
        what = "pump did not settle" if stuck else "replicates timed out"
        rec.timeouts += 1
        if rec.timeouts <= s.replicates.retries:
            self._drop_pending(rec.condition)
            note = Note(
                "condition_retry",
                {"condition": rec.condition, "attempt": rec.attempt + 1, "reason": what},
                "warning",
            )
            self._set_state(rec, "queued", now)
            return [note, *self._send_setpoint(rec, now)]
        return self._fail(rec, now, f"{what} after {rec.timeouts} attempts")

    def _check_missing(self, rec: ConditionRecord, now: float) -> list[Decision]:
        """Droplets asked for and not in within ``droplet_timeout_s`` of the last
        sign of them (the acquire sent or acked, or a droplet of the condition) were lost on
        the way: write them off and ask the spectrometer for as many again, in the
        same attempt, keeping every replicate already in. Not a stall: the retry
        budget is untouched. While the acquire itself is unacknowledged, its
        resending covers the loss."""
        s = self.settings
        reps = rec.replicates
        assert reps is not None
        arrived = reps.n_received + reps.n_invalid
        missing = rec.n_requested - arrived
        if missing <= 0 or reps.complete:
            return []
        if now - rec.droplets_since <= s.replicates.droplet_timeout_s:
            return []
        role = s.spectrometer_role
        for p in self._pending.values():
            if p.role == role and getattr(p.decision, "condition", None) == rec.condition:
                return []
        rec.n_requested = arrived
        more = reps.need_more()
        note = Note(
            "droplets_missing",
            {
                "condition": rec.condition,
                "attempt": rec.attempt,
                "missing": missing,
                "asked": more,
                "waited_s": round(now - rec.droplets_since, 3),
            },
            "warning",
        )
        if more <= 0:
            return [note]
        return [note, self._acquire(rec, role, more, now)]

    def _droplets_alive(self, p: _Pending, now: float) -> None:
        """The spectrometer took an acquire of the active condition: its droplets are
        on their way, so the wait for missing ones starts again now."""
        rec = self.conditions.get(getattr(p.decision, "condition", ""))
        if rec is not None and p.role == self.settings.spectrometer_role:
            rec.droplets_since = max(rec.droplets_since, now)

    def _on_driver_up(self, ev: DriverUp) -> list[Decision]:
        known = self._session.get(ev.role)
        if ev.role in self._up and ev.session and known and known != ev.session:
            # a new session while still counted up: the driver restarted within the
            # heartbeat timeout and lost what it was doing; down first, then up
            note = Note("driver_restarted", {"role": ev.role, "session": ev.session}, "warning")
            return [note, *self._on_driver_down(DriverDown(ev.role, ev.now)), *self._driver_up(ev)]
        return self._driver_up(ev)

    def _driver_up(self, ev: DriverUp) -> list[Decision]:
        fields: dict[str, object] = {"role": ev.role, "again": ev.role in self._up}
        fault = self._faulted.get(ev.role)
        if fault is not None:
            if not ev.session or ev.session == fault[0]:
                why = "it reported a fatal fault; only a hello from a new session brings it back"
                return [
                    Note(
                        "driver_still_faulted",
                        {"role": ev.role, "code": fault[1], "reason": why},
                        "warning",
                    )
                ]
            del self._faulted[ev.role]
            fields["fault_cleared"] = fault[1]
        self._session[ev.role] = ev.session
        self._up[ev.role] = ev.now
        out: list[Decision] = [Note("driver_up", fields)]
        return out + self._maybe_run(ev.now)

    def _on_fault(self, ev: DriverFault) -> list[Decision]:
        """A ``warning`` or ``error`` is logged (the work it concerns is covered by the
        command timeouts and retries); a ``fatal`` fault of a required driver counts
        it down at once, as if it had gone silent, until it says hello from a new
        session: the campaign pauses and the pump goes to its safe state."""
        fields = {"role": ev.role, "code": ev.code, "severity": ev.severity, "detail": ev.detail}
        out: list[Decision] = [
            Note("driver_fault", fields, "warning" if ev.severity == "warning" else "error")
        ]
        if ev.severity != "fatal" or ev.role not in self.settings.required_roles:
            return out
        self._faulted[ev.role] = (self._session.get(ev.role, ""), ev.code)
        if ev.role in self._up:
            del self._up[ev.role]
            self._lost.add(ev.role)
            why = f"fatal fault {ev.code}"
            out.append(Note("driver_down", {"role": ev.role, "reason": why}, "warning"))
        return out + self._maybe_run(ev.now)

    def _on_driver_down(self, ev: DriverDown) -> list[Decision]:
        if ev.role not in self._up:
            return []
        del self._up[ev.role]
        self._lost.add(ev.role)
        out: list[Decision] = [Note("driver_down", {"role": ev.role}, "warning")]
        if ev.role in self.settings.required_roles:
            out += self._maybe_run(ev.now)
        return out

    def _resume(self, now: float) -> list[Decision]:
        """After a pause: if the pump was lost it sat at its safe flows, and if it was
        sent to its safe state it left the setpoint, so in both cases the active
        condition starts again (new attempt, new command id, its replicates so far
        dropped; not counted against the retry budget); else resend what is still
        unacknowledged, now. A safe state still unacknowledged is dropped: what the
        pump is sent next supersedes it."""
        lost, self._lost = self._lost, set()
        reason, self._lost_reason = self._lost_reason, "the pump was lost while it ran"
        if self._pump_safe:
            reason = self._pump_safe
        made_safe, self._pump_safe = bool(self._pump_safe), ""
        self._drop_safe_states()
        rec = self.conditions.get(self._active) if self._active else None
        restart = self.settings.pump_role in lost or made_safe
        if restart and rec is not None and rec.state != "queued":
            self._drop_pending(rec.condition)
            self._set_state(rec, "queued", now)
            note = Note(
                "condition_restarted",
                {"condition": rec.condition, "reason": reason},
                "warning",
            )
            return [note, *self._send_setpoint(rec, now)]
        out: list[Decision] = []
        for p in self._pending.values():
            p.sent_at = now
            p.interval = self.settings.resend_initial_s
            out.append(p.decision)
        return out

    def _on_setpoint_ack(self, ev: SetpointAcked) -> list[Decision]:
        p = self._pending.pop(ev.cmd_id, None)
        if p is None:
            return [Note("ack_ignored", {"cmd_id": ev.cmd_id, "reason": "no such pending command"})]
        if isinstance(p.decision, SendSafeState):
            return [Note("safe_state_acked", {"cmd_id": ev.cmd_id, "accepted": ev.accepted})]
        rec = self.conditions[p.decision.condition]
        if rec.cmd_id != ev.cmd_id or rec.state != "setting":
            return []
        if not ev.accepted:
            return self._fail(rec, ev.now, f"pump refused the setpoint: {ev.reason}")
        self._set_state(rec, "settling", ev.now)
        return [Note("setpoint_acked", {"condition": rec.condition, "cmd_id": ev.cmd_id})]

    def _on_acquire_ack(self, ev: AcquireAcked) -> list[Decision]:
        p = self._pending.pop(ev.cmd_id, None)
        if p is not None and ev.accepted:
            self._droplets_alive(p, ev.now)
        if p is None or ev.accepted:
            return []
        cid = getattr(p.decision, "condition", "")
        return [
            Note(
                "acquire_refused",
                {"cmd_id": ev.cmd_id, "condition": cid, "reason": ev.reason},
                "warning",
            )
        ]

    def _on_flow_stable(self, ev: FlowStable) -> list[Decision]:
        if self._active is None:
            return []
        rec = self.conditions[self._active]
        if ev.cmd_id != rec.cmd_id or rec.state not in ("setting", "settling"):
            return []
        self._pending.pop(rec.cmd_id, None)  # a stable readback implies the ack
        if rec.state == "setting":
            self._set_state(rec, "settling", ev.now)
        self._set_state(rec, "measuring", ev.now)
        s = self.settings
        rec.replicates = ConditionReplicates(
            rec.condition, s.replicates, s.loss, s.grid, started_at=ev.now
        )
        out: list[Decision] = [
            self._acquire(rec, s.spectrometer_role, s.replicates.per_acquire, ev.now)
        ]
        if s.label_role is not None and s.label_role in self._up:
            out.append(self._acquire(rec, s.label_role, 1, ev.now))
        return out

    def _on_spectrum(self, ev: SpectrumIn) -> list[Decision]:
        rec = self.conditions.get(ev.condition)
        if rec is None or rec.state != "measuring" or rec.replicates is None:
            why = "unknown condition" if rec is None else f"condition is {rec.state}, not measuring"
            return [_reject("spectrum", ev.condition, ev.replicate, "not_active", why)]
        if ev.acquire_id and ev.acquire_id not in self._attempt_acquires:
            return [_stale(rec, ev)]
        if self._pump_safe:  # droplets past the safe state are not of this recipe
            why = f"{self._pump_safe}; this attempt starts again when the campaign resumes"
            return [_reject("spectrum", ev.condition, ev.replicate, "pump_safe", why)]
        verdict = rec.replicates.add(ev.replicate, ev.values, ev.wl_start, ev.wl_step, ev.now)
        rec.droplets_since = max(rec.droplets_since, ev.now)
        out: list[Decision] = []
        if isinstance(verdict, Rejected):
            out.append(
                _reject("spectrum", ev.condition, ev.replicate, verdict.code, verdict.reason)
            )
        reps = rec.replicates  # outliers are re-judged as droplets come in
        rec.n_rejected = reps.n_outliers  # counts only: status() copies the used spectra
        if reps.complete:
            return out + self._complete(rec, ev.now)
        if reps.n_received + reps.n_invalid >= rec.n_requested:
            more = rec.replicates.need_more()
            if more > 0:
                out.append(self._acquire(rec, self.settings.spectrometer_role, more, ev.now))
        return out

    def _on_label(self, ev: PhaseLabelIn) -> list[Decision]:
        rec = self.conditions.get(ev.condition)
        if rec is None:
            return [
                _reject("phase_label", ev.condition, -1, "unknown_condition", "unknown condition")
            ]
        bad = label_problem(ev.phase, ev.confidence, self.settings.phase)
        if bad is not None:
            return [_reject("phase_label", ev.condition, -1, *bad)]
        before = rec.phase
        rec.labels.append((ev.phase, ev.confidence))
        self._awaiting_label.pop(rec.condition, None)
        fields: dict[str, object] = {
            "condition": ev.condition,
            "phase": ev.phase,
            "confidence": ev.confidence,
            "round": rec.round,
            "condition_state": rec.state,
            "rounds_late": self.round - rec.round,
        }
        if rec.unlabelled:
            rec.unlabelled = False
            fields["after_timeout"] = True
        level = "info"
        if before is not None and before[0] != ev.phase:
            # both labels are kept; the more confident one is used
            fields["contradicts"] = before[0]
            fields["contradicts_confidence"] = before[1]
            fields["using"] = rec.phase[0] if rec.phase else ev.phase
            level = "warning"
        return [Note("phase_label", fields, level)]

    def _check_labels(self, now: float) -> list[Decision]:
        """Mark completed conditions whose label is overdue as unlabelled (kept as data)."""
        out: list[Decision] = []
        for cid, deadline in list(self._awaiting_label.items()):
            if now < deadline:
                continue
            del self._awaiting_label[cid]
            rec = self.conditions[cid]
            if rec.labels:
                continue
            rec.unlabelled = True
            fields = {
                "condition": cid,
                "round": rec.round,
                "timeout_s": self.settings.phase.label_timeout_s,
            }
            out.append(Note("phase_unlabelled", fields, "warning"))
        return out

    def _release_finished(self) -> None:
        """Drop the replicates (every used droplet's spectrum) of the conditions
        finished by the previous event: the outcome is on the record and the
        droplets are in the journal. A restored campaign has none either."""
        for rec in self._finished:
            if rec.state in ("complete", "failed"):
                rec.replicates = None
        self._finished.clear()

    def _drop_pending(self, condition: str) -> None:
        for cmd_id, p in list(self._pending.items()):
            if getattr(p.decision, "condition", None) == condition:
                del self._pending[cmd_id]

    def _best_condition(self) -> str:
        """Id of the live condition with the lowest median loss ("" if none)."""
        done = [c for c in self.conditions.values() if c.median_loss is not None]
        return min(done, key=lambda c: float(c.median_loss)).condition if done else ""  # type: ignore[arg-type]

    def _box(self) -> dict[str, list[float]]:
        return {p.name: [p.lower, p.upper] for p in self.space.parameters}


_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "queued": ("setting",),
    "setting": ("settling", "failed", "queued"),
    "settling": ("measuring", "failed", "queued"),
    "measuring": ("complete", "failed", "queued"),
    "complete": (),
    "failed": (),
}


# The highest replicate index a spectrum may carry (protocols.messages.MAX_REPLICATE).
_MAX_REPLICATE = 100_000
# Bounds of the campaign_stopped status message (protocols.messages.CampaignStopped).
_MAX_NAME = 64
_MAX_TEXT = 2000
_MAX_NUMBERS = 64
_NUMBER_KEY = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


def _finite_metrics(raw: object) -> dict[str, float]:
    """The finite real numbers of a strategy's ``notes["metrics"]`` (else nothing)."""
    if not isinstance(raw, Mapping):
        return {}
    out: dict[str, float] = {}
    for key, value in raw.items():
        if isinstance(key, str) and isinstance(value, int | float) and not isinstance(value, bool):
            if math.isfinite(float(value)):
                out[key] = float(value)
    return out


def _wire_numbers(numbers: Mapping[str, float]) -> dict[str, float]:
    """A stop reason's numbers within the status message's bounds: finite values,
    well-formed keys, at most 64 of them (the first ones)."""
    out: dict[str, float] = {}
    for key, value in numbers.items():
        if len(out) >= _MAX_NUMBERS:
            break
        if _NUMBER_KEY.match(key) and math.isfinite(float(value)):
            out[key] = float(value)
    return out


def _reject(kind: str, condition: str, replicate: int, code: str, why: str) -> Note:
    return Note(
        "message_rejected",
        {"kind": kind, "condition": condition, "replicate": replicate, "code": code, "reason": why},
        "warning",
    )


def _stale(rec: ConditionRecord, ev: SpectrumIn) -> Note:
    """The rejection of a droplet that answers an acquire not of ``rec``'s measuring attempt."""
    why = (
        f"droplet of acquire {ev.acquire_id}, not an acquire of attempt {rec.attempt} "
        f"(setpoint {rec.cmd_id}): an abandoned attempt's droplets do not count for this one"
    )
    fields: dict[str, object] = {
        "kind": "spectrum",
        "condition": ev.condition,
        "replicate": ev.replicate,
        "code": "stale_attempt",
        "reason": why,
        "acquire_id": ev.acquire_id,
    }
    return Note("message_rejected", fields, "warning")


def _expansion_fields(ch: Any, round_no: int) -> dict[str, object]:
    return {
        "round": round_no,
        "parameter": ch.parameter,
        "face": ch.face,
        "old_bounds": list(ch.old_bounds),
        "new_bounds": list(ch.new_bounds),
        "reason": ch.reason,
    }
