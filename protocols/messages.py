"""The wire contract: every message that crosses the bus.

One discriminated union on ``kind``; every model is frozen, forbids extra
fields and bounds every field. Each message carries the envelope fields:

=============  ==============================================================
``v``          schema version (:data:`SCHEMA_VERSION`)
``msg_id``     unique id of this message (hex, <= 64 chars)
``source``     who sent it (``pump``, ``spectrometer``, ``xrd``, ``agent`` ...)
``seq``        per-source, per-socket sequence number, from 0, +1 a message
``ts``         sender's wall-clock time, seconds since the Unix epoch
``campaign``   campaign id ("" before a driver has been told one)
=============  ==============================================================

Messages hold data only: no behaviour, no live objects, no arrays. A
spectrum's values are the one binary field: the raw little-endian float64
bytes that travel in their own frame (since schema version 3, ``codec.py``).

>>> msg = Heartbeat(msg_id="ab12", source="pump", seq=3, ts=1.0, campaign="c1")
>>> msg.kind
'heartbeat'
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationInfo,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

__all__ = [
    "COMMAND_KINDS",
    "MAX_CHANNELS",
    "MAX_REPLICATE",
    "MAX_SPECTRUM_POINTS",
    "MAX_STOP_NUMBERS",
    "MAX_STOP_RULES",
    "MESSAGE_ADAPTER",
    "SCHEMA_VERSION",
    "STATUS_KINDS",
    "VALUES_DTYPE",
    "Acquire",
    "AcquireAck",
    "ActiveCondition",
    "BoundaryExpanded",
    "CampaignStatus",
    "CampaignStopped",
    "ConditionComplete",
    "ConditionProgress",
    "Fault",
    "FlowReadback",
    "Heartbeat",
    "Hello",
    "Message",
    "PhaseLabel",
    "Proposal",
    "ProposedCondition",
    "Role",
    "RoundComplete",
    "SafeState",
    "Setpoint",
    "SetpointAck",
    "Spectrum",
    "StopCloseness",
    "new_id",
]

SCHEMA_VERSION = 4
#: A spectrum's values on the wire (its third frame): little-endian IEEE 754 float64.
VALUES_DTYPE = np.dtype("<f8")
MAX_SPECTRUM_POINTS = 8192
MAX_CHANNELS = 32
MAX_REPLICATE = 100_000  # the highest replicate index a spectrum may carry
MAX_STOP_NUMBERS = 64  # numbers behind a stop reason (campaign_stopped)
MAX_CONDITIONS_PER_PROPOSAL = 1000
MAX_STOP_RULES = 64  # closeness entries in a campaign_status

Role = Literal["pump", "spectrometer", "xrd", "agent", "monitor"]

# Bounded scalar types shared by the models.
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]
OptName = Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9_.:\-]*$")]
Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]
Text = Annotated[str, Field(max_length=2000)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
NonNeg = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=2**53)]


def new_id() -> str:
    """A fresh message or command id (32 hex characters)."""
    return uuid.uuid4().hex


class _Message(BaseModel):
    """The envelope every message carries."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    v: Literal[4] = SCHEMA_VERSION
    msg_id: Id
    source: Name
    seq: Count
    ts: NonNeg
    campaign: OptName = ""


# --- lifecycle ---------------------------------------------------------------


class Hello(_Message):
    """A peer announces itself; sent on connect and again after a restart.

    ``session`` changes at every start of the process, so a receiver can tell a
    restart (sequence numbers begin again at 0) from a replay.
    """

    kind: Literal["hello"] = "hello"
    role: Role
    session: Id
    instrument: Text = ""


class Heartbeat(_Message):
    """Liveness, both ways, every ``heartbeat_interval`` seconds."""

    kind: Literal["heartbeat"] = "heartbeat"
    state: Annotated[str, Field(max_length=32)] = "ok"


class Fault(_Message):
    """A driver reports a fault it cannot recover from by itself."""

    kind: Literal["fault"] = "fault"
    code: Name
    detail: Text = ""
    severity: Literal["warning", "error", "fatal"] = "error"


# --- commands (agent -> driver, acknowledged) ----------------------------------


