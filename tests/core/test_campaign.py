"""The campaign state machine, driven directly and synchronously (no sockets)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from agent.core.campaign import Campaign, CampaignError, Result, TellError
from agent.core.events import (
    AcquireAcked,
    Announce,
    Decision,
    DriverDown,
    DriverFault,
    DriverUp,
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
from agent.core.history import RoundProposed, SetpointAnswered, SetpointSent
from agent.core.replicates import ReplicateSettings
from agent.core.stopping import AllOf, AnyOf, MaxRounds, StopReason, WallTime
from agent.core.strategies.lhs import LatinHypercube
from agent.core.testing import SilentDriverLab, ToyLab, toy_settings, toy_spectrum
from protocols import messages as m

ROLES = ("pump", "spectrometer", "xrd")


def of(decisions, kind):
    return [d for d in decisions if isinstance(d, kind)]


def settle(c: Campaign, decisions: list, now: float = 0.0) -> list:
    """Carry out proposal requests at once, as the shell's worker thread would."""
    out = []
    for d in decisions:
        out.append(d)
        if isinstance(d, RequestProposal):
            batch, notes = c.propose_batch()
            out += settle(c, c.handle(ProposalReady(batch, notes, now)), now)
    return out


def up(c: Campaign, now: float = 0.0) -> list:
    """Start ``c`` and bring every driver up; returns the decisions (proposals carried out)."""
    out = settle(c, c.start(now), now)
    for role in ROLES:
        out += settle(c, c.handle(DriverUp(role, now)), now)
    return out


def announced(decisions, kind):
    return [d for d in decisions if isinstance(d, Announce) and d.kind == kind]


# --- offline ask/tell ----------------------------------------------------------


def test_ask_tell_runs_the_round_budget_and_stops():
    c = Campaign(toy_settings(rounds=3), seed=0)
    rounds = 0
    while not c.stopped:
        batch = c.ask()
        assert len(batch) == 4
        c.tell(batch, [Result(loss=(r["a"] - 0.7) ** 2) for r in batch])
        rounds += 1
    assert rounds == 3
    assert c.stop_reason.rule == "max_rounds"
    assert len(c.observations) == 12
    assert c.best[1] == pytest.approx(min(c.observations.loss))
    with pytest.raises(CampaignError):
        c.ask()


def test_ask_twice_returns_the_same_batch_and_seed_determines_it():
    a, b = Campaign(toy_settings(), seed=7), Campaign(toy_settings(), seed=7)
    assert a.ask() == a.ask() == b.ask()
    assert Campaign(toy_settings(), seed=8).ask() != b.ask()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda batch, res: (batch[:-1], res), "recipes but"),
        (lambda batch, res: (batch, [Result(loss=math.nan), *res[1:]]), "non-finite loss"),
        (lambda batch, res: (batch, [Result(loss=math.inf), *res[1:]]), "non-finite loss"),
        (lambda batch, res: (batch, [Result(loss=0.1, loss_sd=-1.0), *res[1:]]), "loss_sd"),
        (
            lambda batch, res: ([{**batch[0], "a": 5.0}, *batch[1:]], res),
            "outside hard limits",
        ),
        (lambda batch, res: ([{**batch[0], "a": 0.123456}, *batch[1:]], res), "not in the asked"),
        (lambda batch, res: ([{"a": 0.1}, *batch[1:]], res), "missing"),
        (
            lambda batch, res: (batch, [Result(loss=0.1, spectrum=np.array([np.nan])), *res[1:]]),
            "non-finite spectrum",
        ),
    ],
)
def test_bad_tell_is_rejected_and_changes_nothing(mutate, message):
    c = Campaign(toy_settings(), seed=0)
    batch = c.ask()
    results = [Result(loss=0.5) for _ in batch]
    bad_batch, bad_results = mutate(batch, results)
    with pytest.raises(TellError, match=message):
        c.tell(bad_batch, bad_results)
    assert len(c.observations) == 0 and c.rounds_complete == 0
    c.tell(batch, results)  # the good tell still works afterwards
    assert c.rounds_complete == 1


def test_tell_without_ask_is_an_error():
    with pytest.raises(TellError, match="without a pending ask"):
        Campaign(toy_settings(), seed=0).tell([], [])


# --- live: the whole loop -------------------------------------------------------


def test_no_command_before_every_required_driver_said_hello():
    c = Campaign(toy_settings(), seed=0)
    out = settle(c, c.start(0.0))
    out += settle(c, c.handle(DriverUp("pump", 0.0)))
    out += settle(c, c.handle(DriverUp("spectrometer", 0.0)))
    assert not of(out, SendSetpoint) and not of(out, SendAcquire)
    assert not of(out, RequestProposal)
    out = settle(c, c.handle(DriverUp("xrd", 0.0)))
    assert len(of(out, RequestProposal)) == 1
    assert len(of(out, SendSetpoint)) == 1
    assert len(announced(out, "proposal")) == 1


