"""The codec: every bad input becomes a typed CodecError with a reason, nothing else escapes."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.codec import DEFAULT_MAX_BYTES, decode, encode, spectrum_array, topic_of
from protocols.errors import (
    CodecError,
    InvalidMessage,
    MalformedFrames,
    NonFiniteValue,
    OversizedMessage,
    ProtocolError,
    TopicMismatch,
    UnknownKind,
    UnsupportedVersion,
    WrongArrayLength,
)
from protocols.messages import MAX_SPECTRUM_POINTS, MESSAGE_ADAPTER, SCHEMA_VERSION, Spectrum
from protocols.schema import example_messages

#: examples per hypothesis property; raise it for a long fuzzing session
FUZZ_EXAMPLES = int(os.environ.get("SDL_FUZZ_EXAMPLES", "300"))

EXAMPLES = example_messages()
KINDS = sorted(EXAMPLES)


def body_of(kind: str, /, **changes: Any) -> list[bytes]:
    """Frames of the example of ``kind`` with ``changes`` applied to its JSON body
    (a spectrum keeps its values frame).

    ``json.dumps`` writes float NaN/inf as the non-standard ``NaN``/``Infinity``,
    which is what a careless encoder in another language sends.
    """
    msg = EXAMPLES[kind]
    data = msg.model_dump(mode="json", exclude={"values"})
    data.update(changes)
    return [topic_of(msg), json.dumps(data).encode(), *encode(msg)[2:]]


def spectrum_frames(values: bytes, /, **changes: Any) -> list[bytes]:
    """The example spectrum's topic and body (``changes`` applied) with ``values`` as frame 2."""
    return [*body_of("spectrum", **changes)[:2], values]


def reject(frames: Any, error: type[CodecError], *reason: str, **kwargs: Any) -> CodecError:
    """Assert ``decode(frames)`` raises exactly ``error`` whose reason holds every ``reason``."""
    with pytest.raises(CodecError) as info:
        decode(frames, **kwargs)
    err = info.value
    assert type(err) is error, f"{type(err).__name__}: {err}"
    assert isinstance(err, ProtocolError)
    assert err.code == error.code
    for part in reason:
        assert part in str(err), str(err)
    return err


# --- the good path -------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_encode_gives_topic_and_json_body(kind: str) -> None:
    msg = EXAMPLES[kind]
    frames = encode(msg)
    topic, body = frames[:2]
    assert topic == f"{kind}.{msg.source}".encode("ascii")
    data = json.loads(body)
    assert data["kind"] == kind
    assert data["v"] == SCHEMA_VERSION == 4
    assert "values" not in data
    assert len(frames) == (3 if kind == "spectrum" else 2)
    assert decode(frames) == msg


def test_a_spectrum_travels_as_raw_little_endian_doubles_bit_for_bit() -> None:
    values = np.array([0.1, 1 / 3, -1.2345678901234567e-05, 5e-324, 1.7976931348623157e308])
    msg = Spectrum(
        msg_id="s", source="spectrometer", seq=0, ts=0.0, condition="c", replicate=0,
        wl_start=380.0, wl_step=1.0, n_points=values.size, values=values,
    )  # fmt: skip
    topic, body, blob = encode(msg)
    assert blob == values.astype("<f8").tobytes() and len(blob) == 8 * values.size
    back = decode([topic, body, blob])
    assert back == msg
    out = spectrum_array(back)
    assert out.dtype == np.float64 and not out.flags.writeable
    assert np.array_equal(out, values) and out.tobytes() == values.tobytes()
    assert back.model_dump(mode="json")["values"] == values.tolist()


def test_decode_accepts_any_bytes_like_frames() -> None:
    topic, body, blob = encode(EXAMPLES["spectrum"])
    msg = EXAMPLES["spectrum"]
    assert decode((bytearray(topic), memoryview(body), bytearray(blob))) == msg
    assert decode((memoryview(topic), bytearray(body), memoryview(blob))) == msg


