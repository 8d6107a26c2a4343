"""The message models: one example per kind builds, round-trips, is frozen and bounded."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from protocols.codec import decode, encode
from protocols.messages import (
    COMMAND_KINDS,
    MAX_CHANNELS,
    MAX_SPECTRUM_POINTS,
    MESSAGE_ADAPTER,
    SCHEMA_VERSION,
    STATUS_KINDS,
    Heartbeat,
    new_id,
)
from protocols.schema import example_messages, json_schemas, message_models, write_schemas

EXAMPLES = example_messages()
KINDS = sorted(EXAMPLES)
DOCS_SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def patched(kind: str, /, **changes: Any) -> dict[str, Any]:
    """The JSON-mode dump of the example of ``kind`` with ``changes`` applied."""
    data = EXAMPLES[kind].model_dump(mode="json")
    data.update(changes)
    return data


def without(kind: str, field: str) -> dict[str, Any]:
    data = EXAMPLES[kind].model_dump(mode="json")
    del data[field]
    return data


# --- every kind ------------------------------------------------------------------


def test_one_example_per_kind_of_the_union() -> None:
    union_kinds = set(MESSAGE_ADAPTER.json_schema()["discriminator"]["mapping"])
    assert set(EXAMPLES) == set(message_models()) == union_kinds
    assert COMMAND_KINDS <= union_kinds
    assert STATUS_KINDS <= union_kinds


@pytest.mark.parametrize("kind", KINDS)
def test_example_builds_with_envelope(kind: str) -> None:
    msg = EXAMPLES[kind]
    assert msg.kind == kind
    assert msg.v == SCHEMA_VERSION
    assert isinstance(msg, message_models()[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_through_the_codec_is_exact(kind: str) -> None:
    msg = EXAMPLES[kind]
    frames = encode(msg)
    assert frames[0] == f"{kind}.{msg.source}".encode()
    back = decode(frames)
    assert back == msg
    assert type(back) is type(msg)
    assert encode(back) == frames


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_through_python_dump(kind: str) -> None:
    msg = EXAMPLES[kind]
    assert MESSAGE_ADAPTER.validate_python(msg.model_dump()) == msg
    assert MESSAGE_ADAPTER.validate_python(msg.model_dump(mode="json")) == msg
    # a spectrum's values are not in its JSON body but in the frame the codec passes
    data = msg.model_dump(mode="json", exclude={"values"})
    context = {"values": msg.values} if kind == "spectrum" else None
    assert MESSAGE_ADAPTER.validate_json(json.dumps(data), context=context) == msg


@pytest.mark.parametrize("kind", KINDS)
def test_models_are_frozen(kind: str) -> None:
    msg = EXAMPLES[kind]
    with pytest.raises(ValidationError, match="frozen"):
        msg.seq = 99  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        msg.source = "intruder"  # type: ignore[misc]
    assert msg == EXAMPLES[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_models_forbid_extra_fields(kind: str) -> None:
    with pytest.raises(ValidationError) as info:
        MESSAGE_ADAPTER.validate_python(patched(kind, colour="blue"))
    assert [e["type"] for e in info.value.errors()] == ["extra_forbidden"]


@pytest.mark.parametrize("kind", KINDS)
def test_kind_selects_the_model(kind: str) -> None:
    other = "heartbeat" if kind != "heartbeat" else "hello"
    with pytest.raises(ValidationError):
        MESSAGE_ADAPTER.validate_python(patched(kind, kind=other))


def test_nested_models_forbid_extra_fields() -> None:
    data = patched("proposal")
    data["conditions"][0]["note"] = "x"
    with pytest.raises(ValidationError, match=r"conditions\.0\.note"):
        MESSAGE_ADAPTER.validate_python(data)


def test_envelope_defaults() -> None:
    msg = Heartbeat(msg_id="1", source="pump", seq=0, ts=0.0)
    assert (msg.v, msg.campaign, msg.state) == (SCHEMA_VERSION, "", "ok")


def test_new_id_is_a_valid_unique_id() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    Heartbeat(msg_id=new_id(), source="pump", seq=0, ts=0.0)


# --- bounds ------------------------------------------------------------------------

LONG = "x" * 65
REJECTED: list[tuple[str, str, dict[str, Any]]] = [
    # envelope
    ("version 1", "heartbeat", patched("heartbeat", v=1)),
    ("version 0", "heartbeat", patched("heartbeat", v=0)),
    ("negative seq", "heartbeat", patched("heartbeat", seq=-1)),
    ("seq past 2**53", "heartbeat", patched("heartbeat", seq=2**53 + 1)),
    ("negative ts", "heartbeat", patched("heartbeat", ts=-1.0)),
    ("NaN ts", "heartbeat", patched("heartbeat", ts=float("nan"))),
    ("empty source", "heartbeat", patched("heartbeat", source="")),
    ("too long source", "heartbeat", patched("heartbeat", source=LONG)),
    ("space in source", "heartbeat", patched("heartbeat", source="my pump")),
    ("newline in source", "heartbeat", patched("heartbeat", source="pump\n")),
    ("non-ASCII source", "heartbeat", patched("heartbeat", source="pümp")),
    ("slash in msg_id", "heartbeat", patched("heartbeat", msg_id="a/b")),
    ("empty msg_id", "heartbeat", patched("heartbeat", msg_id="")),
    ("too long msg_id", "heartbeat", patched("heartbeat", msg_id=LONG)),
    ("missing msg_id", "heartbeat", without("heartbeat", "msg_id")),
    ("space in campaign", "heartbeat", patched("heartbeat", campaign="agnp demo")),
    ("too long heartbeat state", "heartbeat", patched("heartbeat", state="s" * 33)),
    # lifecycle
    ("unknown role", "hello", patched("hello", role="robot")),
    ("missing session", "hello", without("hello", "session")),
    ("too long instrument", "hello", patched("hello", instrument="i" * 2001)),
    ("unknown severity", "fault", patched("fault", severity="panic")),
    ("too long detail", "fault", patched("fault", detail="d" * 2001)),
    # commands
    ("negative flow", "setpoint", patched("setpoint", flows={"agno3": -0.1})),
    ("infinite flow", "setpoint", patched("setpoint", flows={"agno3": float("inf")})),
    ("no channels", "setpoint", patched("setpoint", flows={})),
    (
        "too many channels",
        "setpoint",
        patched("setpoint", flows={f"c{i}": 1.0 for i in range(MAX_CHANNELS + 1)}),
    ),
    ("bad channel name", "setpoint", patched("setpoint", flows={"ag no3": 1.0})),
    ("too long channel name", "setpoint", patched("setpoint", flows={LONG: 1.0})),
    ("string flow", "setpoint", patched("setpoint", flows={"agno3": "fast"})),
    ("bad cmd_id", "setpoint", patched("setpoint", cmd_id="c#1")),
    ("empty condition", "setpoint", patched("setpoint", condition="")),
    ("missing accepted", "setpoint_ack", without("setpoint_ack", "accepted")),
    ("too long ack reason", "setpoint_ack", patched("setpoint_ack", reason="r" * 2001)),
    ("n zero", "acquire", patched("acquire", n=0)),
    ("n too big", "acquire", patched("acquire", n=1001)),
    ("fractional n", "acquire", patched("acquire", n=2.5)),
    ("empty safe_state cmd_id", "safe_state", patched("safe_state", cmd_id="")),
    # measurements
    ("negative readback flow", "flow_readback", patched("flow_readback", flows={"oil": -1.0})),
    ("missing stable", "flow_readback", without("flow_readback", "stable")),
    ("confidence above 1", "phase_label", patched("phase_label", confidence=1.01)),
    ("confidence below 0", "phase_label", patched("phase_label", confidence=-0.01)),
    ("NaN confidence", "phase_label", patched("phase_label", confidence=float("nan"))),
    ("bad phase name", "phase_label", patched("phase_label", phase="fcc Ag")),
    ("negative replicate", "spectrum", patched("spectrum", replicate=-1)),
    ("zero wl_step", "spectrum", patched("spectrum", wl_step=0.0)),
    ("negative wl_start", "spectrum", patched("spectrum", wl_start=-380.0)),
    ("n_points mismatch", "spectrum", patched("spectrum", n_points=7)),
    ("one point", "spectrum", patched("spectrum", n_points=1, values=[0.5])),
    (
        "too many points",
        "spectrum",
        patched(
            "spectrum",
            n_points=MAX_SPECTRUM_POINTS + 1,
            values=[0.1] * (MAX_SPECTRUM_POINTS + 1),
        ),
    ),
    ("NaN in spectrum", "spectrum", patched("spectrum", values=[0.1] * 7 + [float("nan")])),
    ("string in spectrum", "spectrum", patched("spectrum", values=[0.1] * 7 + ["a"])),
    # status
    ("negative round", "proposal", patched("proposal", round=-1)),
    (
        "too many proposed conditions",
        "proposal",
        patched("proposal", conditions=patched("proposal")["conditions"] * 1001),
    ),
    ("unknown status", "condition_complete", patched("condition_complete", status="done")),
    ("negative loss_sd", "condition_complete", patched("condition_complete", loss_sd=-0.1)),
    ("infinite loss", "condition_complete", patched("condition_complete", median_loss="inf")),
    ("unknown face", "boundary_expanded", patched("boundary_expanded", face="middle")),
    ("three bounds", "boundary_expanded", patched("boundary_expanded", old_bounds=[1, 2, 3])),
    ("missing reason", "campaign_stopped", without("campaign_stopped", "reason")),
    ("negative n_failed", "round_complete", patched("round_complete", n_failed=-1)),
]


@pytest.mark.parametrize(
    ("kind", "data"), [case[1:] for case in REJECTED], ids=[case[0] for case in REJECTED]
)
def test_out_of_bounds_is_rejected(kind: str, data: dict[str, Any]) -> None:
    assert data["kind"] == kind
    with pytest.raises(ValidationError):
        MESSAGE_ADAPTER.validate_python(data)


EDGE = "x" * 64
ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    ("confidence 0", patched("phase_label", confidence=0.0)),
    ("confidence 1", patched("phase_label", confidence=1.0)),
    ("n 1", patched("acquire", n=1)),
    ("n 1000", patched("acquire", n=1000)),
    ("zero flow", patched("setpoint", flows={"agno3": 0.0})),
    ("64-char names", patched("setpoint", source=EDGE, cmd_id=EDGE, flows={EDGE: 1.0})),
    ("all id characters", patched("setpoint", condition="Az09_.:-")),
    ("max channels", patched("setpoint", flows={f"c{i}": 1.0 for i in range(MAX_CHANNELS)})),
    ("empty readback", patched("flow_readback", flows={}, cmd_id="", condition="")),
    ("seq 2**53", patched("heartbeat", seq=2**53)),
    ("integer ts", patched("heartbeat", ts=0)),
    ("v omitted", without("heartbeat", "v")),
    ("campaign omitted", without("heartbeat", "campaign")),
    ("two points", patched("spectrum", n_points=2, values=[0.0, -0.01])),
    (
        "max points",
        patched("spectrum", n_points=MAX_SPECTRUM_POINTS, values=[0.5] * MAX_SPECTRUM_POINTS),
    ),
    ("failed condition", patched("condition_complete", status="failed", median_loss=None)),
    ("no best yet", patched("round_complete", best_loss=None, best_condition="")),
]


@pytest.mark.parametrize("data", [c[1] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_edges_inside_bounds_are_accepted(data: dict[str, Any]) -> None:
    msg = MESSAGE_ADAPTER.validate_python(data)
    assert decode(encode(msg)) == msg


# --- JSON Schema export ------------------------------------------------------------


def test_json_schemas_cover_every_kind_and_the_union() -> None:
    schemas = json_schemas()
    assert set(schemas) == {*KINDS, "message"}
    for kind in KINDS:
        schema = schemas[kind]
        assert schema["properties"]["kind"]["const"] == kind
        assert schema["required"][0] == "kind"
        assert schema["additionalProperties"] is False
        body = json.loads(encode(EXAMPLES[kind])[1])  # the example is the JSON body
        assert schema["examples"] == [EXAMPLES[kind].model_dump(mode="json", exclude={"values"})]
        assert schema["examples"] == [body]
        assert set(schema["required"]) <= set(body) <= set(schema["properties"])
    frame = schemas["spectrum"]["x-values-frame"]
    assert (frame["frame"], frame["dtype"], frame["byteorder"]) == (2, "float64", "little")
    assert "values" not in schemas["spectrum"]["properties"]
    assert schemas["message"]["discriminator"]["propertyName"] == "kind"
    assert len(schemas["message"]["oneOf"]) == len(KINDS)


def test_schema_maps_check_their_keys() -> None:
    flows = json_schemas()["setpoint"]["properties"]["flows"]
    assert "patternProperties" not in flows
    assert flows["propertyNames"]["pattern"] == "^[A-Za-z0-9_.:\\-]+$"
    assert flows["additionalProperties"] == {"minimum": 0.0, "type": "number"}


def test_write_schemas_output_is_stable(tmp_path: Path) -> None:
    paths = write_schemas(tmp_path / "out")
    assert paths == sorted(paths)
    assert {p.name for p in paths} == {f"{k}.schema.json" for k in [*KINDS, "message"]}
    for path in paths:
        text = path.read_text(encoding="utf-8")
        assert text.endswith("}\n")
        assert (
            text
            == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        )
    assert write_schemas(tmp_path / "out") == paths


def test_docs_schemas_are_up_to_date(tmp_path: Path) -> None:
    """docs/schemas/ is regenerated with ``sdl-agent schema --out docs/schemas``."""
    fresh = {p.name: p.read_text(encoding="utf-8") for p in write_schemas(tmp_path)}
    committed = {
        p.name: p.read_text(encoding="utf-8") for p in sorted(DOCS_SCHEMAS.glob("*.schema.json"))
    }
    assert committed == fresh
