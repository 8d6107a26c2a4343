"""The simulated spectrometer and XRD, fed by the pump's reactor stream."""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from drivers.faults import ModelError
from drivers.spectrometer import DropletNoise, Grid, droplet, droplet_rng
from protocols.codec import spectrum_array
from protocols.messages import MAX_REPLICATE, Acquire, Heartbeat, Setpoint

if TYPE_CHECKING:
    from conftest import DriverProcess, FakeAgent, StartDriver

TOY = "toy_world:toy_world"
FAST = ["--time-scale", "0.01", "--heartbeat", "0.05", "--heartbeat-timeout", "20"]
C1 = {"agno3": 200.0, "pva": 100.0, "tsc": 50.0, "seed": 20.0, "water": 100.0, "oil": 300.0}
C2 = {"pva": 100.0, "seed": 50.0, "water": 300.0, "oil": 300.0}  # no AgNO3


def _start(start_driver: StartDriver, agent: FakeAgent, role: str, *extra: str) -> DriverProcess:
    return start_driver(role, "--connect", agent.base, *FAST, *extra)


async def _set(agent: FakeAgent, cmd_id: str, condition: str, flows: dict[str, float]) -> Any:
    await agent.send(b"pump", Setpoint, cmd_id=cmd_id, condition=condition, flows=flows)
    return await agent.event(lambda m: m.cmd_id == cmd_id and m.stable, kind="flow_readback")


# --- in-process: the droplet model ------------------------------------------------------


def test_grid_parses_and_counts_points() -> None:
    assert Grid.parse("380:800:1").n_points == 421
    assert Grid.parse("400:700:2.5").wavelengths()[-1] == 700.0
    with pytest.raises(ValueError):
        Grid.parse("800:380:1")


def test_a_droplet_is_a_function_of_seed_condition_and_replicate(toy_world: Any) -> None:
    model, wl, noise = toy_world.toy_world(), Grid().wavelengths(), DropletNoise()
    a, _ = droplet(model, C1, wl, droplet_rng(0, "c1", 3), noise)
    b, _ = droplet(model, C1, wl, droplet_rng(0, "c1", 3), noise)
    c, _ = droplet(model, C1, wl, droplet_rng(0, "c1", 4), noise)
    d, _ = droplet(model, C1, wl, droplet_rng(1, "c1", 3), noise)
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(a, d)


def test_droplet_noise_has_the_documented_size(toy_world: Any) -> None:
    model, wl = toy_world.toy_world(), Grid().wavelengths()
    clean = DropletNoise(outlier_rate=0.0)
    mean = model.spectrum(C1, wl)
    drops = np.array([droplet(model, C1, wl, droplet_rng(0, "c", k), clean)[0] for k in range(400)])
    baseline = drops[:, -1]  # the band is far from 800 nm: what is left is baseline + noise
    assert abs(baseline.mean() - clean.baseline_mean) < 0.005
    assert baseline.min() >= clean.baseline_range[0] - 0.03
    assert abs(drops.max(axis=1).mean() / mean.max() - 1) < 0.1
    kinds = [droplet(model, C1, wl, droplet_rng(0, "c", k), DropletNoise())[1] for k in range(1000)]
    outliers = sum(k != "droplet" for k in kinds) / len(kinds)
    assert 0.015 < outliers < 0.05 and {"bubble", "doublet"} <= set(kinds)


def test_droplet_loss_spread_is_near_the_study() -> None:
    """Clean droplets of the reference world: median SD of the study's loss near 0.022."""
    world = pytest.importorskip("drivers.world")
    model, wl, clean = world.agnp_world(0), Grid().wavelengths(), DropletNoise(outlier_rate=0.0)
    target = minmax(1.2 / (1 + ((wl - 640.0) / 75.0) ** 2))  # a prism-like band at 640 nm
    rng = np.random.default_rng(1)
    sds = []
    for c in range(20):
        recipe = rng.uniform([4, 10, 4, 4, 200], [20, 40, 20, 20, 1000])
        flows = world.flows_from_recipe(*recipe)
        drops = [droplet(model, flows, wl, droplet_rng(0, f"c{c}", k), clean)[0] for k in range(15)]
        sds.append(np.std([study_loss(target, d) for d in drops], ddof=1))
    assert 0.008 < float(np.median(sds)) < 0.05


def minmax(s: np.ndarray) -> np.ndarray:
    return (s - s.min()) / (s.max() - s.min())


def study_loss(target_scaled: np.ndarray, spectrum: np.ndarray) -> float:
    """``1 - delta(A) cos(minmax(target), minmax(spectrum))`` (AGNP_FACTS.md)."""
    a = float(spectrum.max())
    delta = a / 0.7 if a < 0.7 else (1.0 if a <= 1.2 else 0.0)
    s = minmax(spectrum)
    return 1.0 - delta * float(
        target_scaled @ s / np.linalg.norm(target_scaled) / np.linalg.norm(s)
    )