def test_live_campaign_runs_every_condition_once_and_stops_safely():
    c = Campaign(toy_settings(rounds=2), seed=1)
    lab = ToyLab(c, noise=0.001)
    lab.serve(lab.bring_up())
    assert c.stopped and c.stop_reason.rule == "max_rounds"
    assert len(c.conditions) == 8
    assert all(r.state == "complete" for r in c.conditions.values())
    assert len(announced(lab.log, "condition_complete")) == 8
    assert len(announced(lab.log, "round_complete")) == 2
    assert len(announced(lab.log, "campaign_stopped")) == 1
    setpoints = {d.cmd_id for d in of(lab.log, SendSetpoint)}
    assert len(setpoints) == 8  # one command id per condition, none reused
    assert len(of(lab.log, SendSafeState)) == 1
    assert all(r.phase == ("Ag-fcc", 0.9) for r in c.conditions.values())
    assert all(3 <= r.n_used <= 6 for r in c.conditions.values())
    assert len(c.observations) == 8


def test_unacked_setpoint_is_resent_with_the_same_id_and_backoff():
    c = Campaign(toy_settings(), seed=0)
    out = up(c)
    first = of(out, SendSetpoint)[0]
    times = []
    for i in range(1, 99):  # settle timeout is 5 s
        now = i * 0.05
        for role in ROLES:
            c.driver_seen(role, now)
        resent = of(c.handle(Tick(now)), SendSetpoint)
        if resent:
            assert resent[0].cmd_id == first.cmd_id
            times.append(now)
    gaps = np.diff([0.0, *times])
    assert len(times) >= 3
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(gaps))  # backing off
    for role in ROLES:
        c.driver_seen(role, 5.2)
    retry = of(c.handle(Tick(5.2)), SendSetpoint)  # never settled: a fresh attempt
    assert retry and retry[0].attempt == 2 and retry[0].cmd_id != first.cmd_id


def test_the_final_safe_state_is_resent_until_acked_and_nothing_else_is():
    c = Campaign(toy_settings(), seed=0)
    up(c)
    out = c.stop(0.1, "operator asked")
    safe = of(out, SendSafeState)
    assert len(safe) == 1 and c.stopped and c.awaiting_safe_state()
    resent = []
    for i in range(2, 60):
        now = i * 0.05
        for role in ROLES:
            c.driver_seen(role, now)
        got = c.handle(Tick(now))
        assert not of(got, SendSetpoint) and not of(got, SendAcquire)
        resent += of(got, SendSafeState)
    assert resent and all(d.cmd_id == safe[0].cmd_id for d in resent)
    c.handle(SetpointAcked(safe[0].cmd_id, True, "", 3.1))
    assert not c.awaiting_safe_state()
    for role in ROLES:
        c.driver_seen(role, 9.0)
    assert not of(c.handle(Tick(9.0)), SendSafeState)


def test_a_new_session_while_counted_up_is_a_restart_and_the_same_session_is_not():
    c = Campaign(toy_settings(), seed=0)
    start = settle(c, c.start(0.0), 0.0)
    for role in ROLES:
        start += settle(c, c.handle(DriverUp(role, 0.0, f"{role}-1")), 0.0)
    first = of(start, SendSetpoint)[0]
    c.handle(SetpointAcked(first.cmd_id, True, "", 0.1))
    again = c.handle(DriverUp("pump", 0.2, "pump-1"))  # a duplicate hello: nothing lost
    assert not [d for d in again if isinstance(d, Note) and d.event == "driver_restarted"]
    assert not of(again, SendSetpoint)
    out = c.handle(DriverUp("pump", 0.3, "pump-2"))  # restarted, at its safe flows
    events = [d.event for d in out if isinstance(d, Note)]
    assert events[:2] == ["driver_restarted", "driver_down"] and "driver_up" in events
    retry = of(out, SendSetpoint)
    assert retry and retry[0].condition == first.condition and retry[0].cmd_id != first.cmd_id
    assert c.is_up("pump") and c.state == "running"


def test_refused_setpoint_fails_the_condition_and_moves_on():
    c = Campaign(toy_settings(), seed=0)
    out = up(c)
    sp = of(out, SendSetpoint)[0]
    out = c.handle(SetpointAcked(sp.cmd_id, False, "channel a above 100", 0.1))
    done = announced(out, "condition_complete")[0]
    assert done.fields["status"] == "failed" and "channel a above 100" in done.fields["reason"]
    nxt = of(out, SendSetpoint)
    assert len(nxt) == 1 and nxt[0].condition != sp.condition


@pytest.mark.parametrize(
    ("event", "code"),
    [
        (SpectrumIn("r09-c01", 0, np.zeros(5), 400.0, 10.0, 0.2), "not_active"),
        (SpectrumIn("r01-c02", 0, np.zeros(5), 400.0, 10.0, 0.2), "not_active"),
    ],
)
def test_replicate_for_a_condition_that_is_not_measuring_is_rejected(event, code):
    c = Campaign(toy_settings(), seed=0)
    up(c)
    out = c.handle(event)
    notes = [d for d in out if isinstance(d, Note) and d.event == "message_rejected"]
    assert notes and notes[0].fields["code"] == code and notes[0].fields["reason"]


