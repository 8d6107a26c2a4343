"""CURVE on the agent's endpoints, with real processes and real sockets (docs/security.md).

The agent runs with ``[security]`` keys; the three simulated drivers and a
monitor hold allowed keys; rogues in this process try every endpoint without
CURVE, with a key not in the allow-list, with a monitor's key where only the
status endpoint lets it in, and with the wrong server key; and, with an
allowed driver's key, under another driver's name. Every wait is on a log
record or a process, with a timeout that fails the test. Runtime of the file:
~25-35 s (most of it starting processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

from agent.cli import main as sdl_agent_main
from agent.demo import find_free_base, start_drivers, stop_drivers
from protocols import messages as m
from protocols.codec import encode
from protocols.security import CurveKeys, load_secret_key
from protocols.sockets import Endpoints

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = ROOT / "examples" / "agnp.toml"
TIMEOUT = 60.0
ROLES = ("pump", "spectrometer", "xrd")


def sdl_agent(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from agent.cli import main; sys.exit(main())", *args]


class Records:
    """The JSON log records of a process's stderr, read as they come."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.stream = stream
        self.lines: list[str] = []
        self.records: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while line := await self.stream.readline():
            text = line.decode(errors="replace")
            self.lines.append(text)
            if text.startswith("{"):
                self.records.append(json.loads(text))
            async with self._changed:
                self._changed.notify_all()

    async def wait_for(self, pred: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((r for r in self.records if pred(r)), None)

        try:
            async with asyncio.timeout(TIMEOUT), self._changed:
                await self._changed.wait_for(lambda: found() is not None)
        except TimeoutError:
            raise AssertionError(f"no {what} in the log:\n{''.join(self.lines)[-3000:]}") from None
        rec = found()
        assert rec is not None
        return rec


async def start_agent(
    base: str, tmp_path: Path, settings: dict[str, str], env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """``sdl-agent run`` of a one-round, three-condition reference campaign on
    ``base`` with ``settings`` (``--set`` KEY=VALUE), its output in tmp_path/run."""
    sets = {
        "stop.max_rounds": "1",
        "campaign.batch_size": "3",
        "strategy.two_step.dnn_points": "1",
        **settings,
    }
    flags = [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    return await asyncio.create_subprocess_exec(
        *sdl_agent("run", str(CAMPAIGN), "--base", base, "--out", str(tmp_path / "run"), *flags),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def close_the_loop(
    agent: asyncio.subprocess.Process,
    log: Records,
    procs: dict[str, subprocess.Popen[bytes]],
    keys: Path,
    base: str,
    tmp_path: Path,
) -> bytes:
    """Start the three drivers into ``procs``, each with its own key, and wait for the
    agent to finish its campaign and exit 0; returns the agent's stdout."""
    extra = {
        r: [
            "--curve-secret-key",
            str(keys / f"{r}.key_secret"),
            "--curve-server-key",
            str(keys / "agent.key"),
        ]
        for r in ROLES
    }
    procs.update(
        start_drivers(base, time_scale=0.005, seed=0, log_dir=tmp_path / "logs", extra=extra)
    )
    assert agent.stdout is not None
    out = await asyncio.wait_for(agent.stdout.read(), TIMEOUT)
    await asyncio.wait_for(agent.wait(), TIMEOUT)
    await asyncio.wait_for(log.task, TIMEOUT)
    assert agent.returncode == 0, "".join(log.lines)[-3000:]
    return out


def _rogue(ctx: zmq.asyncio.Context, kind: int, keys: CurveKeys | None, server: bytes):
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
        sock.setsockopt(zmq.CURVE_SERVERKEY, server)
    return sock


async def _keep_sending(sock: zmq.asyncio.Socket, frames: Callable[[int], list[bytes]]) -> None:
    """What a rogue would send, as fast as its socket lets it (never blocks)."""
    n = 0
    while True:
        with contextlib.suppress(zmq.Again):
            await sock.send_multipart(frames(n), flags=zmq.NOBLOCK)
        n += 1
        await asyncio.sleep(0.02)


def _envelope(source: str, seq: int) -> dict[str, Any]:
    return {"msg_id": m.new_id(), "source": source, "seq": seq, "ts": time.time()}


def _hello(source: str, seq: int) -> list[bytes]:
    msg = m.Hello(
        **_envelope(source, seq),
        role="pump",
        session="rogue",
        instrument="rogue",
    )
    return encode(msg)


def _spectrum(seq: int, source: str = "spectrometer") -> list[bytes]:
    msg = m.Spectrum(
        **_envelope(source, seq),
        condition="r01-c01",
        replicate=10_000 + seq,
        wl_start=380.0,
        wl_step=1.0,
        n_points=421,
        values=[0.0] * 421,
    )
    return encode(msg)


@pytest.mark.e2e
async def test_unknown_keys_cannot_publish_or_receive_and_each_attempt_is_logged(tmp_path):
    keys = tmp_path / "keys"
    assert sdl_agent_main(["keys", "generate", "--dir", str(keys), "agent", *ROLES]) == 0
    assert sdl_agent_main(["keys", "generate", "--dir", str(keys), "monitor", "rogue"]) == 0
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    for role in ROLES:
        (allowed / f"{role}.key").write_bytes((keys / f"{role}.key").read_bytes())
    agent_keys = load_secret_key(keys / "agent.key_secret")
    monitor_keys = load_secret_key(keys / "monitor.key_secret")
    rogue_keys = load_secret_key(keys / "rogue.key_secret")
    secrets = [agent_keys.secret, monitor_keys.secret]
    secrets += [load_secret_key(keys / f"{r}.key_secret").secret for r in ROLES]

    base = find_free_base()
    ep = Endpoints.from_base(base)
    env = dict(os.environ)
    # the agent's secret from the environment, its allow-list a directory and a file
    env["SDL_AGENT_SECURITY__SECRET_KEY"] = agent_keys.secret.decode()
    agent = await start_agent(
        base,
        tmp_path,
        {
            "bus.status_interval_s": "0.1",
            "security.allowed_keys": f'["{allowed}"]',
            "security.monitor_keys": f'"{keys / "monitor.key"}"',
        },
        env,
    )
    # an allowed monitor, its secret from the environment too
    monitor_env = dict(os.environ, SDL_CURVE_SECRET_KEY=monitor_keys.secret.decode())
    mon_out_file = (tmp_path / "monitor.out").open("wb")
    mon_err_file = (tmp_path / "monitor.err").open("wb")
    monitor = await asyncio.create_subprocess_exec(
        *sdl_agent(
            "monitor",
            "--connect",
            ep.status,
            "--json",
            # one snapshot, not --until-stopped: PUB/SUB may lose the last event when
            # the agent closes (linger 0), which is not what this test is about
            "--once",
            "--timeout",
            str(TIMEOUT),
            "--curve-server-key",
            str(keys / "agent.key"),
            "--log-level",
            "info",
        ),
        stdout=mon_out_file,  # files, not pipes: nothing to drain, nothing to block on
        stderr=mon_err_file,
        env=monitor_env,
    )
    assert agent.stderr is not None and agent.stdout is not None
    log = Records(agent.stderr)
    ctx = zmq.asyncio.Context()
    rogues: list[zmq.asyncio.Socket] = []
    senders: list[asyncio.Task[None]] = []
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        bound = await log.wait_for(lambda r: r["event"] == "agent_bound", "agent_bound")
        assert bound["curve"] and bound["server_key"] == agent_keys.public.decode()
        # rogues, first without CURVE at all: each is refused at the handshake. Which
        # side sees the mechanism mismatch first is a race (under load, often the
        # client, which hangs up), so the reason is one of two
        plain_dealer = _rogue(ctx, zmq.DEALER, None, b"")
        plain_dealer.setsockopt(zmq.IDENTITY, b"pump")
        plain_pub = _rogue(ctx, zmq.PUB, None, b"")
        plain_sub = _rogue(ctx, zmq.SUB, None, b"")
        plain_sub.setsockopt(zmq.SUBSCRIBE, b"")
        rogues = [plain_dealer, plain_pub, plain_sub]
        plain_dealer.connect(ep.commands)
        plain_pub.connect(ep.events)
        plain_sub.connect(ep.status)
        senders = [
            asyncio.create_task(_keep_sending(plain_dealer, lambda n: _hello("pump", n))),
            asyncio.create_task(_keep_sending(plain_pub, _spectrum)),
        ]
        for stream in ("commands", "events", "status"):
            denied = await log.wait_for(
                lambda r, s=stream: (
                    r["event"] == "auth_denied" and r["stream"] == s and r["stage"] == "handshake"
                ),
                f"auth_denied (no CURVE) on {stream}",
            )
            reason = denied["reason"]
            assert reason == "zmtp_mechanism_mismatch" or reason.startswith(
                "broken off by the peer"
            )

        # then an unknown key on each endpoint, refused by the allow-list (ZAP)
        dealer = _rogue(ctx, zmq.DEALER, rogue_keys, agent_keys.public)
        dealer.setsockopt(zmq.IDENTITY, b"pump")  # it even claims to be the pump
        pub = _rogue(ctx, zmq.PUB, rogue_keys, agent_keys.public)
        sub = _rogue(ctx, zmq.SUB, rogue_keys, agent_keys.public)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        # a monitor's key, let in on the status endpoint only, tries the commands one
        snoop = _rogue(ctx, zmq.DEALER, monitor_keys, agent_keys.public)
        snoop.setsockopt(zmq.IDENTITY, b"pump")
        # and an allowed key that was given the wrong server key (an impostor's, say)
        misled = _rogue(
            ctx, zmq.DEALER, load_secret_key(keys / "pump.key_secret"), rogue_keys.public
        )
        misled.setsockopt(zmq.IDENTITY, b"pump")
        rogues += [dealer, pub, sub, snoop, misled]
        dealer.connect(ep.commands)
        pub.connect(ep.events)
        sub.connect(ep.status)
        misled.connect(ep.commands)
        snoop.connect(ep.commands)
        senders += [
            asyncio.create_task(_keep_sending(dealer, lambda n: _hello("pump", n))),
            asyncio.create_task(_keep_sending(pub, _spectrum)),
            asyncio.create_task(_keep_sending(misled, lambda n: _hello("pump", n))),
            asyncio.create_task(_keep_sending(snoop, lambda n: _hello("pump", n))),
        ]
        rogue_key = rogue_keys.public.decode()
        for stream in ("commands", "events", "status"):
            denied = await log.wait_for(
                lambda r, s=stream: (
                    r["event"] == "auth_denied" and r["stream"] == s and r["stage"] == "zap"
                ),
                f"auth_denied on {stream}",
            )
            assert denied["client_key"] == rogue_key and denied["reason"] == "Unknown key"
            assert denied["peer"] == "127.0.0.1" and denied["mechanism"] == "CURVE"
        await log.wait_for(
            lambda r: r["event"] == "auth_denied" and r["reason"] == "zmtp_cryptographic",
            "auth_denied (wrong server key)",
        )
        await log.wait_for(
            lambda r: (
                r["event"] == "auth_denied"
                and r["stream"] == "commands"
                and r.get("client_key") == monitor_keys.public.decode()
            ),
            "auth_denied (a monitor's key on the commands endpoint)",
        )

        # the allowed monitor gets its snapshot over CURVE before the drivers start: it
        # may have been started before the agent bound, and its reconnects back off
        # to 2 s, longer than this campaign at time scale 0.005 can last
        await asyncio.wait_for(monitor.wait(), TIMEOUT)
        # the allowed drivers close the loop over CURVE while the rogues keep trying
        out = await close_the_loop(agent, log, procs, keys, base, tmp_path)
        await asyncio.wait_for(monitor.wait(), TIMEOUT)
        mon_out = (tmp_path / "monitor.out").read_bytes()
        mon_err = (tmp_path / "monitor.err").read_bytes()
        assert monitor.returncode == 0, mon_err.decode()[-2000:]
        # nothing reached the rogue subscribers, with or without a key
        for s in (sub, plain_sub):
            assert await s.poll(timeout=0) == 0
        # and the rogue senders were still at it when the campaign ended
        assert not [t.exception() for t in senders if t.done()]
    except TimeoutError:
        denials = [r for r in log.records if r["event"] == "auth_denied"]
        monitor_err = (tmp_path / "monitor.err").read_text()[-2000:]
        raise AssertionError(
            f"timed out; the agent's denials:\n{denials}\nthe agent's log:\n"
            f"{''.join(log.lines)[-3000:]}\nthe monitor's log:\n{monitor_err}"
        ) from None
    finally:
        for t in senders:
            t.cancel()
        for s in rogues:
            s.close(linger=0)
        ctx.term()
        for p in (agent, monitor):
            if p.returncode is None:
                p.kill()
                await asyncio.wait_for(p.wait(), TIMEOUT)
        mon_out_file.close()
        mon_err_file.close()
        stop_drivers(procs)

    summary = out.decode()
    assert "conditions 3 complete / 0 failed" in summary, summary
    assert "messages in, 0 rejected" in summary  # no rogue message was even seen
    events = [r["event"] for r in log.records]
    hellos = [r for r in log.records if r["event"] == "driver_hello"]
    assert sorted(h["source"] for h in hellos) == sorted(ROLES)
    assert all(h["session"] != "rogue" for h in hellos)
    # on the bus, nothing was refused: the rogues never got that far
    assert not [r for r in log.records if r["event"] == "message_rejected" and "stream" in r]
    assert "sequence_gap" not in events
    assert events.count("campaign_stopped") >= 1
    status = [json.loads(line) for line in mon_out.decode().splitlines()]
    assert [s["kind"] for s in status] == ["campaign_status"]  # the monitor got in

    # no secret in any log line, output or the journal (env-provided ones included)
    texts = [b"".join(x.encode() for x in log.lines), out, mon_out, mon_err]
    texts += [(tmp_path / "logs" / f"{r}.log").read_bytes() for r in ROLES]
    texts.append((tmp_path / "run" / "journal.sqlite").read_bytes())
    for secret in secrets:
        assert not any(secret in t for t in texts)
    assert rogue_keys.public in texts[0]  # public keys are logged, the refused client's too


@pytest.mark.e2e
async def test_a_driver_key_is_refused_under_another_drivers_name_and_the_rightful_ones_finish(
    tmp_path,
):
    """The spectrometer's (allowed) key says hello as the pump, says hello in the
    pump's role under its own name, and publishes spectra as the pump: each is
    refused as ``key_mismatch`` and logged, the agent keeps running, and the real
    drivers, each with its own key, complete the campaign meanwhile."""
    keys = tmp_path / "keys"
    assert sdl_agent_main(["keys", "generate", "--dir", str(keys), "agent", *ROLES]) == 0
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    for role in ROLES:
        (allowed / f"{role}.key").write_bytes((keys / f"{role}.key").read_bytes())
    agent_keys = load_secret_key(keys / "agent.key_secret")
    spectrometer_keys = load_secret_key(keys / "spectrometer.key_secret")

    base = find_free_base()
    ep = Endpoints.from_base(base)
    agent = await start_agent(
        base,
        tmp_path,
        {
            "security.secret_key_file": f'"{keys / "agent.key_secret"}"',
            "security.allowed_keys": f'["{allowed}"]',
        },
    )
    assert agent.stderr is not None and agent.stdout is not None
    log = Records(agent.stderr)
    ctx = zmq.asyncio.Context()
    rogues: list[zmq.asyncio.Socket] = []
    senders: list[asyncio.Task[None]] = []
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def refused(stream: str, kind: str, source: str) -> Callable[[dict[str, Any]], bool]:
        return lambda r: (
            r["event"] == "message_rejected"
            and r.get("code") == "key_mismatch"
            and (r["stream"], r.get("kind"), r.get("source")) == (stream, kind, source)
        )

    try:
        await log.wait_for(lambda r: r["event"] == "agent_bound", "agent_bound")
        # before the drivers start (a DEALER under a driver's identity would take its
        # route on the ROUTER): hellos with the spectrometer's key, as the pump and,
        # under its own name, in the pump's role
        as_pump = _rogue(ctx, zmq.DEALER, spectrometer_keys, agent_keys.public)
        as_pump.setsockopt(zmq.IDENTITY, b"pump")
        in_pump_role = _rogue(ctx, zmq.DEALER, spectrometer_keys, agent_keys.public)
        in_pump_role.setsockopt(zmq.IDENTITY, b"spectrometer")
        rogues += [as_pump, in_pump_role]
        as_pump.connect(ep.commands)
        in_pump_role.connect(ep.commands)
        hellos = [
            asyncio.create_task(_keep_sending(as_pump, lambda n: _hello("pump", n))),
            asyncio.create_task(_keep_sending(in_pump_role, lambda n: _hello("spectrometer", n))),
        ]
        senders += hellos
        rec = await log.wait_for(refused("commands", "hello", "pump"), "hello as the pump refused")
        assert rec["peer"] == "pump"
        assert rec["reason"] == "the key of 'spectrometer' may not send as 'pump'"
        rec = await log.wait_for(
            refused("commands", "hello", "spectrometer"), "hello in the pump's role refused"
        )
        assert rec["reason"] == "the key of 'spectrometer' may not say hello as the 'pump' role"
        for t in hellos:
            t.cancel()
        for s in (as_pump, in_pump_role):
            s.close(linger=0)

        # spectra as the pump, with the spectrometer's key, all campaign long
        pub = _rogue(ctx, zmq.PUB, spectrometer_keys, agent_keys.public)
        rogues.append(pub)
        pub.connect(ep.events)
        senders.append(asyncio.create_task(_keep_sending(pub, lambda n: _spectrum(n, "pump"))))
        await log.wait_for(refused("events", "spectrum", "pump"), "a spectrum as the pump refused")
        for stream, source in (
            ("commands", "pump"),
            ("commands", "spectrometer"),
            ("events", "pump"),
        ):
            denied = await log.wait_for(
                lambda r, st=stream, so=source: (
                    r["event"] == "auth_denied"
                    and r["stage"] == "message"
                    and (r["stream"], r["source"]) == (st, so)
                ),
                f"auth_denied (stage=message) on {stream} as {source}",
            )
            assert denied["key_name"] == "spectrometer" and denied["level"] == "warning"

        # the rightful drivers, each with its own key, close the loop meanwhile
        out = await close_the_loop(agent, log, procs, keys, base, tmp_path)
        assert not senders[-1].done()  # the rogue was still publishing at the end
    finally:
        for t in senders:
            t.cancel()
        for s in rogues:
            s.close(linger=0)
        ctx.term()
        if agent.returncode is None:
            agent.kill()
            await asyncio.wait_for(agent.wait(), TIMEOUT)
        stop_drivers(procs)

    summary = out.decode()
    assert "conditions 3 complete / 0 failed" in summary, summary
    # on the bus (the campaign's own refusals of replicates have no stream), every
    # refusal was the rogue's: nothing the rightful drivers sent was refused
    rejected = [r for r in log.records if r["event"] == "message_rejected" and "stream" in r]
    assert rejected and {r["code"] for r in rejected} == {"key_mismatch"}
    assert {(r["stream"], r["kind"], r["source"]) for r in rejected} == {
        ("commands", "hello", "pump"),
        ("commands", "hello", "spectrometer"),
        ("events", "spectrum", "pump"),
    }
    assert re.search(rf"messages in, {len(rejected)} rejected", summary), summary
    hellos_in = [r for r in log.records if r["event"] == "driver_hello"]
    assert sorted((h["source"], h["role"]) for h in hellos_in) == [(r, r) for r in ROLES]
    assert all(h["session"] != "rogue" for h in hellos_in)


def test_keys_generate_writes_a_private_secret_and_never_overwrites(tmp_path, capsys):
    d = tmp_path / "keys"
    assert sdl_agent_main(["keys", "generate", "--dir", str(d), "agent", "pump"]) == 0
    for name in ("agent", "pump"):
        public, secret = d / f"{name}.key", d / f"{name}.key_secret"
        assert secret.stat().st_mode & 0o777 == 0o600
        assert public.stat().st_mode & 0o777 == 0o644
        keys = load_secret_key(secret)
        assert keys.public.decode() in public.read_text()
        assert keys.secret.decode() not in public.read_text()
    assert sorted(p.name for p in d.iterdir()) == [
        "agent.key",
        "agent.key_secret",
        "pump.key",
        "pump.key_secret",
    ]  # no temporary left behind
    before = (d / "pump.key_secret").read_bytes()
    capsys.readouterr()
    assert sdl_agent_main(["keys", "generate", "--dir", str(d), "xrd", "pump"]) == 2
    err = capsys.readouterr().err
    assert "pump.key" in err and "refusing to overwrite" in err
    assert (d / "pump.key_secret").read_bytes() == before
    (d / "pump.key_secret").chmod(0o644)  # a secret others can read is refused
    with pytest.raises(Exception, match="chmod 600"):
        load_secret_key(d / "pump.key_secret")


@pytest.mark.e2e
def test_non_loopback_bind_without_keys_refuses_and_insecure_starts_with_a_warning(tmp_path):
    port = Endpoints.from_base(find_free_base("0.0.0.0")).commands.rsplit(":", 1)[1]
    base = f"tcp://0.0.0.0:{port}"

    def start(cmd: list[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(out: str, *more: str) -> list[str]:
        return sdl_agent("run", str(CAMPAIGN), "--base", base, "--out", str(tmp_path / out), *more)

    # all three at once: each process takes a second or two to import
    refused = start(run("refused"))
    driver = start([sys.executable, "-m", "drivers", "pump", "--connect", "tcp://192.0.2.1:5560"])
    agent = start(run("insecure", "--insecure"))
    procs = (refused, driver, agent)
    try:
        _, err = refused.communicate(timeout=TIMEOUT)
        assert refused.returncode == 2
        assert "not on loopback" in err and "--insecure" in err
        assert not (tmp_path / "refused").exists()  # refused before anything was written
        _, err = driver.communicate(timeout=TIMEOUT)
        assert driver.returncode == 2 and "--insecure" in err

        assert agent.stderr is not None
        seen: list[dict[str, Any]] = []
        while not any(r["event"] == "agent_bound" for r in seen):
            line = agent.stderr.readline()  # the test's timeout bounds this
            assert line, f"the agent ended: {seen}"
            if line.startswith("{"):
                seen.append(json.loads(line))
        warned = [r for r in seen if r["event"] == "insecure_endpoints"]
        assert warned and warned[0]["level"] == "warning"
        assert base in warned[0]["endpoints"]
        assert next(r for r in seen if r["event"] == "agent_bound")["curve"] is False
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=TIMEOUT)
        assert agent.returncode == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_security_config_reads_keys_and_never_shows_a_secret(tmp_path):
    from agent.config import CampaignConfig, ConfigError
    from agent.journal import config_hash, run_meta

    keys = tmp_path / "keys"
    assert sdl_agent_main(["keys", "generate", "--dir", str(keys), "agent", "pump"]) == 0
    agent = load_secret_key(keys / "agent.key_secret")
    plain = CampaignConfig.from_toml(CAMPAIGN, env={})
    assert plain.server_security() is None  # no [security]: plain text

    env = {"SDL_AGENT_SECURITY__SECRET_KEY": agent.secret.decode()}
    monitor = CurveKeys.generate()
    (keys / "watchers").mkdir()
    (keys / "watchers" / "m.key").write_text(
        f'curve\n    public-key = "{monitor.public.decode()}"\n'
    )
    cfg = CampaignConfig.from_toml(
        CAMPAIGN,
        env=env,
        overrides={
            "security.allowed_keys": f'"{keys / "pump.key"}"',
            "security.monitor_keys": f'"{keys / "watchers"}"',
        },
    )
    server = cfg.server_security()
    assert server is not None and server.keys == agent
    assert server.allowed == {load_secret_key(keys / "pump.key_secret").public}
    assert server.names == {load_secret_key(keys / "pump.key_secret").public: "pump"}
    assert server.monitors == {monitor.public}
    for text in (repr(cfg), str(cfg), cfg.model_dump_json(), repr(server), *run_meta(cfg).values()):
        assert agent.secret.decode() not in text
    assert config_hash(cfg, 0) == config_hash(plain, 0)  # keys may change across a resume
    shown = subprocess.run(
        sdl_agent("validate", str(CAMPAIGN), "--set", f'security.allowed_keys="{keys}"'),
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert shown.returncode == 0, shown.stderr
    assert (
        f"security: CURVE, agent key {agent.public.decode()}, 2 driver key(s) (agent, pump)"
        in shown.stdout
    )
    assert agent.secret.decode() not in shown.stdout + shown.stderr

    by_file = {"security.secret_key_file": f'"{keys / "agent.key_secret"}"'}
    refusals = {
        "secret_key_file or secret_key, not both": (env, by_file),
        "needs allowed_keys": (env, {}),
        "need the agent's secret_key_file": ({}, {"security.allowed_keys": f'"{keys}"'}),
        "monitor_keys need": ({}, {"security.monitor_keys": f'"{keys / "pump.key"}"'}),
        "not a CURVE secret key": (
            {"SDL_AGENT_SECURITY__SECRET_KEY": agent.secret.decode()[:-1]},
            {"security.allowed_keys": f'"{keys}"'},
        ),
        "no such file": ({}, {**by_file, "security.allowed_keys": f'"{tmp_path / "nowhere"}"'}),
        "holds no *.key": ({}, {**by_file, "security.allowed_keys": f'"{tmp_path}"'}),
    }
    for why, (env_, overrides) in refusals.items():
        with pytest.raises(ConfigError, match=re.escape(why)) as err:
            CampaignConfig.from_toml(CAMPAIGN, env=env_, overrides=overrides)
        assert agent.secret.decode()[:20] not in str(err.value)
    (keys / "agent.key_secret").chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        CampaignConfig.from_toml(
            CAMPAIGN, env={}, overrides={**by_file, "security.allowed_keys": f'"{keys}"'}
        )


def test_every_socket_the_agent_drivers_and_monitor_open_gets_the_max_message_size():
    """An audit of the source: each ``<ctx>.socket(zmq.KIND)`` is wrapped in
    ``protocols.sockets.configure`` (linger and MAXMSGSIZE). Shadows share the
    configured socket; the monitor and ZAP sockets are inproc (no size to bound)."""
    import ast

    opened, unconfigured = [], []
    for package in ("agent", "drivers", "protocols"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            configured = {
                id(node.args[0])
                for node in ast.walk(tree)
                if isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) == "configure"
                and node.args
            }
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "socket"
                    and node.args
                    and ast.unparse(node.args[0]).startswith("zmq.")
                ):
                    where = f"{path.relative_to(ROOT)}:{node.lineno}"
                    opened.append(where)
                    if id(node) not in configured:
                        unconfigured.append(where)
    assert len(opened) >= 8  # agent ROUTER/SUB/PUB, monitor SUB, driver DEALER/XPUB, reactor x2
    assert not unconfigured, f"sockets without protocols.sockets.configure: {unconfigured}"