class Setpoint(_Message):
    """Set the pump's channel flows (uL/min) for one condition.

    Resent with the same ``cmd_id`` until acknowledged; the pump applies a
    ``cmd_id`` at most once and answers every copy with the same ack.
    """

    kind: Literal["setpoint"] = "setpoint"
    cmd_id: Id
    condition: Id
    flows: Annotated[dict[Name, NonNeg], Field(min_length=1, max_length=MAX_CHANNELS)]


class SafeState(_Message):
    """Put the pump in its configured safe state (flows to zero, or purge)."""

    kind: Literal["safe_state"] = "safe_state"
    cmd_id: Id
    reason: Text = ""


class SetpointAck(_Message):
    """The pump's answer to a :class:`Setpoint` or :class:`SafeState`.

    ``accepted`` is false when the pump refused the command (``reason`` says
    why, e.g. a channel outside its hard limits); a refused command is not
    applied and is not retried.
    """

    kind: Literal["setpoint_ack"] = "setpoint_ack"
    cmd_id: Id
    accepted: bool
    reason: Text = ""


class Acquire(_Message):
    """Ask an instrument for ``n`` replicate measurements of ``condition``.

    ``first`` is the replicate index of the first of them (the next ``n - 1``
    follow it), chosen by the agent so that a restarted instrument does not
    number its droplets from 0 again; ``None`` (null or absent): the instrument numbers
    them itself, counting up per condition.
    """

    kind: Literal["acquire"] = "acquire"
    cmd_id: Id
    condition: Id
    n: Annotated[int, Field(ge=1, le=1000)] = 1
    first: Annotated[int, Field(ge=0, le=MAX_REPLICATE)] | None = None


class AcquireAck(_Message):
    """An instrument's answer to :class:`Acquire` (same de-duplication rules)."""

    kind: Literal["acquire_ack"] = "acquire_ack"
    cmd_id: Id
    accepted: bool
    reason: Text = ""


# --- measurements (driver -> agent, published) ---------------------------------


class FlowReadback(_Message):
    """What the pump's channels actually deliver; ``stable`` once settled."""

    kind: Literal["flow_readback"] = "flow_readback"
    cmd_id: OptName = ""
    condition: OptName = ""
    flows: Annotated[dict[Name, NonNeg], Field(max_length=MAX_CHANNELS)]
    stable: bool