def test_decode_accepts_fields_in_any_order_and_whitespace() -> None:
    topic, body = encode(EXAMPLES["setpoint"])
    data = json.loads(body)
    shuffled = json.dumps(dict(reversed(list(data.items()))), indent=4).encode()
    assert decode([topic, shuffled]) == EXAMPLES["setpoint"]


# --- rejections, one by one --------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"\x00\xff\xfe garbage", b"", b"{", b'{"kind": "heartbeat",}', b"\xff\xfe{}", b"kind=x"],
)
def test_garbage_bytes(body: bytes) -> None:
    reject([b"heartbeat.pump", body], MalformedFrames, "not valid JSON")


@pytest.mark.parametrize("body", [b"[1, 2]", b'"heartbeat"', b"3", b"null", b"true", b"[]"])
def test_non_object_json(body: bytes) -> None:
    reject([b"heartbeat.pump", body], MalformedFrames, "not a JSON object")


def test_missing_kind() -> None:
    data = EXAMPLES["heartbeat"].model_dump(mode="json")
    del data["kind"]
    reject([b"heartbeat.pump", json.dumps(data).encode()], InvalidMessage, "no 'kind'")


@pytest.mark.parametrize("kind", ["teleport", "", "HEARTBEAT", 7, None, ["heartbeat"]])
def test_unknown_kind(kind: object) -> None:
    reject(body_of("heartbeat", kind=kind), UnknownKind, "unknown message kind", repr(kind))


@pytest.mark.parametrize("version", [0, 1, 2, 3, 5, 99, "4", None, 4.5])
def test_wrong_version(version: object) -> None:
    reject(
        body_of("heartbeat", v=version),
        UnsupportedVersion,
        f"schema version {version!r} is not supported",
        "speaks 4",
    )


def test_wrong_version_wins_over_unknown_kind_and_extra_fields() -> None:
    # a message of another schema may carry kinds and fields this side never heard of
    reject(body_of("heartbeat", v=5, kind="calibrate"), UnsupportedVersion, "version 5")
    reject(body_of("heartbeat", v=1, colour="blue"), UnsupportedVersion, "version 1")
    # a version-2 spectrum: the values in the body, two frames
    v2 = EXAMPLES["spectrum"].model_dump(mode="json") | {"v": 2}
    reject([b"spectrum.spectrometer", json.dumps(v2).encode()], UnsupportedVersion, "version 2")
    # a version-3 peer: no acquire_id or first yet, and its "v" says so
    v3 = EXAMPLES["acquire"].model_dump(mode="json", exclude={"first"}) | {"v": 3}
    reject([b"acquire.agent", json.dumps(v3).encode()], UnsupportedVersion, "version 3")
    data = EXAMPLES["heartbeat"].model_dump(mode="json")
    del data["kind"]
    data["v"] = 5
    reject([b"heartbeat.pump", json.dumps(data).encode()], UnsupportedVersion, "version 5")


def test_a_channel_called_v_is_not_the_version() -> None:
    err = reject(body_of("setpoint", flows={"v": -1.0}), InvalidMessage, "flows.v")
    assert "greater than or equal to 0" in str(err)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), "signalling NaN"])
@pytest.mark.parametrize("index", [0, 1, 7])
def test_non_finite_in_the_values_frame(bad: object, index: int) -> None:
    values = spectrum_array(EXAMPLES["spectrum"]).copy()
    if bad == "signalling NaN":
        values.view("<u8")[index] = 0x7FF0000000000001
    else:
        values[index] = bad
    frames = spectrum_frames(values.astype("<f8").tobytes())
    reject(frames, NonFiniteValue, "non-finite number", f"spectrum.values.{index}")