def test_a_bad_model_is_a_model_error() -> None:
    class Wrong:
        def spectrum(self, flows: Any, wavelengths: np.ndarray) -> np.ndarray:
            return np.zeros(3)

    with pytest.raises(ModelError):
        droplet(Wrong(), C1, Grid().wavelengths(), droplet_rng(0, "c", 0), DropletNoise(0))


# --- processes --------------------------------------------------------------------------


@pytest.mark.e2e
async def test_acquire_publishes_n_spectra_per_droplet(
    agent: FakeAgent, start_driver: StartDriver, reactor: str, toy_world: Any
) -> None:
    _start(start_driver, agent, "pump", "--reactor", reactor)
    _start(start_driver, agent, "spectrometer", "--reactor", reactor, "--model", TOY)
    for name in (b"pump", b"spectrometer"):
        await agent.greet(name)
    stable = await _set(agent, "s1", "c1", C1)

    await agent.send(b"spectrometer", Acquire, cmd_id="a1", condition="c1", n=5)
    ack = await agent.reply(kind="acquire_ack", source=b"spectrometer")
    assert (ack.cmd_id, ack.accepted) == ("a1", True)
    spectra = [await agent.event(kind="spectrum") for _ in range(5)]
    await agent.send(b"spectrometer", Acquire, cmd_id="a2", condition="c1", n=3)
    spectra += [await agent.event(kind="spectrum") for _ in range(3)]

    assert [s.replicate for s in spectra] == list(range(8))  # no first: it numbers them
    assert [s.acquire_id for s in spectra] == ["a1"] * 5 + ["a2"] * 3  # each names its acquire
    for s in spectra:
        assert s.condition == "c1" and s.source == "spectrometer"
        values = spectrum_array(s)
        assert (s.wl_start, s.wl_step, s.n_points, values.size) == (380.0, 1.0, 421, 421)
        assert all(math.isfinite(v) for v in values)
    # deterministic: the same droplets, recomputed here from seed, condition and replicate
    wl, model = Grid().wavelengths(), toy_world.toy_world()
    for s in spectra:
        again, _ = droplet(
            model, stable.flows, wl, droplet_rng(0, "c1", s.replicate), DropletNoise()
        )
        assert np.array_equal(spectrum_array(s), again)  # bit for bit: raw doubles

    # a duplicate acquire is answered again but not measured again
    await agent.send(b"spectrometer", Acquire, cmd_id="a1", condition="c1", n=5)
    dup = await agent.reply(lambda m: m.cmd_id == "a1", kind="acquire_ack")
    assert (dup.cmd_id, dup.accepted, dup.reason) == (ack.cmd_id, ack.accepted, ack.reason)
    await agent.send(b"spectrometer", Acquire, cmd_id="a3", condition="c1", n=1)
    assert (await agent.event(kind="spectrum")).replicate == 8


@pytest.mark.e2e
async def test_a_restarted_spectrometer_numbers_its_droplets_from_the_acquires_first(
    agent: FakeAgent, start_driver: StartDriver, reactor: str
) -> None:
    _start(start_driver, agent, "pump", "--reactor", reactor)
    args = ("--reactor", reactor, "--model", TOY)
    spec = _start(start_driver, agent, "spectrometer", *args)
    await agent.greet(b"pump")
    hello = await agent.greet(b"spectrometer")
    await _set(agent, "s1", "c1", C1)
    await agent.send(b"spectrometer", Acquire, cmd_id="a1", condition="c1", n=3, first=0)
    spectra = [await agent.event(kind="spectrum") for _ in range(3)]
    assert await spec.terminate() == 0

    _start(start_driver, agent, "spectrometer", *args)  # a new process, nothing remembered
    await agent.reply(  # the new session's hello
        lambda m: m.session != hello.session, kind="hello", source=b"spectrometer"
    )
    await agent.send(b"spectrometer", Heartbeat)
    await agent.send(b"spectrometer", Acquire, cmd_id="a2", condition="c1", n=2, first=3)
    spectra += [await agent.event(kind="spectrum") for _ in range(2)]
    assert [(s.replicate, s.acquire_id) for s in spectra] == [
        (0, "a1"), (1, "a1"), (2, "a1"), (3, "a2"), (4, "a2"),
    ]  # fmt: skip
    # without first it numbers them itself, per condition: from 0 again after its restart
    await agent.send(b"spectrometer", Acquire, cmd_id="a3", condition="c1", n=1)
    late = await agent.event(kind="spectrum")
    assert (late.replicate, late.acquire_id) == (0, "a3")