def test_wrong_grid_and_duplicates_are_rejected_with_reasons():
    c = Campaign(toy_settings(), seed=0)
    out = up(c)
    sp = of(out, SendSetpoint)[0]
    c.handle(SetpointAcked(sp.cmd_id, True, "", 0.1))
    c.handle(FlowStable(sp.cmd_id, sp.condition, 0.2))
    good = toy_spectrum(c.conditions[sp.condition].recipe)
    assert not c.handle(SpectrumIn(sp.condition, 0, good, 400.0, 10.0, 0.3))
    cases = [
        (SpectrumIn(sp.condition, 0, good, 400.0, 10.0, 0.4), "duplicate"),
        (SpectrumIn(sp.condition, 1, good[:4], 400.0, 10.0, 0.4), "wrong_grid"),
        (SpectrumIn(sp.condition, 2, good, 380.0, 1.0, 0.4), "wrong_grid"),
        (SpectrumIn(sp.condition, 3, good * np.nan, 400.0, 10.0, 0.4), "non_finite"),
    ]
    for event, code in cases:
        notes = [d for d in c.handle(event) if isinstance(d, Note)]
        assert notes[0].event == "message_rejected" and notes[0].fields["code"] == code
    assert c.conditions[sp.condition].replicates.status().n_used == 1  # nothing lost


def test_silent_driver_pauses_the_campaign_and_its_return_resumes_it():
    c = Campaign(toy_settings(), seed=0)
    out = up(c)
    sp = of(out, SendSetpoint)[0]
    out = c.handle(DriverDown("xrd", 1.0))
    assert c.state == "paused"
    assert not of(c.handle(Tick(2.0)), SendSetpoint)  # no setpoint while paused
    out = c.handle(DriverUp("xrd", 3.0))
    assert c.state == "running"
    again = of(out, SendSetpoint)  # the pump was sent to its safe state: a new attempt
    assert [d.condition for d in again] == [sp.condition] and again[0].cmd_id != sp.cmd_id


def test_a_setpoint_pending_when_the_drivers_come_up_is_resent_with_the_same_id():
    """The resume path that restarts nothing: a restored campaign whose setpoint was
    not yet acknowledged (the pump was not sent a safe state since)."""
    c = Campaign(toy_settings(), seed=0)
    sp = of(up(c), SendSetpoint)[0]
    c2 = Campaign.restore(
        toy_settings(), 0, [_round_fact(c, 1), SetpointSent(sp.condition, sp.cmd_id, 1)]
    )
    out = c2.start(10.0)
    for role in ROLES:
        out += c2.handle(DriverUp(role, 10.0, "s1"))
    assert [d.cmd_id for d in of(out, SendSetpoint)] == [sp.cmd_id]
    assert not of(out, SendSafeState)


def _round_fact(c: Campaign, round_no: int) -> RoundProposed:
    ids = [cid for cid, r in c.conditions.items() if r.round == round_no]
    x = c.space.to_array([c.conditions[cid].recipe for cid in ids])
    return RoundProposed(round_no, x, tuple(c.conditions[cid].strategy for cid in ids), {}, None)


def test_lost_pump_restarts_the_active_condition_with_a_new_command_id():
    c = Campaign(toy_settings(), seed=0)
    out = up(c)
    sp = of(out, SendSetpoint)[0]
    c.handle(SetpointAcked(sp.cmd_id, True, "", 0.1))
    c.handle(FlowStable(sp.cmd_id, sp.condition, 0.2))
    assert c.conditions[sp.condition].state == "measuring"
    c.handle(DriverDown("pump", 1.0))
    out = c.handle(DriverUp("pump", 2.0))  # the pump sat at its safe flows meanwhile
    again = of(out, SendSetpoint)
    assert [d.condition for d in again] == [sp.condition]
    assert again[0].cmd_id != sp.cmd_id and again[0].attempt == 2
    assert "condition_restarted" in [d.event for d in out if isinstance(d, Note)]
    assert c.conditions[sp.condition].timeouts == 0  # not counted against the retry budget


def notes(decisions, event):
    return [d for d in decisions if isinstance(d, Note) and d.event == event]


@pytest.mark.parametrize(
    ("role", "fault"),
    [("spectrometer", None), ("xrd", None), ("spectrometer", "lamp_failed"), ("pump", "stall")],
)
def test_a_driver_lost_mid_condition_sends_the_pump_safe_and_the_condition_restarts(role, fault):
    """Silent (heartbeat timeout) or a fatal fault: pause, the pump to its safe state
    (one command, named after the setpoint it supersedes, the reason naming the
    driver), nothing else while paused, then a new attempt of the condition that is
    not counted against its retry budget; the campaign ends with every condition once."""
    c = Campaign(toy_settings(rounds=2), seed=1)
    lab = SilentDriverLab(c, role=role, fault=fault, noise=0.001)
    lab.run()
    assert lab.dropped_out_at is not None
    assert c.stopped and c.stop_reason.rule == "max_rounds"
    assert [r.state for r in c.conditions.values()] == ["complete"] * 8
    setpoints = of(lab.log, SendSetpoint)
    assert len({d.cmd_id for d in setpoints}) == len(setpoints) == 9  # one restart
    first, again = [d for d in setpoints if d.condition == "r01-c02"]
    assert (first.attempt, again.attempt) == (1, 2)
    assert c.conditions["r01-c02"].timeouts == 0 and c.conditions["r01-c02"].attempt == 2
    safe = [d for d in of(lab.log, SendSafeState) if "paused" in d.reason]
    assert [d.cmd_id for d in safe] == [first.cmd_id + ".safe"]
    assert role in safe[0].reason and (fault is None or fault in safe[0].reason)
    paused = lab.log.index(notes(lab.log, "campaign_paused")[0])
    running = lab.log.index(notes(lab.log, "campaign_running")[1])
    between = lab.log[paused:running]
    assert of(between, SendSafeState) == safe
    assert not of(between, SendSetpoint) and not of(between, SendAcquire)
    restarted = notes(lab.log, "condition_restarted")
    assert [n.fields["condition"] for n in restarted] == ["r01-c02"]
    assert "safe state" in restarted[0].fields["reason"] and role in restarted[0].fields["reason"]