@pytest.mark.parametrize(
    ("blob", "why"),
    [
        (b"", "0 values"),
        (b"\x00" * 7, "has 7 bytes, not a whole number of 8-byte little-endian float64"),
        (b"\x00" * 63, "has 63 bytes"),
        (b"\x00" * 72, "9 values were sent (72 bytes"),
        # float32 instead of float64: half the bytes (the length is the dtype check:
        # 2 * n_points float32 are as long as n_points doubles and read as such)
        (np.zeros(8, dtype="<f4").tobytes(), "4 values were sent (32 bytes"),
        (np.zeros(8, dtype="<f2").tobytes(), "2 values were sent (16 bytes"),
    ],
    ids=["empty", "7 bytes", "63 bytes", "9 doubles", "8 float32", "8 float16"],
)
def test_values_frame_of_the_wrong_byte_length(blob: bytes, why: str) -> None:
    reject(spectrum_frames(blob), WrongArrayLength, "n_points=8", why)


def test_a_spectrum_without_its_values_frame() -> None:
    topic, body, _ = encode(EXAMPLES["spectrum"])
    reject([topic, body], MalformedFrames, "expected 3 frames for a spectrum")


def test_values_in_the_json_body_are_refused() -> None:
    values = EXAMPLES["spectrum"].model_dump(mode="json")["values"]
    frames = body_of("spectrum", values=values)
    reject(frames, InvalidMessage, "spectrum.values", "frame after the body")
    reject(frames[:2], InvalidMessage, "frame after the body")


@pytest.mark.parametrize("kind", ["heartbeat", "setpoint", "condition_progress"])
def test_a_third_frame_on_any_other_kind(kind: str) -> None:
    frames = [*encode(EXAMPLES[kind]), encode(EXAMPLES["spectrum"])[2]]
    reject(frames, MalformedFrames, f"expected 2 frames (topic, body) for a {kind}, got 3")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("kind", ["setpoint", "flow_readback"])
def test_non_finite_in_a_flow(kind: str, bad: float) -> None:
    frames = body_of(kind, flows={"agno3": bad, "oil": 400.0})
    reject(frames, NonFiniteValue, "non-finite number", f"{kind}.flows.agno3")


@pytest.mark.parametrize(
    ("field", "kind"), [("wl_step", "spectrum"), ("confidence", "phase_label"), ("ts", "hello")]
)
def test_non_finite_scalar(field: str, kind: str) -> None:
    reject(body_of(kind, **{field: float("nan")}), NonFiniteValue, f"{kind}.{field}")


@pytest.mark.parametrize("n_points", [2, 7, 9, MAX_SPECTRUM_POINTS])
def test_n_points_not_matching_values(n_points: int) -> None:
    reject(
        body_of("spectrum", n_points=n_points),
        WrongArrayLength,
        f"n_points={n_points}",
        "8 values",
    )


def test_oversized_message() -> None:
    frames = encode(EXAMPLES["spectrum"])
    size = sum(len(f) for f in frames)
    assert decode(frames, max_bytes=size) == EXAMPLES["spectrum"]
    reject(frames, OversizedMessage, f"{size} bytes", f"limit of {size - 1}", max_bytes=size - 1)


def test_a_full_spectrum_fits_the_default_limit_and_garbage_past_it_is_refused() -> None:
    n = MAX_SPECTRUM_POINTS
    big = Spectrum(
        msg_id="big",
        source="spectrometer",
        seq=0,
        ts=1.0,
        condition="r1-01",
        replicate=0,
        wl_start=200.0,
        wl_step=0.1,
        n_points=n,
        values=[-1.2345678901234567e-05] * n,
    )
    assert decode(encode(big)) == big
    assert sum(map(len, encode(big))) < DEFAULT_MAX_BYTES // 8
    junk = b'{"kind":"heartbeat","pad":"' + b"x" * DEFAULT_MAX_BYTES + b'"}'
    reject([b"heartbeat.pump", junk], OversizedMessage, f"limit of {DEFAULT_MAX_BYTES}")


