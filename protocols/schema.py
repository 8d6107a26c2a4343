"""JSON Schema of the wire contract, exported from the pydantic models.

One schema per message kind (``<kind>.schema.json``) and one for the whole
union (``message.schema.json``), so that a driver written in another language
can validate what it sends and receives. ``sdl-agent schema --out DIR`` calls
:func:`write_schemas`; ``docs/schemas/`` is its output for this version.

What JSON Schema cannot say is checked by the codec only and written in
docs/protocol.md: numbers are finite (JSON has no NaN anyway, but some encoders
write ``NaN``), the topic frame matches the body, and a spectrum's values are
not in its body but in a third frame of ``8 * n_points`` bytes (little-endian
float64, all finite), which its schema names under ``x-values-frame``. The
spectrum's example is its body, without the values.

>>> schemas = json_schemas()
>>> schemas["setpoint"]["properties"]["kind"]["const"]
'setpoint'
>>> "message" in schemas
True
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from protocols.messages import (
    MESSAGE_ADAPTER,
    SCHEMA_VERSION,
    Acquire,
    AcquireAck,
    ActiveCondition,
    BoundaryExpanded,
    CampaignStatus,
    CampaignStopped,
    ConditionComplete,
    ConditionProgress,
    Fault,
    FlowReadback,
    Heartbeat,
    Hello,
    Message,
    PhaseLabel,
    Proposal,
    ProposedCondition,
    RoundComplete,
    SafeState,
    Setpoint,
    SetpointAck,
    Spectrum,
    StopCloseness,
)

__all__ = [
    "JSON_SCHEMA_DIALECT",
    "UNION_NAME",
    "example_messages",
    "json_schemas",
    "message_models",
    "write_schemas",
]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: key (and file stem) of the schema of the whole union
UNION_NAME = "message"


def message_models() -> dict[str, type[BaseModel]]:
    """Every message model of the union, by its ``kind``, in declaration order."""
    union = typing.get_args(Message)[0]
    models: dict[str, type[BaseModel]] = {}
    for model in typing.get_args(union):
        kind = model.model_fields["kind"].default
        models[kind] = model
    return models


def example_messages() -> dict[str, Message]:
    """One valid, realistic message per kind (the silver-nanoparticle campaign).

    Used as the ``examples`` of each schema, in docs/protocol.md and by tests.
    """
    env = {"ts": 1767225600.25, "campaign": "agnp-demo"}
    pump = {"source": "pump", **env}
    agent = {"source": "agent", **env}
    flows = {
        "agno3": 48.0,
        "pva": 120.0,
        "tsc": 36.0,
        "seed": 24.0,
        "water": 172.0,
        "oil": 400.0,
    }
    recipe = {"q_agno3": 12.0, "q_pva": 30.0, "q_tsc": 9.0, "q_seed": 6.0, "q_tot": 400.0}
    messages: list[Message] = [
        Hello(
            msg_id="4f1c2a9e",
            seq=0,
            role="pump",
            session="9b3e5d71",
            instrument="simulated syringe pump, 6 channels",
            source="pump",
            ts=env["ts"],
        ),
        Heartbeat(msg_id="4f1c2a9f", seq=1, **pump),
        Fault(
            msg_id="4f1c2aa0",
            seq=2,
            code="pressure_high",
            detail="channel oil above 4 bar",
            severity="error",
            **pump,
        ),
        Setpoint(
            msg_id="a0e1",
            seq=7,
            cmd_id="agnp-demo.r01-c03.a1",
            condition="r01-c03",
            flows=flows,
            **agent,
        ),
        SafeState(
            msg_id="a0e2", seq=8, cmd_id="agnp-demo.safe.3", reason="heartbeat lost", **agent
        ),
        SetpointAck(msg_id="4f1c2aa1", seq=3, cmd_id="agnp-demo.r01-c03.a1", accepted=True, **pump),
        Acquire(
            msg_id="a0e3",
            seq=9,
            cmd_id="agnp-demo.r01-c03.a1.spectrometer.0",
            condition="r01-c03",
            n=5,
            first=0,
            **agent,
        ),
        AcquireAck(
            msg_id="77d0",
            seq=4,
            cmd_id="agnp-demo.r01-c03.a1.spectrometer.0",
            accepted=True,
            source="spectrometer",
            **env,
        ),
        FlowReadback(
            msg_id="4f1c2aa2",
            seq=0,
            cmd_id="agnp-demo.r01-c03.a1",
            condition="r01-c03",
            flows={**flows, "agno3": 48.1, "pva": 119.8, "water": 171.9},
            stable=True,
            **pump,
        ),
        Spectrum(
            msg_id="77d1",
            seq=5,
            condition="r01-c03",
            replicate=0,
            wl_start=380.0,
            wl_step=60.0,
            n_points=8,
            acquire_id="agnp-demo.r01-c03.a1.spectrometer.0",
            values=[0.21, 0.35, 0.52, 0.71, 0.93, 0.64, 0.28, 0.12],
            source="spectrometer",
            **env,
        ),
        PhaseLabel(
            msg_id="x9",
            seq=2,
            condition="r01-c03",
            phase="ag_fcc",
            confidence=0.92,
            source="xrd",
            **env,
        ),
        Proposal(
            msg_id="s1",
            seq=0,
            round=1,
            conditions=[ProposedCondition(condition="r01-c03", recipe=recipe, strategy="lhs")],
            **agent,
        ),
        ConditionComplete(
            msg_id="s2",
            seq=1,
            round=1,
            condition="r01-c03",
            status="complete",
            n_used=5,
            n_rejected=1,
            median_loss=0.184,
            loss_sd=0.012,
            **agent,
        ),
        RoundComplete(
            msg_id="s3",
            seq=2,
            round=1,
            best_loss=0.184,
            best_condition="r01-c03",
            n_complete=14,
            n_failed=1,
            **agent,
        ),
        BoundaryExpanded(
            msg_id="s4",
            seq=3,
            round=2,
            parameter="q_agno3",
            face="upper",
            old_bounds=(4.0, 20.0),
            new_bounds=(4.0, 28.0),
            reason="best condition within 5 % of the upper face",
            **agent,
        ),
        CampaignStopped(
            msg_id="s5",
            seq=4,
            reason="round budget spent: 3 of 3 rounds",
            rule="max_rounds",
            rounds=3,
            conditions=45,
            best_loss=0.071,
            best_condition="r03-c11",
            numbers={"rounds": 3, "max_rounds": 3},
            **agent,
        ),
        ConditionProgress(
            msg_id="s6",
            seq=5,
            round=2,
            condition="r02-c04",
            n_accepted=6,
            n_rejected=1,
            n_min=5,
            n_max=48,
            median_loss=0.142,
            elapsed_s=3.5,
            **agent,
        ),
        CampaignStatus(
            msg_id="s7",
            seq=6,
            state="running",
            round=2,
            rounds_complete=1,
            conditions_done=3,
            conditions_total=15,
            best_loss=0.131,
            best_condition="r02-c02",
            box={
                "q_agno3": (4.0, 28.0),
                "q_pva": (10.0, 40.0),
                "q_tsc": (4.0, 20.0),
                "q_seed": (4.0, 20.0),
                "q_tot": (200.0, 1000.0),
            },
            active=[
                ActiveCondition(condition="r02-c04", state="measuring", n_accepted=6, n_rejected=1)
            ],
            stop=[
                StopCloseness(
                    rule="target_loss", fraction=0.41, numbers={"best_loss": 0.131, "target": 0.05}
                ),
                StopCloseness(
                    rule="max_rounds", fraction=0.083, numbers={"rounds": 1, "max_rounds": 12}
                ),
            ],
            elapsed_s=412.0,
            **agent,
        ),
    ]
    return {msg.kind: msg for msg in messages}


def json_schemas() -> dict[str, dict[str, Any]]:
    """One JSON Schema (draft 2020-12) per message kind, plus the union as ``"message"``.

    The schemas describe what a receiver accepts (pydantic's validation mode),
    with two tightenings that the codec enforces anyway: ``kind`` is required
    (it selects the model), and map keys carry their pattern in
    ``propertyNames`` with ``additionalProperties`` for the values.
    """
    schemas: dict[str, dict[str, Any]] = {}
    examples = example_messages()
    for kind, model in message_models().items():
        schema = model.model_json_schema()
        _require_kind(schema)
        if kind in examples:
            schema["examples"] = [examples[kind].model_dump(mode="json", exclude=_NOT_IN_BODY)]
        schemas[kind] = _finish(schema, title=model.__name__)
    union = MESSAGE_ADAPTER.json_schema()
    for definition in union.get("$defs", {}).values():
        if "kind" in definition.get("properties", {}):
            _require_kind(definition)
    union["description"] = (
        "Any message of the sdl-agent wire contract; the 'kind' field selects the model."
    )
    schemas[UNION_NAME] = _finish(union, title="Message")
    return schemas


def write_schemas(directory: Path) -> list[Path]:
    """Write ``<kind>.schema.json`` for every schema of :func:`json_schemas`.

    Creates ``directory`` if needed and overwrites files of the same name; keys
    are sorted, indented by 2, with a newline at the end, so the output is
    stable and diffs well.

    Returns:
        The written paths, sorted.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in sorted(json_schemas().items()):
        path = directory / f"{name}.schema.json"
        path.write_text(
            json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        written.append(path)
    return written


_NOT_IN_BODY = {"values"}  # a spectrum's: they travel in the frame after the body


def _finish(schema: dict[str, Any], *, title: str) -> dict[str, Any]:
    schema = _tighten_maps(schema)
    schema["$schema"] = JSON_SCHEMA_DIALECT
    schema["title"] = title
    schema["x-schema-version"] = SCHEMA_VERSION
    return schema


def _require_kind(schema: dict[str, Any]) -> None:
    required = schema.setdefault("required", [])
    if "kind" not in required:
        required.insert(0, "kind")


def _tighten_maps(node: Any) -> Any:
    """Rewrite pydantic's ``patternProperties`` maps so that bad keys are refused.

    pydantic writes ``dict[Name, float]`` as ``patternProperties: {PATTERN: V}``,
    which lets keys that miss the pattern through unchecked; the models refuse
    them. ``propertyNames: {pattern: PATTERN}`` plus ``additionalProperties: V``
    says the same as the model.
    """
    if isinstance(node, list):
        return [_tighten_maps(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _tighten_maps(value) for key, value in node.items()}
    patterns = node.get("patternProperties")
    if (
        node.get("type") == "object"
        and isinstance(patterns, dict)
        and len(patterns) == 1
        and "properties" not in node
        and "additionalProperties" not in node
    ):
        ((pattern, values),) = patterns.items()
        del node["patternProperties"]
        node["propertyNames"] = {**node.get("propertyNames", {}), "pattern": pattern}
        node["additionalProperties"] = values
    return node