def test_silent_pump_gets_no_safe_state_it_cannot_hear():
    """The pump itself silent: it goes safe on its own (link loss); the agent sends
    it nothing and restarts the condition when it is back."""
    c = Campaign(toy_settings(rounds=1), seed=1)
    lab = SilentDriverLab(c, role="pump", noise=0.001)
    lab.run()
    assert c.stopped and all(r.state == "complete" for r in c.conditions.values())
    assert [d.reason for d in of(lab.log, SendSafeState)] == ["campaign stopped: max_rounds"]
    assert [n.fields["condition"] for n in notes(lab.log, "condition_restarted")] == ["r01-c02"]


def test_the_pause_safe_state_is_resent_until_acked_and_sent_once_per_setpoint():
    c = Campaign(toy_settings(), seed=0)
    sp = of(up(c), SendSetpoint)[0]
    c.handle(SetpointAcked(sp.cmd_id, True, "", 0.1))
    c.handle(FlowStable(sp.cmd_id, sp.condition, 0.2))
    out = c.handle(DriverDown("spectrometer", 1.0))
    assert c.state == "paused" and [d.cmd_id for d in of(out, SendSafeState)] == [
        sp.cmd_id + ".safe"
    ]
    resent = []
    for i in range(1, 40):
        now = 1.0 + i * 0.05
        c.driver_seen("pump", now)
        c.driver_seen("xrd", now)
        tick = c.handle(Tick(now))
        assert not of(tick, SendSetpoint) and not of(tick, SendAcquire)
        resent += [now for _ in of(tick, SendSafeState)]
    assert len(resent) >= 3  # resent with backoff while unanswered
    out = c.handle(SetpointAcked(sp.cmd_id + ".safe", True, "", 3.0))
    assert notes(out, "safe_state_acked")
    c.driver_seen("pump", 3.5)
    assert not of(c.handle(Tick(3.5)), SendSafeState)  # acked: no more
    assert not of(c.handle(DriverDown("xrd", 3.6)), SendSafeState)  # the pump is safe already


@pytest.mark.parametrize(
    ("severity", "role", "pauses"),
    [
        ("warning", "spectrometer", False),
        ("error", "spectrometer", False),
        ("error", "pump", False),
        ("fatal", "spectrometer", True),
        ("fatal", "pump", True),
        ("fatal", "camera", False),  # not a required driver
    ],
)
def test_only_a_fatal_fault_of_a_required_driver_pauses_until_a_hello_of_a_new_session(
    severity, role, pauses
):
    c = Campaign(toy_settings(), seed=0)
    c.start(0.0)
    for r in ROLES:
        settle(c, c.handle(DriverUp(r, 0.0, f"{r}-1")))
    sp = next(d for d in c._pending.values() if isinstance(d.decision, SendSetpoint)).decision
    out = c.handle(DriverFault(role, "boom", severity, "it broke", 0.5))
    logged = notes(out, "driver_fault")
    assert logged and logged[0].fields["code"] == "boom" and logged[0].fields["role"] == role
    assert logged[0].level == ("warning" if severity == "warning" else "error")
    assert c.is_faulted(role) is pauses
    assert c.state == ("paused" if pauses else "running")
    assert bool(of(out, SendSafeState)) is pauses
    if not pauses:
        return
    out = c.handle(DriverUp(role, 1.0, f"{role}-1"))  # the same session: still faulted
    assert notes(out, "driver_still_faulted") and c.state == "paused"
    out = c.handle(DriverUp(role, 2.0, f"{role}-2"))  # restarted
    assert c.state == "running" and not c.is_faulted(role)
    assert notes(out, "driver_up")[0].fields["fault_cleared"] == "boom"
    again = of(out, SendSetpoint)
    assert [d.condition for d in again] == [sp.condition] and again[0].attempt == 2


def test_heartbeat_timeout_marks_a_driver_down():
    c = Campaign(toy_settings(), seed=0)
    up(c)
    c.driver_seen("pump", 4.0)
    c.driver_seen("spectrometer", 4.0)
    out = c.handle(Tick(6.0))  # xrd last seen at 0.0, timeout 5.0
    assert [d.fields["role"] for d in out if isinstance(d, Note) and d.event == "driver_down"] == [
        "xrd"
    ]
    assert c.state == "paused"


