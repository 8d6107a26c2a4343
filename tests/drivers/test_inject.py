"""The fault injector on its own: each fault does what it says, is logged and
counted, draws are reproducible per socket, corruption is detectable, and the
crash point fires exactly once, at its message (no sockets: list sinks)."""

from __future__ import annotations

import random

import pytest
import structlog
from pydantic import ValidationError

from drivers.cli import main
from drivers.inject import FAULT_KINDS, FaultInjector, FaultPlan, FaultRates, corrupt, draw
from protocols.codec import decode, encode
from protocols.errors import CodecError
from protocols.messages import Heartbeat, Spectrum, new_id


def message(seq: int) -> list[bytes]:
    return encode(
        Spectrum(
            msg_id=new_id(),
            source="spectrometer",
            seq=seq,
            ts=1.0,
            condition="r01-c01",
            replicate=seq,
            wl_start=380.0,
            wl_step=1.0,
            n_points=3,
            values=[0.1, 0.2, 0.3],
        )
    )


def only(kind: str, p: float = 1.0, **plan: object) -> FaultInjector:
    return FaultInjector(FaultPlan.model_validate({"out": {kind: p}, **plan}))


async def push(inj: FaultInjector, n: int, *, kind: str = "spectrum") -> list[list[bytes]]:
    got: list[list[bytes]] = []

    async def sink(frames: list[bytes]) -> None:
        got.append(frames)

    for k in range(n):
        await inj.send(message(k), sink, stream="events", kind=kind)
    return got


def seqs(got: list[list[bytes]]) -> list[int]:
    return [decode(f).seq for f in got]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("drop", []),
        ("duplicate", [0, 0, 1, 1, 2, 2]),
        ("delay", [0, 1, 2]),
    ],
)
async def test_each_fault_does_what_it_says_and_is_logged_and_counted(kind, expected):
    inj = only(kind, max_delay_s=0.001)
    with structlog.testing.capture_logs() as logs:
        got = await push(inj, 3)
    assert seqs(got) == expected
    assert inj.counts == {f"out.{kind}": 3}
    records = [r for r in logs if r["event"] == "fault_injected"]
    assert [(r["fault"], r["direction"], r["stream"], r["kind"]) for r in records] == [
        (kind, "out", "events", "spectrum")
    ] * 3


async def test_reorder_passes_a_held_message_on_after_the_next_one():
    inj = FaultInjector(FaultPlan(out=FaultRates(reorder=0.5), seed=1))
    got = await push(inj, 200)
    order = seqs(got)
    assert inj.counts["out.reorder"] > 20
    # nothing lost or doubled; some overtaken, none by more than two places
    assert sorted(order) == list(range(len(order))) and order != sorted(order)
    assert len(order) >= 199  # the last one may still be held
    assert all(abs(s - i) <= 2 for i, s in enumerate(order))


async def test_detectable_corruption_never_decodes_and_bitflips_are_counted_too():
    rng = random.Random(0)
    for k in range(500):
        bad = corrupt(message(k), "detectable", rng)
        with pytest.raises(CodecError) as err:
            decode(bad)
        assert err.value.code and str(err.value)
    flips = [corrupt(message(k), "bitflip", rng) for k in range(200)]
    assert all(f != message(k) for k, f in enumerate(flips))


async def test_in_direction_faults_apply_to_what_the_driver_receives():
    inj = FaultInjector(FaultPlan.model_validate({"in": {"duplicate": 1.0}}))
    got: list[list[bytes]] = []

    async def handler(frames: list[bytes]) -> None:
        got.append(frames)

    beat = encode(Heartbeat(msg_id=new_id(), source="agent", seq=0, ts=1.0))
    await inj.receive(beat, handler, stream="commands")
    assert got == [beat, beat] and inj.counts == {"in.duplicate": 1}
    await push(inj, 2)  # the out direction has no rates: untouched
    assert inj.counts == {"in.duplicate": 1}