def _spectrum_values(value: object, info: ValidationInfo) -> bytes:
    """A spectrum's values as raw :data:`VALUES_DTYPE` bytes, checked.

    From the wire (JSON mode) they are not in the body but in the frame after it,
    which the codec passes as ``context={"values": frame}``; in Python they may be
    given as those bytes or as numbers (a sequence or a 1-D array), packed here.
    Either way: ``n_points`` values (``8 * n_points`` bytes), every one finite.
    """
    if info.mode == "json":
        if value is not _NO_VALUES:
            raise PydanticCustomError(
                "values_in_body",
                "the values travel in the frame after the body (since schema version 3), not in it",
            )
        value = (info.context or {}).get("values")
        if value is None:
            raise PydanticCustomError(
                "values_frame_missing", "a spectrum needs its values frame after the body"
            )
        blob = bytes(value)
    elif isinstance(value, bytes | bytearray | memoryview):
        blob = bytes(value)
    else:
        try:
            array = np.asarray(value, dtype=VALUES_DTYPE)
        except (TypeError, ValueError) as exc:
            raise PydanticCustomError(
                "float_type", "values must be numbers ({e})", {"e": str(exc)}
            ) from None
        if array.ndim != 1:
            raise PydanticCustomError("list_type", "values must be one sequence of numbers")
        blob = array.tobytes()
    size = VALUES_DTYPE.itemsize
    n_points = info.data.get("n_points")
    if len(blob) % size:
        raise PydanticCustomError(
            "wrong_length",
            "n_points={n_points} but the values frame has {nbytes} bytes, not a whole number "
            "of {size}-byte little-endian float64",
            {"n_points": n_points, "nbytes": len(blob), "size": size},
        )
    if n_points is not None and len(blob) != n_points * size:
        raise PydanticCustomError(
            "wrong_length",
            "n_points={n_points} but {count} values were sent ({nbytes} bytes of "
            "little-endian float64)",
            {"n_points": n_points, "count": len(blob) // size, "nbytes": len(blob)},
        )
    array = np.frombuffer(blob, dtype=VALUES_DTYPE)
    finite = np.isfinite(array)
    if not finite.all():
        index = int(np.argmin(finite))
        raise PydanticCustomError(
            "finite_number", "non-finite number at values.{index}", {"index": index}
        )
    if not 2 <= array.size <= MAX_SPECTRUM_POINTS:
        raise PydanticCustomError(
            "too_short" if array.size < 2 else "too_long",
            "a spectrum has 2..{max} values, got {count}",
            {"max": MAX_SPECTRUM_POINTS, "count": array.size},
        )
    return blob


def _values_as_list(blob: bytes) -> list[float]:
    return np.frombuffer(blob, dtype=VALUES_DTYPE).tolist()


_NO_VALUES = b""  # the default: only seen when the values are not in the body
SpectrumValues = Annotated[
    SkipJsonSchema[bytes],
    BeforeValidator(_spectrum_values),
    PlainSerializer(_values_as_list, return_type=list[float], when_used="json"),
]


class Spectrum(_Message):
    """One replicate (one droplet) of a UV-Vis absorbance spectrum.

    ``values`` are ``n_points`` absorbances, the one at ``wl_start + i * wl_step``
    nm at index ``i``, held as the raw little-endian float64 bytes that travel as
    the message's third frame (not in the JSON body; :func:`protocols.codec.encode`).
    Give them as numbers or as those bytes; read them with
    :func:`protocols.codec.spectrum_array`. ``model_dump(mode="json")`` shows them
    as a list of numbers.

    ``acquire_id`` is the ``cmd_id`` of the :class:`Acquire` the droplet answers,
    so that the agent can turn away droplets of an attempt it abandoned; ``""``
    (absent): not said, the droplet counts for whatever attempt is measuring.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "x-values-frame": {
                "frame": 2,
                "dtype": "float64",
                "byteorder": "little",
                "count": "n_points",
                "description": "the values are not in this JSON body but in the next "
                "frame: n_points IEEE 754 doubles, little-endian, 8 * n_points bytes, "
                "all finite",
            }
        }
    )

    kind: Literal["spectrum"] = "spectrum"
    condition: Id
    replicate: Annotated[int, Field(ge=0, le=MAX_REPLICATE)]
    wl_start: Annotated[float, Field(gt=0.0, lt=100_000.0)]
    wl_step: Annotated[float, Field(gt=0.0, lt=1000.0)]
    n_points: Annotated[int, Field(ge=2, le=MAX_SPECTRUM_POINTS)]
    acquire_id: OptName = ""
    values: SpectrumValues = Field(default=_NO_VALUES, validate_default=True)


class PhaseLabel(_Message):
    """The XRD labeller's verdict on a condition; may arrive rounds later."""

    kind: Literal["phase_label"] = "phase_label"
    condition: Id
    phase: Name
    confidence: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


# --- agent status events (agent -> monitors, published) -------------------------


class ProposedCondition(BaseModel):
    """One recipe in a :class:`Proposal`."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    condition: Id
    recipe: Annotated[dict[Name, Finite], Field(max_length=MAX_CHANNELS)]
    strategy: Name


class Proposal(_Message):
    """The agent proposed a round of conditions."""

    kind: Literal["proposal"] = "proposal"
    round: Annotated[int, Field(ge=0)]
    conditions: Annotated[list[ProposedCondition], Field(max_length=MAX_CONDITIONS_PER_PROPOSAL)]


class ConditionComplete(_Message):
    """A condition's replicates are done: its median loss, or why it failed."""

    kind: Literal["condition_complete"] = "condition_complete"
    round: Annotated[int, Field(ge=0)]
    condition: Id
    status: Literal["complete", "failed"]
    n_used: Annotated[int, Field(ge=0)]
    n_rejected: Annotated[int, Field(ge=0)] = 0
    median_loss: Finite | None = None
    loss_sd: NonNeg | None = None
    reason: Text = ""


class RoundComplete(_Message):
    """Every condition of a round is complete or failed."""

    kind: Literal["round_complete"] = "round_complete"
    round: Annotated[int, Field(ge=0)]
    best_loss: Finite | None = None
    best_condition: OptName = ""
    n_complete: Annotated[int, Field(ge=0)]
    n_failed: Annotated[int, Field(ge=0)]


class BoundaryExpanded(_Message):
    """The search box was widened on one face."""

    kind: Literal["boundary_expanded"] = "boundary_expanded"
    round: Annotated[int, Field(ge=0)]
    parameter: Name
    face: Literal["lower", "upper"]
    old_bounds: tuple[Finite, Finite]
    new_bounds: tuple[Finite, Finite]
    reason: Text


class CampaignStopped(_Message):
    """The campaign stopped: which rule fired and the numbers behind it."""

    kind: Literal["campaign_stopped"] = "campaign_stopped"
    reason: Text
    rule: Name
    rounds: Annotated[int, Field(ge=0)]
    conditions: Annotated[int, Field(ge=0)]
    best_loss: Finite | None = None
    best_condition: OptName = ""
    numbers: Annotated[dict[Name, Finite], Field(max_length=MAX_STOP_NUMBERS)] = {}


class ConditionProgress(_Message):
    """A replicate of the condition being measured was filed (accepted or rejected).

    ``n_accepted`` replicates are used so far and ``n_rejected`` were turned
    away (outliers and invalid spectra); the replicate rule completes the
    condition at ``n_min`` used replicates at the earliest (once the median has
    settled) and at ``n_max`` at the latest. ``median_loss`` is the running
    median of the used ones; ``elapsed_s`` counts from the start of measuring.
    """

    kind: Literal["condition_progress"] = "condition_progress"
    round: Annotated[int, Field(ge=0)]
    condition: Id
    n_accepted: Count
    n_rejected: Count
    n_min: Annotated[int, Field(ge=1, le=100_000)]
    n_max: Annotated[int, Field(ge=1, le=100_000)]
    median_loss: Finite | None = None
    complete: bool = False
    elapsed_s: NonNeg


class ActiveCondition(BaseModel):
    """A condition of the current round that is being set or measured."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    condition: Id
    state: Literal["setting", "settling", "measuring"]
    n_accepted: Count = 0
    n_rejected: Count = 0


class StopCloseness(BaseModel):
    """How far one stop rule (or one all-of group) is from firing.

    ``fraction`` is 0..1 and exactly 1 when the rule fires; ``numbers`` are its
    inputs and thresholds (keys as in ``campaign_stopped``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    rule: Name
    fraction: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
    numbers: Annotated[dict[Name, Finite], Field(max_length=MAX_STOP_NUMBERS)] = {}


class CampaignStatus(_Message):
    """A snapshot of the campaign for monitors: every ``status_interval_s`` and at
    every round change.

    ``round`` is the current round (1-based; 0 before the first proposal),
    ``rounds_complete`` how many are done; ``conditions_done`` of
    ``conditions_total`` conditions of the current round are complete or failed.
    ``best_loss`` is the lowest median loss of any complete condition so far and
    ``best_condition`` its id; ``box`` the search box per parameter now;
    ``active`` the conditions being set or measured; ``stop`` how close each stop
    rule is to firing (an all-of group is one entry); ``elapsed_s`` the campaign
    time since start (None before it started).
    """

    kind: Literal["campaign_status"] = "campaign_status"
    state: Literal["waiting", "running", "paused", "stopped"]
    round: Annotated[int, Field(ge=0)]
    rounds_complete: Annotated[int, Field(ge=0)]
    conditions_done: Annotated[int, Field(ge=0)]
    conditions_total: Annotated[int, Field(ge=0)]
    best_loss: Finite | None = None
    best_condition: OptName = ""
    box: Annotated[dict[Name, tuple[Finite, Finite]], Field(max_length=MAX_CHANNELS)]
    active: Annotated[list[ActiveCondition], Field(max_length=MAX_CONDITIONS_PER_PROPOSAL)] = []
    stop: Annotated[list[StopCloseness], Field(max_length=MAX_STOP_RULES)] = []
    elapsed_s: NonNeg | None = None


Message = Annotated[
    Hello
    | Heartbeat
    | Fault
    | Setpoint
    | SafeState
    | SetpointAck
    | Acquire
    | AcquireAck
    | FlowReadback
    | Spectrum
    | PhaseLabel
    | Proposal
    | ConditionComplete
    | RoundComplete
    | BoundaryExpanded
    | CampaignStopped
    | ConditionProgress
    | CampaignStatus,
    Field(discriminator="kind"),
]

MESSAGE_ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)

COMMAND_KINDS = frozenset({"setpoint", "safe_state", "acquire"})
STATUS_KINDS = frozenset(
    {
        "proposal",
        "condition_complete",
        "round_complete",
        "boundary_expanded",
        "campaign_stopped",
        "condition_progress",
        "campaign_status",
    }
)