def test_stalled_measurement_is_retried_once_then_failed():
    c = Campaign(toy_settings(), seed=0)
    out = up(c)
    sp = of(out, SendSetpoint)[0]
    c.handle(SetpointAcked(sp.cmd_id, True, "", 0.1))
    c.handle(FlowStable(sp.cmd_id, sp.condition, 0.2))

    def silence_until(t):
        for role in ROLES:
            c.driver_seen(role, t)
        return c.handle(Tick(t))

    out = silence_until(11.0)  # replicate timeout 10 s
    retry = of(out, SendSetpoint)
    assert len(retry) == 1 and retry[0].attempt == 2 and retry[0].cmd_id != sp.cmd_id
    assert retry[0].condition == sp.condition
    c.handle(SetpointAcked(retry[0].cmd_id, True, "", 11.1))
    c.handle(FlowStable(retry[0].cmd_id, sp.condition, 11.2))
    out = silence_until(22.0)
    done = announced(out, "condition_complete")
    assert done and done[0].fields["status"] == "failed"
    assert "timed out after 2 attempts" in done[0].fields["reason"]
    assert of(out, SendSetpoint)[0].condition != sp.condition  # moved on


class LossyLab(ToyLab):
    """Loses droplets 1 and 2 of every condition on the way (the first acquire's)."""

    def __init__(self, c: Campaign) -> None:
        super().__init__(c, idle_tick=0.25)
        self.final: dict = {}  # condition -> its replicates' status as it completed

    def delivered(self, condition: str, replicate: int) -> bool:
        return replicate not in (1, 2)

    def record(self, event, decisions, **kw) -> None:
        super().record(event, decisions, **kw)
        for cid, rec in self.c.conditions.items():  # a finished one drops its replicates next
            if rec.state == "complete" and rec.replicates is not None:
                self.final.setdefault(cid, rec.replicates.status())


def test_lost_droplets_are_asked_for_again_keeping_the_replicates_in_and_no_stall():
    c = Campaign(toy_settings(rounds=2, batch_size=3, replicates=LOSSY_RULE), seed=0)
    lab = LossyLab(c)
    lab.run()
    assert c.stopped and c.rounds_complete == 2
    missing = [d for d in lab.log if isinstance(d, Note) and d.event == "droplets_missing"]
    assert sorted(d.fields["condition"] for d in missing) == sorted(c.conditions)
    for d in missing:  # written off after the droplet timeout, not the stall timeout
        assert d.fields["missing"] == 2 and d.fields["attempt"] == 1
        assert 1.0 < d.fields["waited_s"] < 10.0
    for rec in c.conditions.values():
        assert rec.state == "complete" and rec.attempt == 1 and rec.timeouts == 0
        status = lab.final[rec.condition]
        kept = set(status.used) | {k for k, _, _ in status.outliers}
        assert 0 in kept and not kept & {1, 2}  # the first droplet was kept, none lost came
        assert status.n_received >= 3
    assert not [d for d in lab.log if isinstance(d, Note) and d.event == "condition_retry"]
    acquires = [d for d in of(lab.log, SendAcquire) if d.role == "spectrometer"]
    assert {d.attempt for d in acquires} == {1}  # asked again in the same attempt


def measuring(reps: ReplicateSettings) -> tuple[Campaign, SendSetpoint, list[Decision]]:
    """A campaign with the rule ``reps`` whose first condition is measuring (its
    setpoint acked at 0.1, its flow stable at 0.2), and what the flow made it decide."""
    c = Campaign(toy_settings(replicates=reps), seed=0)
    sp = of(up(c), SendSetpoint)[0]
    c.handle(SetpointAcked(sp.cmd_id, True, "", 0.1))
    return c, sp, c.handle(FlowStable(sp.cmd_id, sp.condition, 0.2))


#: a rule that writes droplets off after 1 s (its stall timeout is 10 s)
LOSSY_RULE = ReplicateSettings(
    min_count=3, max_count=6, per_acquire=3, settle_window=1, timeout_s=10.0,
    droplet_timeout_s=1.0,
)  # fmt: skip


def test_missing_droplets_wait_while_the_acquire_is_unacknowledged():
    c, sp, out = measuring(LOSSY_RULE)
    acq = next(d for d in of(out, SendAcquire) if d.role == "spectrometer")

    def tick(t):
        for role in ROLES:
            c.driver_seen(role, t)
        return c.handle(Tick(t))

    out = tick(2.0)  # no ack: the acquire is resent, nothing is written off
    assert [d.cmd_id for d in of(out, SendAcquire) if d.role == "spectrometer"] == [acq.cmd_id]
    assert not [d for d in out if isinstance(d, Note) and d.event == "droplets_missing"]
    c.handle(AcquireAcked(acq.cmd_id, True, "", 2.1))
    out = tick(2.9)  # acked 0.8 s ago: the droplets may still be on their way
    assert not [d for d in of(out, SendAcquire) if d.role == "spectrometer"]
    assert not of(out, Note)
    out = tick(3.2)  # nothing for 1.1 s since the ack: written off, asked for again
    asked = [d for d in of(out, SendAcquire) if d.role == "spectrometer"]
    assert len(asked) == 1 and asked[0].cmd_id != acq.cmd_id and asked[0].n == 3
    assert [d.fields["missing"] for d in out if isinstance(d, Note)] == [3]
    assert c.conditions[sp.condition].timeouts == 0