def test_draws_are_reproducible_per_seed_and_socket():
    rates = FaultRates(drop=0.1, duplicate=0.1, corrupt=0.1, reorder=0.1, delay=0.1)

    def run(seed: str) -> list[str | None]:
        rng = random.Random(seed)
        return [draw(rates, rng) for _ in range(500)]

    assert run("3/out/events") == run("3/out/events")
    assert run("3/out/events") != run("4/out/events")
    counts = {k: run("3/in/commands").count(k) for k in FAULT_KINDS}
    assert all(25 <= n <= 75 for n in counts.values()), counts  # ~50 of each in 500
    assert draw(FaultRates(), random.Random(0)) is None


async def test_crash_point_fires_once_right_after_its_message():
    kills: list[int] = []
    plan = FaultPlan(crash_at="spectrum:3")  # type: ignore[arg-type]
    inj = FaultInjector(plan, kill=lambda: kills.append(len(got)))
    got: list[list[bytes]] = []

    async def sink(frames: list[bytes]) -> None:
        got.append(frames)

    for k in range(6):
        await inj.send(message(k), sink, stream="events", kind="spectrum")
        await inj.send(message(k), sink, stream="commands", kind="heartbeat")
    assert kills == [5]  # after the third spectrum (and two heartbeats) went out
    assert inj.counts == {"out.crash": 1}


@pytest.mark.parametrize(
    "plan",
    [
        {"out": {"drop": 1.5}},
        {"out": {"drop": -0.1}},
        {"in": {"drop": 0.6, "delay": 0.6}},  # more than 1 together
        {"out": {"explode": 0.1}},
        {"crash_at": "spectrum"},
        {"crash_at": "spectrum:0"},
        {"max_delay_s": 60},
    ],
)
def test_invalid_plans_are_refused(plan):
    with pytest.raises(ValidationError):
        FaultPlan.model_validate(plan)


@pytest.fixture
def _keep_logging():
    """``main`` configures structlog onto pytest's captured stderr; put it back."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.mark.usefixtures("_keep_logging")
def test_cli_refuses_a_bad_fault_flag_with_a_reason(capsys):
    assert main(["pump", "--crash-at", "spectrum", "--no-reactor"]) == 2
    assert "crash_at must be KIND:N" in capsys.readouterr().err
    assert main(["pump", "--fault-drop", "1.5"]) == 2
    assert "expected a probability" in capsys.readouterr().err
    assert main(["pump", "--fault-drop", "0.6", "--fault-dup", "0.6", "--no-reactor"]) == 2
    assert "add up to 1.2, more than 1" in capsys.readouterr().err


def test_cli_help_lists_every_fault_flag(capsys):
    assert main(["spectrometer", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--fault-drop", "--fault-dup", "--fault-delay", "--fault-reorder"):
        assert flag in text
    for flag in ("--fault-corrupt", "--fault-seed", "--crash-at", "--fault-file"):
        assert flag in text


def test_a_fault_file_is_read_and_flags_override_it(tmp_path):
    from drivers.cli import _fault_plan, build_parser

    path = tmp_path / "plan.json"
    path.write_text(
        '{"out": {"drop": 0.1}, "in": {"delay": 0.2}, "seed": 9, "crash_at": "spectrum:3"}'
    )
    args = build_parser().parse_args(
        ["spectrometer", "--fault-file", str(path), "--fault-dup", "0.05", "--fault-seed", "4"]
    )
    plan = _fault_plan(args)
    assert plan is not None and plan.seed == 4 and plan.crash_at == ("spectrum", 3)
    assert (plan.out.drop, plan.out.duplicate) == (0.1, 0.05)
    assert (plan.in_.delay, plan.in_.duplicate) == (0.2, 0.05)
    assert _fault_plan(build_parser().parse_args(["pump"])) is None  # nothing asked, no injector