@pytest.mark.parametrize("count", [0, 1, 4, 5])
@pytest.mark.parametrize("kind", ["heartbeat", "spectrum"])
def test_wrong_frame_count(count: int, kind: str) -> None:
    frames = [*encode(EXAMPLES[kind]), b"", b"", b""][:count]
    reject(frames, MalformedFrames, "expected 2 frames", "3 for a spectrum", f"got {count}")


@pytest.mark.parametrize(
    "frames",
    [
        ["heartbeat.pump", b"{}"],
        [b"heartbeat.pump", '{"kind": "heartbeat"}'],
        [None, b"{}"],
        [b"heartbeat.pump", 42],
        [b"heartbeat.pump", {"kind": "heartbeat"}],
        "ab",
        [*encode(EXAMPLES["spectrum"])[:2], [0.21] * 8],
        [*encode(EXAMPLES["spectrum"])[:2], "values"],
    ],
    ids=["str topic", "str body", "None topic", "int body", "dict body", "a str", "list", "str"],
)
def test_non_bytes_frames(frames: Any) -> None:
    reject(frames, MalformedFrames, "frames must be bytes")


@pytest.mark.parametrize("frames", [None, 42, object()], ids=["None", "int", "object"])
def test_not_a_sequence_of_frames(frames: Any) -> None:
    reject(frames, MalformedFrames, "frames must be a sequence")


@pytest.mark.parametrize(
    "topic",
    [b"heartbeat.xrd", b"hello.pump", b"heartbeat", b"", b"heartbeat.pump ", b"\xff\xfe"],
)
def test_topic_not_matching_body(topic: bytes) -> None:
    _, body = encode(EXAMPLES["heartbeat"])
    reject([topic, body], TopicMismatch, "does not match body", "b'heartbeat.pump'")


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        (body_of("acquire", n=0), "acquire.n"),
        (body_of("phase_label", confidence=1.5), "phase_label.confidence"),
        (body_of("heartbeat", colour="blue"), "heartbeat.colour: Extra inputs are not permitted"),
        (body_of("heartbeat", source="x" * 65), "heartbeat.source"),
        (body_of("heartbeat", msg_id="a b"), "heartbeat.msg_id"),
    ],
    ids=["n", "confidence", "extra", "long source", "bad id"],
)
def test_invalid_fields_name_the_field(frames: list[bytes], reason: str) -> None:
    reject(frames, InvalidMessage, "invalid message", reason)


def test_many_invalid_fields_are_summarised() -> None:
    frames = body_of("acquire", n=0, seq=-1, ts=-1.0, cmd_id="", condition="")
    err = reject(frames, InvalidMessage, "(+2 more)")
    assert str(err).count(";") == 2


def test_every_error_class_has_its_own_code() -> None:
    classes = [
        MalformedFrames,
        OversizedMessage,
        UnknownKind,
        UnsupportedVersion,
        InvalidMessage,
        NonFiniteValue,
        WrongArrayLength,
        TopicMismatch,
    ]
    assert len({cls.code for cls in classes}) == len(classes)
    assert all(issubclass(cls, CodecError) for cls in classes)


# --- property: decode returns a message or raises a CodecError, nothing else -------

FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
VALID_FRAMES = [encode(EXAMPLES[kind]) for kind in KINDS]
ENVELOPE_KEYS = sorted({key for msg in EXAMPLES.values() for key in msg.model_dump(mode="json")})

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(KINDS)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.text(max_size=8) | st.sampled_from(ENVELOPE_KEYS), children, max_size=5
        )
    ),
    max_leaves=10,
)
# shallow values keep the drawing of ~45 optional keys cheap
flat_values = (
    json_scalars
    | st.lists(json_scalars, max_size=4)
    | st.dictionaries(st.text(max_size=6), json_scalars, max_size=3)
)
# objects that look like messages: known keys, a real or made-up kind, any values
messagey = st.builds(
    lambda kind, fields: {**fields, "kind": kind},
    st.sampled_from(KINDS) | st.text(max_size=12),
    st.dictionaries(st.sampled_from(ENVELOPE_KEYS), flat_values, max_size=12),
)
topics = st.sampled_from([f[0] for f in VALID_FRAMES]) | st.binary(max_size=40)