def test_late_and_contradicting_phase_labels_attach_to_their_condition():
    c = Campaign(toy_settings(rounds=3), seed=0)
    lab = ToyLab(c)
    lab.serve(lab.bring_up())
    first = c.conditions["r01-c01"]
    out = c.handle(PhaseLabelIn("r01-c01", "Ag2O", 0.95, 99.0))
    note = next(d for d in out if isinstance(d, Note))
    assert note.fields["contradicts"] == "Ag-fcc" and note.level == "warning"
    assert first.labels == [("Ag-fcc", 0.9), ("Ag2O", 0.95)]
    assert first.phase == ("Ag2O", 0.95)
    out = c.handle(PhaseLabelIn("nope", "Ag-fcc", 0.5, 99.0))
    assert [d.fields["code"] for d in out if isinstance(d, Note)] == ["unknown_condition"]


def test_illegal_transition_raises():
    c = Campaign(toy_settings(), seed=0)
    out = up(c)
    rec = c.conditions[of(out, SendSetpoint)[0].condition]
    with pytest.raises(CampaignError, match="illegal transition setting -> complete"):
        c._set_state(rec, "complete", 1.0)
    with pytest.raises(CampaignError):
        c.start(1.0)


class TimedLab(ToyLab):
    """A :class:`ToyLab` that notes the campaign time at which each round completed."""

    def __init__(self, campaign: Campaign) -> None:
        super().__init__(campaign, noise=0.001, seed=1)
        self.round_ends: list[float] = []

    def feed(self, event) -> list:
        out = super().feed(event)
        self.round_ends += [self.now for _ in announced(out, "round_complete")]
        return out


def test_live_wall_time_is_counted_from_start_and_checked_when_a_round_completes():
    # first run: when do the rounds end on this (deterministic) lab's clock?
    free = TimedLab(Campaign(toy_settings(rounds=3), seed=1))
    free.now = 5.0  # the campaign starts at 5 s on the shell's clock
    free.serve(free.bring_up())
    ends = [t - 5.0 for t in free.round_ends]
    assert len(ends) == 3 and ends[0] < ends[1] < ends[2]

    # a budget that runs out during round 2: the campaign ends with round 2
    budget = (ends[0] + ends[1]) / 2
    c = Campaign(toy_settings(stop_rule=AnyOf((WallTime(budget), MaxRounds(3)))), seed=1)
    lab = TimedLab(c)
    lab.now = 5.0
    lab.serve(lab.bring_up())
    assert c.stopped and c.rounds_complete == 2 and c.stop_reason.rule == "wall_time"
    assert c.stop_reason.numbers == pytest.approx({"elapsed_s": ends[1], "wall_time_s": budget})
    stopped = announced(lab.log, "campaign_stopped")[0].fields
    assert stopped["rule"] == "wall_time"
    assert stopped["numbers"] == pytest.approx({"elapsed_s": ends[1], "wall_time_s": budget})
    note = next(d for d in lab.log if isinstance(d, Note) and d.event == "campaign_stopped")
    assert note.fields["numbers"] == stopped["numbers"]


def test_campaign_stopped_carries_every_all_of_members_numbers_within_the_wire_bounds():
    class Planted:
        """A rule that fires with a long name, a non-finite and too many numbers."""

        def __call__(self, progress):
            numbers = {f"k{i}": float(i) for i in range(70)}
            numbers["nan"] = math.nan
            return StopReason("x" * 60, "planted", numbers)

    rule = AllOf((MaxRounds(1), Planted()))
    c = Campaign(toy_settings(stop_rule=rule), seed=0)
    lab = ToyLab(c)
    lab.serve(lab.bring_up())
    fields = announced(lab.log, "campaign_stopped")[0].fields
    assert c.stop_reason.rule == "all_of.max_rounds." + "x" * 60  # in full in the core
    assert fields["rule"] == c.stop_reason.rule[:64]  # cut to the wire's bound
    assert c.stop_reason.numbers["max_rounds.rounds"] == 1
    assert fields["numbers"]["max_rounds.rounds"] == 1.0
    assert len(fields["numbers"]) == m.MAX_STOP_NUMBERS
    assert all(math.isfinite(v) for v in fields["numbers"].values())
    env = {"msg_id": "s1", "seq": 0, "source": "agent", "ts": 1.0, "campaign": "toy"}
    msg = m.MESSAGE_ADAPTER.validate_python({"kind": "campaign_stopped", **fields, **env})
    assert msg.rule == fields["rule"]
    assert msg.numbers == fields["numbers"]


def test_failed_proposal_stops_the_campaign_with_its_reason():
    c = Campaign(toy_settings(), seed=0)
    c.start(0.0)
    for role in ROLES[:2]:
        c.handle(DriverUp(role, 0.0))
    out = c.handle(DriverUp("xrd", 0.0))
    assert of(out, RequestProposal)
    out = c.handle(ProposalFailed("feasible region is empty", 0.5))
    stopped = announced(out, "campaign_stopped")
    assert c.stopped and stopped[0].fields["rule"] == "no_proposal"
    assert "feasible region is empty" in stopped[0].fields["reason"]
    assert of(out, SendSafeState)


