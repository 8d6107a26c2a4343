"""What goes into the campaign state machine, and what comes out.

Events are facts the shell observed (a message arrived, time passed); decisions
are what the core wants done (send a command, announce a status, log a
rejection). Both are small immutable value classes (h11's ``_events.py``).
Plain Python and numpy only: the shell turns decisions into wire messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "AcquireAcked",
    "Announce",
    "Decision",
    "DriverDown",
    "DriverFault",
    "DriverUp",
    "Event",
    "FlowStable",
    "Note",
    "PhaseLabelIn",
    "ProposalFailed",
    "ProposalReady",
    "RequestProposal",
    "SendAcquire",
    "SendSafeState",
    "SendSetpoint",
    "SetpointAcked",
    "SpectrumIn",
    "Tick",
]


# --- events (shell -> core) --------------------------------------------------


@dataclass(frozen=True)
class Tick:
    """Time passed; the core checks its timers."""

    now: float


@dataclass(frozen=True)
class DriverUp:
    """A driver said hello (again); ``session`` is the one its hello carried."""

    role: str
    now: float
    session: str = ""


@dataclass(frozen=True)
class DriverDown:
    """A driver went silent past its heartbeat timeout."""

    role: str
    now: float


@dataclass(frozen=True)
class DriverFault:
    """A driver reported a fault (``severity``: ``warning``, ``error`` or ``fatal``)."""

    role: str
    code: str
    severity: str
    detail: str
    now: float


@dataclass(frozen=True)
class SetpointAcked:
    cmd_id: str
    accepted: bool
    reason: str
    now: float


@dataclass(frozen=True)
class AcquireAcked:
    cmd_id: str
    accepted: bool
    reason: str
    now: float


@dataclass(frozen=True)
class FlowStable:
    """The pump reports the flows of ``cmd_id`` settled."""

    cmd_id: str
    condition: str
    now: float


@dataclass(frozen=True)
class SpectrumIn:
    """One replicate spectrum arrived; ``acquire_id`` is the ``cmd_id`` of the
    acquire it answers ("" when the instrument did not say)."""

    condition: str
    replicate: int
    values: np.ndarray
    wl_start: float
    wl_step: float
    now: float
    source: str = "spectrometer"
    acquire_id: str = ""


@dataclass(frozen=True)
class PhaseLabelIn:
    condition: str
    phase: str
    confidence: float
    now: float
    source: str = "xrd"


@dataclass(frozen=True)
class ProposalReady:
    """The batch the shell computed with :meth:`Campaign.propose_batch`."""

    batch: Any  # agent.core.strategies.base.Batch
    notes: dict[str, object]
    now: float


@dataclass(frozen=True)
class ProposalFailed:
    reason: str
    now: float


Event = (
    Tick
    | DriverUp
    | DriverDown
    | DriverFault
    | SetpointAcked
    | AcquireAcked
    | FlowStable
    | SpectrumIn
    | PhaseLabelIn
    | ProposalReady
    | ProposalFailed
)


# --- decisions (core -> shell) -------------------------------------------------


@dataclass(frozen=True)
class SendSetpoint:
    """Send (or resend, same ``cmd_id``) a setpoint to the pump."""

    cmd_id: str
    condition: str
    flows: dict[str, float]
    attempt: int


@dataclass(frozen=True)
class SendAcquire:
    """Send (or resend, same ``cmd_id``) an acquire; ``first`` is the replicate
    index of its first droplet (None: the instrument numbers them, e.g. a label)."""

    cmd_id: str
    role: str
    condition: str
    n: int
    attempt: int
    first: int | None = None


@dataclass(frozen=True)
class SendSafeState:
    cmd_id: str
    reason: str
    attempt: int


@dataclass(frozen=True)
class Announce:
    """Publish a status event for monitors; ``kind`` is a protocols status kind."""

    kind: str
    fields: dict[str, object]


@dataclass(frozen=True)
class Note:
    """A structured log record: ``event`` name plus key/value fields.

    ``level`` is ``info``, ``warning`` or ``error``. Rejections carry
    ``reason`` and ``code`` fields.
    """

    event: str
    fields: dict[str, object] = field(default_factory=dict)
    level: str = "info"


@dataclass(frozen=True)
class RequestProposal:
    """Compute the next round (``Campaign.propose_batch``, CPU-heavy) and feed back
    :class:`ProposalReady` or :class:`ProposalFailed`."""

    round: int


Decision = RequestProposal | SendSetpoint | SendAcquire | SendSafeState | Announce | Note
