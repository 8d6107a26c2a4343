"""Live fuzz: a running agent (the asyncio runtime, real sockets on loopback) is
sent ``SDL_FUZZ_LIVE`` malformed or wrong inputs (default 30,000) while a
campaign runs, half to its ROUTER from a DEALER and half to its SUB from a PUB.

Each input is drawn so that its fate is known before it is sent: frames the
codec refuses (random bytes, random frame counts, mutated valid messages: the
code is what :func:`protocols.codec.decode` says here), or valid messages that
are wrong where they arrive (a source that does not match the DEALER identity,
a kind that does not belong on that socket, a source that never said hello, a
sequence number already seen). The agent must count and log exactly those
rejections, with those codes and a reason each, stay up, and finish the
campaign with every condition once. The campaign is held (the spectrometer
keeps the droplets of its first acquire) until the fuzz is accounted for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from collections import Counter
from collections.abc import Callable

import structlog
import zmq
import zmq.asyncio

from agent.core.campaign import Campaign
from agent.core.replicates import ReplicateSettings
from agent.core.testing import TOY_GRID, toy_settings, toy_spectrum
from agent.demo import find_free_base
from agent.runtime import AgentRuntime
from protocols import messages as m
from protocols.codec import decode, encode
from protocols.errors import CodecError
from protocols.sockets import Endpoints, configure

N = int(os.environ.get("SDL_FUZZ_LIVE", "30000"))
TIMEOUT = 60.0
CHUNK = 250  # inputs sent before waiting for the agent to account for them
DEALER_ID = "fuzz-d"  # the fuzzer's DEALER identity (and the source it claims there)
PUB_SOURCE = "fuzz-p"  # the source its PUB claims

Frames = list[bytes]


class Fuzzer:
    """Draws inputs and the rejection code the agent must give each."""

    def __init__(self, seed: int, condition: str) -> None:
        self.rng = random.Random(seed)
        self.condition = condition  # the condition being measured: a tempting target
        self.seq = {"dealer": 0, "pub": 0}
        self.last: dict[str, Frames] = {}  # the last input that passed the sequence check

    def draw(self, sock: str) -> tuple[Frames, str]:
        """One input for ``sock`` (``dealer`` or ``pub``) and the code it must get."""
        pick = self.rng.random()
        if pick < 0.2:
            return self._codec_refused(self._random_frames)
        if pick < 0.3:
            return self._codec_refused(self._wrong_frame_count)
        if pick < 0.6:
            return self._codec_refused(self._mutated)
        return self._wrong_where_it_arrives(sock)

    # --- refused by the codec -----------------------------------------------------

    def _codec_refused(self, make: Callable[[], Frames]) -> tuple[Frames, str]:
        for _ in range(50):
            frames = make()
            try:
                decode(frames)
            except CodecError as exc:
                return frames, exc.code
        return [b"\xff"], "malformed"  # (fifty mutations that all decoded: never seen)

    def _random_frames(self) -> Frames:
        r = self.rng
        return [r.randbytes(r.choice((0, 1, 8, 40, 300))) for _ in range(r.randint(1, 4))]

    def _wrong_frame_count(self) -> Frames:
        frames = encode(self._valid(self.rng.choice(("spectrum", "heartbeat")), "x", 0))
        # one frame short (a spectrum without its values frame), one too many, twice over
        return self.rng.choice((frames[:-1], frames[1:], [*frames, b""], frames + frames))

    def _mutated(self) -> Frames:
        r = self.rng
        kind = r.choice(("spectrum", "heartbeat", "setpoint_ack", "phase_label", "fault"))
        topic, body, *values = encode(self._valid(kind, "fuzz-m", r.randint(0, 99)))
        if values and r.random() < 0.3:  # a spectrum's binary values frame (schema v3)
            v = bytearray(values[0])
            if r.random() < 0.5:  # cut short, or grown, by a few bytes
                v = v[: r.randrange(len(v))] if r.random() < 0.5 else v + r.randbytes(3)
            else:  # a NaN or an infinity among the values
                i = 8 * r.randrange(len(v) // 8)
                v[i : i + 8] = r.choice(
                    (b"\x00\x00\x00\x00\x00\x00\xf8\x7f", b"\x00" * 6 + b"\xf0\x7f")
                )
            return [topic, body, bytes(v)]
        b = bytearray(body)
        how = r.randrange(5)
        if how == 0:  # bit flips
            for _ in range(r.randint(1, 4)):
                i = r.randrange(len(b))
                b[i] ^= 1 << r.randrange(8)
        elif how == 1:  # truncation
            del b[r.randrange(len(b)) :]
        elif how == 2:  # random bytes inserted
            i = r.randrange(len(b) + 1)
            b[i:i] = r.randbytes(r.randint(1, 16))
        elif how == 3:  # spliced with another message's tail
            other = encode(self._valid("hello", "fuzz-m", 0))[1]
            b = b[: r.randrange(len(b))] + other[r.randrange(len(other)) :]
        else:  # a field's value replaced by something of the wrong type
            doc = json.loads(body)
            key = r.choice(sorted(doc))
            doc[key] = r.choice((None, [], {}, "x" * 300, -1, 1e308 * 10, True))
            b = bytearray(json.dumps(doc).encode())
            topic = topic if r.random() < 0.8 else r.randbytes(10)
        return [topic, bytes(b), *values]

    # --- valid messages, wrong where they arrive ------------------------------------

    def _wrong_where_it_arrives(self, sock: str) -> tuple[Frames, str]:
        r = self.rng
        pick = r.random()
        if sock == "dealer":
            if pick < 0.2:  # claims another source than its identity
                return encode(self._valid("heartbeat", "pump", 0)), "identity_mismatch"
            if pick < 0.45:  # a command or a status event, from a driver
                kind = r.choice(("setpoint", "acquire", "safe_state", "proposal", "spectrum"))
                return encode(self._valid(kind, DEALER_ID, 0)), "unexpected_kind"
            kinds = ("heartbeat", "setpoint_ack", "acquire_ack", "fault")
        else:
            if pick < 0.3:  # commands, hellos and status events do not belong on events
                kind = r.choice(("setpoint", "acquire", "safe_state", "hello", "proposal"))
                return encode(self._valid(kind, PUB_SOURCE, 0)), "unexpected_kind"
            kinds = ("spectrum", "phase_label", "flow_readback", "fault", "heartbeat")
        if pick > 0.9 and sock in self.last:  # a sequence number already seen
            return self.last[sock], "duplicate"
        source = DEALER_ID if sock == "dealer" else PUB_SOURCE
        frames = encode(self._valid(r.choice(kinds), source, self.seq[sock]))
        self.seq[sock] += 1
        self.last[sock] = frames
        return frames, "no_hello"  # a driver's kind, but no hello from this source

    def _valid(self, kind: str, source: str, seq: int) -> m.Message:
        r = self.rng
        env = {"msg_id": f"fz{r.getrandbits(40):x}", "source": source, "seq": seq, "ts": 1.0}
        cmd = f"toy.{self.condition}.a1"  # real-looking command ids
        cond = self.condition
        match kind:
            case "heartbeat":
                return m.Heartbeat(**env)
            case "hello":
                return m.Hello(role="pump", session="fz", **env)
            case "fault":
                return m.Fault(code="fz", severity="fatal", detail="fuzz", **env)
            case "setpoint":
                return m.Setpoint(cmd_id=cmd, condition=cond, flows={"a": 1.0}, **env)
            case "safe_state":
                return m.SafeState(cmd_id=cmd + ".safe", **env)
            case "acquire":
                return m.Acquire(cmd_id=cmd, condition=cond, n=3, **env)
            case "setpoint_ack":
                return m.SetpointAck(cmd_id=cmd, accepted=r.random() < 0.5, **env)
            case "acquire_ack":
                return m.AcquireAck(cmd_id=cmd + ".spectrometer.0", accepted=False, **env)
            case "flow_readback":
                return m.FlowReadback(cmd_id=cmd, condition=cond, flows={}, stable=True, **env)
            case "phase_label":
                return m.PhaseLabel(condition=cond, phase="Ag-fcc", confidence=0.9, **env)
            case "proposal":
                return m.Proposal(round=1, conditions=[], **env)
            case "spectrum":  # a valid droplet for the condition being measured
                return m.Spectrum(
                    condition=cond,
                    replicate=r.randint(0, 100),
                    wl_start=TOY_GRID.start,
                    wl_step=TOY_GRID.step,
                    n_points=TOY_GRID.n,
                    values=[0.5] * TOY_GRID.n,
                    **env,
                )
        raise AssertionError(kind)


class Instrument:
    """A well-behaved driver (DEALER + XPUB); the spectrometer holds the droplets
    of its first acquire until ``release`` is set."""

    def __init__(
        self, ctx: zmq.asyncio.Context, ep: Endpoints, role: str, recipes: dict[str, dict]
    ) -> None:
        self.role = role
        self.recipes = recipes  # condition -> flows, as the pump was told (shared)
        self.dealer = configure(ctx.socket(zmq.DEALER))
        self.dealer.setsockopt(zmq.IDENTITY, role.encode())
        self.dealer.connect(ep.commands)
        self.pub = configure(ctx.socket(zmq.XPUB))
        self.pub.connect(ep.events)
        self.seq = {"dealer": 0, "pub": 0}
        self.applied: list[str] = []
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    def _env(self, sock: str) -> dict:
        self.seq[sock] += 1
        return {"msg_id": m.new_id(), "source": self.role, "seq": self.seq[sock] - 1, "ts": 1.0}

    async def tell(self, cls: type, **fields) -> None:
        await self.dealer.send_multipart(encode(cls(**fields, **self._env("dealer"))))

    async def publish(self, cls: type, **fields) -> None:
        await self.pub.send_multipart(encode(cls(**fields, **self._env("pub"))))

    async def serve(self) -> None:
        await asyncio.wait_for(self.pub.recv(), TIMEOUT)  # the agent's subscription
        await self.tell(m.Hello, role=self.role, session=m.new_id())
        replicate: Counter[str] = Counter()
        while True:
            msg = decode(await self.dealer.recv_multipart())
            if isinstance(msg, m.Hello):
                await self.tell(m.Hello, role=self.role, session=m.new_id())
            elif isinstance(msg, m.Heartbeat):
                await self.tell(m.Heartbeat)
            elif isinstance(msg, m.Setpoint | m.SafeState):
                if msg.cmd_id not in self.applied:
                    self.applied.append(msg.cmd_id)
                await self.tell(m.SetpointAck, cmd_id=msg.cmd_id, accepted=True)
                if isinstance(msg, m.Setpoint):
                    self.recipes[msg.condition] = dict(msg.flows)
                    await self.publish(
                        m.FlowReadback,
                        cmd_id=msg.cmd_id,
                        condition=msg.condition,
                        flows=msg.flows,
                        stable=True,
                    )
            elif isinstance(msg, m.Acquire):
                await self.tell(m.AcquireAck, cmd_id=msg.cmd_id, accepted=True)
                if self.role == "xrd":
                    await self.publish(
                        m.PhaseLabel, condition=msg.condition, phase="Ag-fcc", confidence=0.9
                    )
                    continue
                if not self.holding.is_set():
                    self.holding.set()
                    await self.release.wait()
                for _ in range(msg.n):
                    replicate[msg.condition] += 1
                    await self.publish(
                        m.Spectrum,
                        condition=msg.condition,
                        replicate=replicate[msg.condition] - 1,
                        wl_start=TOY_GRID.start,
                        wl_step=TOY_GRID.step,
                        n_points=TOY_GRID.n,
                        values=toy_spectrum(self.recipes[msg.condition]).tolist(),
                    )

    def close(self) -> None:
        self.dealer.close(0)
        self.pub.close(0)


async def test_the_live_agent_rejects_every_bad_input_with_its_code_and_finishes():
    ctx = zmq.asyncio.Context()
    ep = Endpoints.from_base(find_free_base())
    # generous timeouts: the spectrometer holds its droplets while the fuzz runs
    reps = ReplicateSettings(min_count=3, max_count=6, per_acquire=3, settle_window=1)
    settings = toy_settings(
        rounds=2,
        replicates=ReplicateSettings(**{**reps.__dict__, "timeout_s": 300.0}),
        heartbeat_timeout_s=300.0,
        settle_timeout_s=300.0,
    )
    campaign = Campaign(settings, seed=11)
    rt = AgentRuntime(campaign, ep, tick_interval=0.005, heartbeat_interval=0.1, context=ctx)
    recipes: dict[str, dict] = {}
    instruments = [Instrument(ctx, ep, r, recipes) for r in ("pump", "spectrometer", "xrd")]
    spectrometer = instruments[1]
    dealer = configure(ctx.socket(zmq.DEALER))
    dealer.setsockopt(zmq.IDENTITY, DEALER_ID.encode())
    pub = configure(ctx.socket(zmq.XPUB))
    pub.setsockopt(zmq.SNDHWM, 0)  # PUB drops at its high-water mark: queue instead
    greeted = 0

    async def read_greetings() -> None:  # what the agent says to the fuzzer's DEALER
        nonlocal greeted
        while True:
            frames = await dealer.recv_multipart()
            with contextlib.suppress(CodecError):
                greeted += isinstance(decode(frames), m.Hello)

    expected: Counter[str] = Counter()
    with structlog.testing.capture_logs() as logs:
        agent = asyncio.create_task(rt.run(install_signals=False))
        tasks = [asyncio.create_task(i.serve()) for i in instruments]
        try:
            await asyncio.wait_for(rt.bound.wait(), TIMEOUT)
            dealer.connect(ep.commands)
            pub.connect(ep.events)
            tasks.append(asyncio.create_task(read_greetings()))
            await asyncio.wait_for(pub.recv(), TIMEOUT)  # the agent's subscription
            await asyncio.wait_for(spectrometer.holding.wait(), TIMEOUT)
            active = next(c for c in campaign.conditions.values() if c.state == "measuring")
            assert rt.counters.rejected == 0
            fuzzer = Fuzzer(seed=20261205, condition=active.condition)
            for start in range(0, N, CHUNK):
                for k in range(start, min(start + CHUNK, N)):
                    sock = "dealer" if k % 2 == 0 else "pub"
                    frames, code = fuzzer.draw(sock)
                    expected[code] += 1
                    await (dealer if sock == "dealer" else pub).send_multipart(frames)
                sent = min(start + CHUNK, N)
                await rt.wait_until(lambda n=sent: rt.counters.rejected >= n, TIMEOUT)
            # all accounted for: exactly what was sent, code by code
            assert rt.counters.rejected == N == sum(expected.values())
            assert rt.counters.rejected_by_code == dict(expected)
            assert agent.done() is False and active.state == "measuring"
            spectrometer.release.set()
            await asyncio.wait([agent, *tasks], timeout=TIMEOUT, return_when="FIRST_COMPLETED")
            for t in tasks:  # an instrument that crashed is a bug of this test: surface it
                if t.done() and not t.cancelled():
                    t.result()
            assert agent.done(), "the campaign did not finish"
            agent.result()
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            if not agent.done():
                agent.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await agent
            for i in instruments:
                i.close()
            dealer.close(0)
            pub.close(0)
            ctx.term()
    # the campaign: finished, every condition once, nothing applied twice, the
    # fuzzer's droplets for the active condition in no median
    assert campaign.stopped and campaign.stop_reason.rule == "max_rounds"
    assert [r.state for r in campaign.conditions.values()] == ["complete"] * 8
    pump = instruments[0]
    setpoints = [c for c in pump.applied if ".safe" not in c]  # the last is the safe state
    assert len(setpoints) == len(set(setpoints)) == 8
    assert active.n_used == 3 and active.median_loss is not None
    # every rejection logged with its code and a reason; the fuzzer was greeted
    logged = [e for e in logs if e["event"] == "message_rejected" and "stream" in e]
    assert len(logged) == N and all(e["reason"] for e in logged)
    assert Counter(e["code"] for e in logged) == expected
    if N >= 1000:  # every kind of input was drawn
        assert {"malformed", "invalid", "identity_mismatch", "unexpected_kind"} <= set(expected)
        assert {"no_hello", "duplicate", "topic_mismatch"} <= set(expected)
        assert greeted > 0


def test_decode_of_random_frames_returns_a_message_or_a_codec_error():
    """The cheap loop: N random inputs straight into the codec (no sockets)."""
    fuzzer = Fuzzer(seed=7, condition="r01-c01")
    draws = (fuzzer._random_frames, fuzzer._wrong_frame_count, fuzzer._mutated)
    codes: Counter[str] = Counter()
    for k in range(N):
        frames = draws[k % 3]()
        try:
            msg = decode(frames)
        except CodecError as exc:
            assert exc.code and str(exc)
            codes[exc.code] += 1
        else:
            assert decode(encode(msg)) == msg
            codes["decoded"] += 1
    assert sum(codes.values()) == N and codes["malformed"] > 0