def test_a_proposal_nobody_asked_for_is_ignored():
    c = Campaign(toy_settings(), seed=0)
    batch, notes = c.propose_batch()
    out = c.handle(ProposalReady(batch, notes, 0.0))
    assert [d.event for d in out if isinstance(d, Note)] == ["proposal_ignored"]
    assert c.round == 0 and not c.conditions


def test_finished_conditions_drop_their_replicates_and_keep_their_outcome():
    """Memory: a finished condition keeps its median spectrum, not every droplet's;
    at any step at most the active condition and the one just finished hold replicates."""
    held: list[int] = []

    class Lab(ToyLab):
        def record(self, event, decisions, **kw) -> None:
            held.append(sum(r.replicates is not None for r in self.c.conditions.values()))

    lab = Lab(Campaign(toy_settings(rounds=4, batch_size=4), seed=0), noise=0.02, seed=3)
    lab.run()
    done = [r for r in lab.c.conditions.values() if r.state == "complete"]
    assert len(done) == 16 and max(held) <= 2
    lab.c.handle(Tick(lab.now + 0.01))  # the next event releases the last one
    assert all(r.replicates is None for r in done)
    assert all(r.median_spectrum is not None and r.n_used >= 1 for r in done)
    assert lab.c.observations.spectra.shape == (16, 5)  # what the strategies read is kept
    assert not lab.c._attempt_acquires  # the acquires of the last attempt were let go too


def test_an_acquire_refusal_still_names_its_condition_without_an_owner_map():
    c = Campaign(toy_settings(), seed=0)
    out = up(c)
    sp = of(out, SendSetpoint)[0]
    c.handle(SetpointAcked(sp.cmd_id, True, "", 0.1))
    acq = of(c.handle(FlowStable(sp.cmd_id, sp.condition, 0.2)), SendAcquire)[0]
    note = c.handle(AcquireAcked(acq.cmd_id, False, "busy", 0.3))[0]
    assert note.event == "acquire_refused" and note.fields["condition"] == sp.condition
    assert not hasattr(c, "_acquire_owner")  # no map keyed by command id that only grows


# --- attempts: droplets of an abandoned attempt, replicate numbering ------------------


def measure(c: Campaign, sp: SendSetpoint, now: float) -> SendAcquire:
    """Acknowledge ``sp`` and report the pump stable on it; the spectrometer's acquire."""
    c.handle(SetpointAcked(sp.cmd_id, True, "", now))
    out = c.handle(FlowStable(sp.cmd_id, sp.condition, now + 0.1))
    return next(d for d in of(out, SendAcquire) if d.role == "spectrometer")


def abandon_by_retry(c: Campaign, now: float) -> list:
    """The replicate rule's stall timeout (10 s) fires: the condition is retried."""
    for role in ROLES:
        c.driver_seen(role, now + 11.0)
    return c.handle(Tick(now + 11.0))


def abandon_by_pause(c: Campaign, now: float) -> list:
    """The spectrometer goes silent: pause, the pump to its safe state; it comes back
    (a new session) and the condition starts a new attempt."""
    c.handle(DriverDown("spectrometer", now))
    return c.handle(DriverUp("spectrometer", now + 1.0, "s2"))


def abandon_by_restart(c: Campaign, now: float) -> list:
    """The spectrometer restarts within the heartbeat timeout (a new session while up)."""
    c.handle(DriverUp("spectrometer", now, "s1"))
    return c.handle(DriverUp("spectrometer", now + 1.0, "s2"))


def rejected(decisions) -> list[Note]:
    return notes(decisions, "message_rejected")


@pytest.mark.parametrize(
    "abandon", [abandon_by_retry, abandon_by_pause, abandon_by_restart], ids=lambda f: f.__name__
)
def test_a_droplet_of_an_abandoned_attempt_is_rejected_as_stale_and_not_counted(abandon):
    c = Campaign(toy_settings(), seed=0)
    sp = of(up(c), SendSetpoint)[0]
    cid = sp.condition
    old = measure(c, sp, 0.1)
    good = toy_spectrum(c.conditions[cid].recipe)

    def droplet(k: int, acquire_id: str, now: float) -> list:
        return c.handle(SpectrumIn(cid, k, good, 400.0, 10.0, now, acquire_id=acquire_id))

    assert not droplet(0, old.cmd_id, 0.3)  # in its own attempt: counted
    again = of(abandon(c, 1.0), SendSetpoint)
    assert [d.condition for d in again] == [cid] and again[0].attempt == 2
    # while the new attempt is being set, any droplet is turned away, as before
    assert [n.fields["code"] for n in rejected(droplet(1, old.cmd_id, 12.1))] == ["not_active"]
    new = measure(c, again[0], 12.2)
    assert new.cmd_id != old.cmd_id and new.first == 0
    # the frozen spectrometer delivers the rest of the old acquire while the new one measures
    for k in (1, 2, 0):
        out = droplet(k, old.cmd_id, 12.5)
        (note,) = rejected(out)
        assert note.fields["code"] == "stale_attempt" and note.fields["acquire_id"] == old.cmd_id
        assert old.cmd_id in note.fields["reason"] and "attempt 2" in note.fields["reason"]
        assert note.level == "warning" and not of(out, SendAcquire)  # no droplet asked for
    (note,) = rejected(droplet(3, "somebody.else.a9.spectrometer.0", 12.6))
    assert note.fields["code"] == "stale_attempt"  # not an acquire of this attempt either
    reps = c.conditions[cid].replicates
    assert (reps.n_received, reps.n_invalid) == (0, 0)  # none counted, not even as invalid
    # the new attempt's own droplets count, index 0 again (a fresh rule), and one that
    # names no acquire (an older driver) counts for the attempt measuring, as before
    assert not droplet(0, new.cmd_id, 12.7)
    assert not c.handle(SpectrumIn(cid, 1, good, 400.0, 10.0, 12.8))
    assert c.conditions[cid].replicates.status().used == (0, 1)