def decode_or_codec_error(frames: list[bytes]) -> None:
    """The property: a message (that re-encodes to itself) or a CodecError."""
    try:
        msg = decode(frames)
    except CodecError as err:
        assert str(err)
        assert err.code
        return
    assert decode(encode(msg)) == msg
    assert MESSAGE_ADAPTER.validate_python(msg.model_dump()) == msg


@FUZZ
@given(topic=topics, body=st.binary(max_size=300))
def test_fuzz_random_bytes(topic: bytes, body: bytes) -> None:
    decode_or_codec_error([topic, body])


@FUZZ
@given(topic=topics, doc=json_values | messagey)
def test_fuzz_json_documents(topic: bytes, doc: Any) -> None:
    decode_or_codec_error([topic, json.dumps(doc).encode()])


@FUZZ
@given(
    index=st.integers(min_value=0, max_value=len(VALID_FRAMES) - 1),
    other=st.integers(min_value=0, max_value=len(VALID_FRAMES) - 1),
    data=st.data(),
)
def test_fuzz_mutated_valid_messages(index: int, other: int, data: st.DataObject) -> None:
    topic, body, *rest = VALID_FRAMES[index]
    mutation = data.draw(st.sampled_from(["flip", "truncate", "splice", "insert"]))
    position = data.draw(st.integers(min_value=0, max_value=len(body)))
    if mutation == "flip":
        flips = data.draw(
            st.lists(st.tuples(st.integers(0, len(body) - 1), st.integers(1, 255)), max_size=4)
        )
        mutated = bytearray(body)
        for i, mask in flips:
            mutated[i] ^= mask
        body = bytes(mutated)
    elif mutation == "truncate":
        body = body[:position]
    elif mutation == "splice":
        donor = VALID_FRAMES[other][1]
        cut = data.draw(st.integers(min_value=0, max_value=len(donor)))
        body = body[:position] + donor[cut:]
    else:
        body = body[:position] + data.draw(st.binary(min_size=1, max_size=16)) + body[position:]
    decode_or_codec_error([topic, body, *rest])


@FUZZ
@given(
    mutation=st.sampled_from(["flip", "truncate", "extend", "replace", "drop", "extra"]),
    data=st.data(),
)
def test_fuzz_mutated_values_frame(mutation: str, data: st.DataObject) -> None:
    topic, body, blob = encode(EXAMPLES["spectrum"])
    frames: list[bytes] = [topic, body, blob]
    if mutation == "flip":
        flips = data.draw(
            st.lists(st.tuples(st.integers(0, len(blob) - 1), st.integers(1, 255)), max_size=4)
        )
        mutated = bytearray(blob)
        for i, mask in flips:
            mutated[i] ^= mask
        frames[2] = bytes(mutated)
    elif mutation == "truncate":
        frames[2] = blob[: data.draw(st.integers(0, len(blob)))]
    elif mutation == "extend":
        frames[2] = blob + data.draw(st.binary(min_size=1, max_size=24))
    elif mutation == "replace":
        frames[2] = data.draw(st.binary(max_size=80))
    elif mutation == "drop":
        frames = frames[:2]
    else:
        frames.append(data.draw(st.binary(max_size=16)))
    decode_or_codec_error(frames)


@FUZZ
@given(
    index=st.integers(min_value=0, max_value=len(VALID_FRAMES) - 1),
    key=st.sampled_from(ENVELOPE_KEYS),
    value=json_values,
)
def test_fuzz_one_field_replaced(index: int, key: str, value: Any) -> None:
    topic, body, *rest = VALID_FRAMES[index]
    doc = json.loads(body)
    doc[key] = value
    decode_or_codec_error([topic, json.dumps(doc).encode(), *rest])