@pytest.mark.e2e
async def test_xrd_labels_arrive_late_for_each_condition(
    agent: FakeAgent, start_driver: StartDriver, reactor: str
) -> None:
    _start(start_driver, agent, "pump", "--reactor", reactor)
    _start(start_driver, agent, "xrd", "--reactor", reactor, "--model", TOY, "--latency", "20")
    for name in (b"pump", b"xrd"):
        await agent.greet(name)
    await _set(agent, "s1", "c1", C1)
    await _set(agent, "s2", "c2", C2)

    for cmd_id, condition in (("x1", "c1"), ("x2", "c2")):  # both in flight at once
        await agent.send(b"xrd", Acquire, cmd_id=cmd_id, condition=condition)
    acks = [await agent.reply(kind="acquire_ack", source=b"xrd") for _ in range(2)]
    assert all(a.accepted for a in acks)
    labels = {}
    for _ in range(2):
        label = await agent.event(kind="phase_label")
        labels[label.condition] = label
    assert labels["c1"].phase == "Ag-fcc" and labels["c2"].phase == "none"
    assert abs(labels["c1"].confidence - 0.9) < 0.15 and 0.0 <= labels["c2"].confidence <= 1.0
    assert min(lb.ts for lb in labels.values()) - max(a.ts for a in acks) >= 0.15, "late"


@pytest.mark.e2e
async def test_acquire_without_a_stable_condition_reports_a_fault(
    agent: FakeAgent, start_driver: StartDriver, reactor: str
) -> None:
    _start(start_driver, agent, "pump", "--reactor", reactor)
    spec = _start(
        start_driver, agent, "spectrometer", "--reactor", reactor, "--model", TOY,
        "--max-droplets", "3",
    )  # fmt: skip
    xrd = _start(start_driver, agent, "xrd", "--reactor", reactor, "--model", TOY)
    for name, n in ((b"spectrometer", 2), (b"xrd", 1)):
        await agent.greet(name)
        # past the instrument's own limit: refused with a reason, on the wire
        await agent.send(name, Acquire, cmd_id=f"{name.decode()}-0", condition="never", n=n + 2)
        ack = await agent.reply(kind="acquire_ack", source=name)
        assert not ack.accepted and f"n={n + 2}" in ack.reason, ack
        await agent.send(name, Acquire, cmd_id=f"{name.decode()}-1", condition="never", n=n)
        ack = await agent.reply(lambda m: m.cmd_id.endswith("-1"), kind="acquire_ack", source=name)
        assert ack.accepted, "accepted first; the fault comes when the wait times out"
    faults = {
        name: await agent.reply(kind="fault", source=name) for name in (b"spectrometer", b"xrd")
    }
    assert faults[b"spectrometer"].code == "condition_not_stable"
    assert faults[b"xrd"].code == "condition_unknown"
    assert all("never" in f.detail for f in faults.values())
    assert not any(m.kind == "spectrum" for m in agent.events)
    assert await asyncio.gather(spec.terminate(), xrd.terminate()) == [0, 0]


@pytest.mark.parametrize(
    ("role", "n", "refused"),
    [
        ("spectrometer", 1, False),
        ("spectrometer", 4, False),
        ("spectrometer", 5, True),  # above --max-droplets 4
        ("spectrometer", 1000, True),  # the most the wire allows
        ("xrd", 2, True),  # n=1 is accepted: the e2e test above  # one label per acquire
        ("xrd", 1000, True),
    ],
)
async def test_detectors_refuse_acquires_past_their_own_limits(
    role: str, n: int, refused: bool, toy_world: Any
) -> None:
    from drivers.spectrometer import SimulatedSpectrometer
    from drivers.xrd import SimulatedXrd

    model = toy_world.toy_world()
    reactor = "tcp://127.0.0.1:9"  # never connected: the verdict comes first
    instrument = (
        SimulatedSpectrometer(model, reactor=reactor, max_droplets=4)
        if role == "spectrometer"
        else SimulatedXrd(model, reactor=reactor)
    )
    verdict = await instrument.on_acquire(Acquire(**_envelope(), cmd_id="a", condition="c", n=n))
    assert verdict.accepted is not refused
    if refused:
        assert f"n={n}" in verdict.reason and role in verdict.reason.lower()


@pytest.mark.parametrize(
    ("first", "n", "refused"),
    [(0, 5, False), (MAX_REPLICATE - 4, 5, False), (MAX_REPLICATE - 3, 5, True)],
)
async def test_the_spectrometer_refuses_droplets_numbered_past_what_a_spectrum_may_carry(
    first: int, n: int, refused: bool, toy_world: Any
) -> None:
    from drivers.spectrometer import SimulatedSpectrometer

    instrument = SimulatedSpectrometer(toy_world.toy_world(), reactor="tcp://127.0.0.1:9")
    acquire = Acquire(**_envelope(), cmd_id="a", condition="c", n=n, first=first)
    verdict = await instrument.on_acquire(acquire)
    assert verdict.accepted is not refused
    if refused:
        assert str(MAX_REPLICATE) in verdict.reason and str(first) in verdict.reason


def test_max_droplets_must_be_at_least_one(toy_world: Any) -> None:
    from drivers.spectrometer import SimulatedSpectrometer

    with pytest.raises(ValueError, match="max_droplets"):
        SimulatedSpectrometer(toy_world.toy_world(), reactor="tcp://127.0.0.1:9", max_droplets=0)


def _envelope() -> dict[str, Any]:
    import time

    from protocols.messages import new_id

    return {"msg_id": new_id(), "source": "agent", "seq": 0, "ts": time.time()}