def test_spectrometer_acquires_number_the_attempts_droplets_from_first():
    """``first`` counts every droplet asked for in the attempt (not those that came):
    droplets lost and asked for again get new indices; a new attempt, a fresh
    replicate rule, starts at 0 again. A label's acquire carries none."""
    c, sp, out = measuring(LOSSY_RULE)
    cid = sp.condition
    spec = [d for d in of(out, SendAcquire) if d.role == "spectrometer"]
    assert [(d.first, d.n) for d in spec] == [(0, 3)]
    assert [d.first for d in of(out, SendAcquire) if d.role == "xrd"] == [None]
    c.handle(AcquireAcked(spec[0].cmd_id, True, "", 0.2))
    good = toy_spectrum(c.conditions[cid].recipe)
    c.handle(SpectrumIn(cid, 0, good, 400.0, 10.0, 0.3, acquire_id=spec[0].cmd_id))
    for role in ROLES:  # droplets 1 and 2 were lost on the way
        c.driver_seen(role, 1.5)
    out = c.handle(Tick(1.5))
    asked = [d for d in of(out, SendAcquire) if d.role == "spectrometer"]
    assert notes(out, "droplets_missing") and len(asked) == 1
    assert asked[0].first == 3  # after every index asked for, not after the one that came
    assert asked[0].attempt == 1
    again = of(abandon_by_retry(c, 1.5), SendSetpoint)
    assert again[0].attempt == 2
    assert (measure(c, again[0], 13.0).first, c.conditions[cid].next_replicate) == (0, 3)


def test_a_restored_campaign_takes_droplets_of_acquires_from_before_the_restart_as_stale():
    """The journal holds no acquire: a condition that was measuring when the agent
    stopped starts a new attempt on restore, which knows only its own acquires."""
    c = Campaign(toy_settings(), seed=0)
    sp = of(up(c), SendSetpoint)[0]
    old = measure(c, sp, 0.1)
    facts = [_round_fact(c, 1), SetpointSent(sp.condition, sp.cmd_id, 1)]
    c2 = Campaign.restore(toy_settings(), 0, [*facts, SetpointAnswered(sp.cmd_id, True)])
    assert not c2._attempt_acquires and c2.conditions[sp.condition].next_replicate == 0
    out = c2.start(10.0)
    for role in ROLES:
        out += c2.handle(DriverUp(role, 10.0, "s1"))
    again = of(out, SendSetpoint)
    assert [d.attempt for d in again] == [2]
    new = measure(c2, again[0], 10.1)
    assert new.first == 0 and new.cmd_id != old.cmd_id
    good = toy_spectrum(c2.conditions[sp.condition].recipe)
    late = SpectrumIn(sp.condition, 1, good, 400.0, 10.0, 10.5, acquire_id=old.cmd_id)
    assert [n.fields["code"] for n in rejected(c2.handle(late))] == ["stale_attempt"]
    mine = SpectrumIn(sp.condition, 0, good, 400.0, 10.0, 10.6, acquire_id=new.cmd_id)
    assert not c2.handle(mine)


class SpectraSeen:
    """LHS that notes, at each proposal, whether it was given the median spectra;
    ``reads``: its ``reads_spectra`` (None: it has no such attribute)."""

    name = "seen"

    def __init__(self, reads: bool | None) -> None:
        if reads is not None:
            self.reads_spectra = reads
        self.seen: list[bool] = []
        self._lhs = LatinHypercube()

    def propose(self, space, data, n, rng):
        self.seen.append(data.spectra is not None)
        return self._lhs.propose(space, data, n, rng)


@pytest.mark.parametrize(
    ("reads", "given"),
    [(False, False), (True, True), (None, True)],  # None: no attribute, given them
)
def test_the_median_spectra_are_stacked_only_for_a_strategy_that_reads_them(reads, given):
    """Stacking the spectra copies every median spectrum so far at each round (the
    soak's RSS spikes); a strategy that says it never reads them is spared it."""
    initial, later = LatinHypercube(), SpectraSeen(reads)
    settings = toy_settings(rounds=3, initial_strategy=initial, strategy=later, initial_rounds=1)
    lab = ToyLab(Campaign(settings, seed=0), noise=0.02, seed=3)
    lab.run()
    assert later.seen == [given, given]  # rounds 2 and 3; round 1 had nothing to read
    assert lab.c.observations.spectra.shape == (12, 5)  # the public view still has them
