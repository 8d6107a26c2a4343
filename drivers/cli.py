"""``python -m drivers ROLE ...``: run one simulated instrument as a driver process.

The agent's CLI runs the same thing as ``sdl-agent driver ROLE ...``; both end
in :func:`main`. Exit codes: 0 after a clean shutdown (SIGINT/SIGTERM), 2 for a
bad command line or an instrument that cannot start (model not importable,
reactor port taken), 1 if the runtime itself failed.

>>> main(["pump", "--help"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import structlog
import zmq
from pydantic import ValidationError

from drivers.faults import ModelError
from drivers.inject import FAULT_KINDS, FaultPlan
from drivers.logs import LEVELS, configure_logging
from drivers.pump import DEFAULT_CHANNELS, REACTOR_PORT_OFFSET, Channel, SimulatedPump
from drivers.runtime import Instrument, RuntimeSettings, run_driver
from drivers.spectrometer import DropletNoise, Grid, SimulatedSpectrometer, SpectrumModel
from drivers.world import load_model
from drivers.xrd import PhaseModel, SimulatedXrd
from protocols.security import CurveClient, KeyFileError, insecure_refusal
from protocols.sockets import DEFAULT_BASE, Endpoints

__all__ = ["build_parser", "default_reactor", "load_forward_model", "main"]

DEFAULT_MODEL = "drivers.world:agnp_world"

log = structlog.get_logger("drivers.cli")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the driver, return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return int(exc.code or 0)
    name = args.name or args.role
    configure_logging(args.log_level, source=name, role=args.role)
    try:
        curve = CurveClient.from_files(args.curve_secret_key, args.curve_server_key)
        settings = RuntimeSettings(
            connect=args.connect,
            name=name,
            heartbeat_s=args.heartbeat,
            heartbeat_timeout_s=args.heartbeat_timeout,
            command_timeout_s=args.command_timeout,
            faults=_fault_plan(args),
            curve=curve,
        )
        _check_plain_text(args, curve)
        instrument = _BUILDERS[args.role](args)
    except (ValueError, TypeError, ModelError, OSError, KeyFileError) as exc:
        log.error("driver_config_invalid", error=str(exc))
        print(f"{parser.prog} {args.role}: error: {exc}", file=sys.stderr)
        return 2
    try:
        return run_driver(instrument, settings)
    except zmq.ZMQError as exc:
        log.error("driver_socket_failed", error=str(exc))
        return 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m drivers`` (one sub-command per role)."""
    parser = argparse.ArgumentParser(
        prog="python -m drivers",
        description=(
            "Run one simulated instrument as a driver process on the agent's ZeroMQ bus. "
            "The agent binds; the driver connects a DEALER to the commands port P and an XPUB "
            "to the events port P+1 of --connect."
        ),
        epilog=(
            "Simulation only: the pump binds a 'reactor' stream (default "
            f"tcp://127.0.0.1:P+{REACTOR_PORT_OFFSET}) that the simulated spectrometer and "
            "XRD subscribe to, to learn what is flowing. It is not part of the agent protocol. "
            "See docs/drivers.md."
        ),
    )
    roles = parser.add_subparsers(dest="role", required=True, metavar="ROLE")

    pump = roles.add_parser(
        "pump",
        help="a multi-channel pump with hard limits and ramps",
        description="Simulated pump: setpoints within hard limits, linear ramps, "
        "at-most-once application of each cmd_id, safe state on command or link loss.",
    )
    _common(pump)
    pump.add_argument(
        "--channel",
        action="append",
        metavar="NAME:MIN:MAX",
        type=_channel,
        help="a channel and its hard limits in uL/min; repeat for each channel. Given at "
        "least once, these are the pump's channels; default: "
        + ", ".join(f"{c.name}:{c.min_flow:g}:{c.max_flow:g}" for c in DEFAULT_CHANNELS)
        + " (examples/agnp.toml).",
    )
    pump.add_argument(
        "--safe-flows",
        default="zero",
        metavar="zero|NAME=FLOW,...",
        help="flows of the safe state, e.g. a purge recipe water=50,oil=25; unnamed channels "
        "0, every flow within its channel's limits (default: zero, every channel 0).",
    )
    pump.add_argument(
        "--ramp",
        type=_nonneg,
        default=2.0,
        metavar="S",
        help="simulated seconds to ramp to a new setpoint, times --time-scale (default: 2.0).",
    )
    pump.add_argument(
        "--readback-interval",
        type=_positive,
        default=0.2,
        metavar="S",
        help="simulated seconds between readbacks while ramping (default: 0.2).",
    )
    pump.add_argument(
        "--readback-period",
        type=_nonneg,
        default=1.0,
        metavar="S",
        help="wall seconds between re-publications of the current state while idle; "
        "0 never (default: 1.0).",
    )
    pump.add_argument(
        "--applied-log",
        metavar="PATH",
        help="append one JSON line per applied cmd_id here, and on start treat the cmd_ids "
        "already in it as applied (default: in memory only).",
    )
    pump.add_argument(
        "--reactor",
        metavar="ENDPOINT",
        help=f"endpoint to BIND the reactor stream on (default: tcp://127.0.0.1:P+"
        f"{REACTOR_PORT_OFFSET}, P the --connect port).",
    )
    pump.add_argument(
        "--no-reactor", action="store_true", help="do not publish the reactor stream."
    )

    spec = roles.add_parser(
        "spectrometer",
        help="a UV-Vis spectrometer: one noisy spectrum per droplet",
        description="Simulated UV-Vis spectrometer: on acquire(condition, n), waits for the "
        "pump to be stable on the condition, then publishes n spectra, one per droplet.",
    )
    _common(spec)
    _detector(spec)
    spec.add_argument(
        "--grid",
        type=Grid.parse,
        default=Grid(),
        metavar="START:STOP:STEP",
        help="wavelength grid in nm, inclusive (default: 380:800:1, 421 points).",
    )
    spec.add_argument(
        "--droplet-interval",
        type=_nonneg,
        default=0.2,
        metavar="S",
        help="simulated seconds between droplets (default: 0.2).",
    )
    spec.add_argument(
        "--max-droplets",
        type=int,
        default=100,
        metavar="N",
        help="hard limit: an acquire asking for more than N droplets is refused with a reason "
        "(default: 100).",
    )
    noise = DropletNoise()
    spec.add_argument(
        "--outlier-rate",
        type=_nonneg,
        default=noise.outlier_rate,
        metavar="P",
        help="probability of an outlier droplet, bubble or doublet "
        f"(default: {noise.outlier_rate}).",
    )
    spec.add_argument(
        "--flow-jitter",
        type=_nonneg,
        default=noise.flow_jitter,
        metavar="SD",
        help=f"SD of log flow per channel per droplet (default: {noise.flow_jitter}).",
    )
    spec.add_argument(
        "--amplitude-jitter",
        type=_nonneg,
        default=noise.amplitude_jitter,
        metavar="SD",
        help=f"SD of the amplitude factor per droplet (default: {noise.amplitude_jitter}).",
    )
    spec.add_argument(
        "--detector-noise",
        type=_nonneg,
        default=noise.detector_sd,
        metavar="AU",
        help=f"detector noise SD per point (default: {noise.detector_sd}).",
    )
    spec.add_argument(
        "--baseline",
        default=f"{noise.baseline_mean}:{noise.baseline_sd}",
        metavar="MEAN:SD",
        help=f"baseline offset per droplet, clipped to {noise.baseline_range} AU "
        f"(default: {noise.baseline_mean}:{noise.baseline_sd}).",
    )

    xrd = roles.add_parser(
        "xrd",
        help="an XRD phase labeller with a long latency",
        description="Simulated XRD labeller: on acquire(condition), publishes a phase label "
        "for the condition's flows after --latency.",
    )
    _common(xrd)
    _detector(xrd)
    xrd.add_argument(
        "--latency",
        type=_nonneg,
        default=10.0,
        metavar="S",
        help="simulated seconds from acquire to label (default: 10).",
    )
    xrd.add_argument(
        "--confidence-jitter",
        type=_nonneg,
        default=0.03,
        metavar="SD",
        help="SD added to the model's confidence, then clipped to [0, 1] (default: 0.03).",
    )
    return parser


def default_reactor(connect: str) -> str:
    """The reactor stream's default endpoint for ``connect``: loopback, port P + 3.

    >>> default_reactor("tcp://127.0.0.1:5560")
    'tcp://127.0.0.1:5563'
    """
    port = urlsplit(Endpoints.from_base(connect).commands).port
    assert port is not None
    return f"tcp://127.0.0.1:{port + REACTOR_PORT_OFFSET}"


def load_forward_model(spec: str, seed: int = 0) -> Any:
    """:func:`drivers.world.load_model`, with every failure as a :class:`ModelError`.

    Raises:
        ModelError: the path is malformed, the import fails, the result is not a
            forward model, or the factory raises.
    """
    try:
        return load_model(spec, seed=seed)
    except (ImportError, ValueError) as exc:
        raise ModelError(f"cannot load forward model {spec!r}: {exc}") from exc
    except Exception as exc:
        raise ModelError(f"forward model {spec!r} failed to build: {exc!r}") from exc


# --- private helpers --------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--connect",
        default=DEFAULT_BASE,
        metavar="tcp://HOST:P",
        help=f"the agent's base endpoint: commands P, events P+1 (default: {DEFAULT_BASE}).",
    )
    p.add_argument(
        "--name",
        default="",
        metavar="NAME",
        help="the driver's name on the wire (source, DEALER identity); default: the role. "
        "With CURVE keys the agent takes only its key's name (NAME.key_secret), the role.",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: 0).")
    p.add_argument(
        "--time-scale",
        type=_nonneg,
        default=1.0,
        metavar="F",
        help="multiplies every simulated duration; 0.01 runs 100x faster (default: 1.0).",
    )
    p.add_argument(
        "--heartbeat",
        type=_positive,
        default=0.5,
        metavar="S",
        help="seconds between hellos/heartbeats to the agent (default: 0.5).",
    )
    p.add_argument(
        "--heartbeat-timeout",
        type=_positive,
        default=5.0,
        metavar="S",
        help="silence from the agent after which the link is lost: back to hellos, pump to "
        "its safe state (default: 5.0).",
    )
    p.add_argument(
        "--command-timeout",
        type=_positive,
        default=5.0,
        metavar="S",
        help="longest the instrument may take to decide on a command (default: 5.0).",
    )
    faults = p.add_argument_group(
        "fault injection (tests only; docs/drivers.md)",
        "Each rate is a probability per message; a message gets at most one fault. "
        '--fault-file gives a JSON plan instead ({"out": {"drop": 0.05}, "in": {...}, '
        '"seed": 1, "crash_at": "spectrum:37", ...}); flags given with it override it.',
    )
    for kind in FAULT_KINDS:
        short = ["--fault-dup"] if kind == "duplicate" else []
        faults.add_argument(
            f"--fault-{kind}",
            *short,
            dest=f"fault_{kind}",
            type=_rate,
            default=None,
            metavar="P",
            help=f"probability that a message is {_FAULT_HELP[kind]} (default: 0).",
        )
    faults.add_argument(
        "--fault-direction",
        choices=("out", "in", "both"),
        default="both",
        help="which traffic the --fault-* rates apply to: what the driver sends, what it "
        "receives on its commands socket, or both (default: both).",
    )
    faults.add_argument(
        "--fault-max-delay",
        type=_nonneg,
        default=None,
        metavar="S",
        help="longest injected delay, wall seconds (default: 0.05).",
    )
    faults.add_argument(
        "--fault-corrupt-mode",
        choices=("detectable", "bitflip"),
        default=None,
        help="detectable: truncate a frame or put an invalid byte in it; bitflip: flip one "
        "bit, which may go undetected (default: detectable).",
    )
    faults.add_argument(
        "--fault-seed",
        type=int,
        default=None,
        metavar="N",
        help="seed of the fault draws; the same seed gives the n-th message of a socket "
        "the same fault in every run (default: 0).",
    )
    faults.add_argument(
        "--crash-at",
        default=None,
        metavar="KIND:N",
        help="SIGKILL this driver right after it sent its N-th message of KIND "
        "(e.g. spectrum:37, setpoint_ack:2).",
    )
    faults.add_argument(
        "--fault-file", default=None, metavar="PATH", help="a JSON fault plan (see above)."
    )
    p.add_argument(
        "--curve-secret-key",
        metavar="FILE",
        help="this driver's CURVE secret key file (NAME.key_secret, from sdl-agent keys "
        "generate); or its Z85 text in $SDL_CURVE_SECRET_KEY. See docs/security.md.",
    )
    p.add_argument(
        "--curve-server-key",
        metavar="FILE",
        help="the agent's public key file (agent.key); given, both sockets use CURVE.",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow plain text to a non-loopback agent (or a non-loopback --reactor bind); "
        "refused without it.",
    )
    p.add_argument(
        "--log-level",
        choices=LEVELS,
        default="info",
        help="lowest level of the JSON log lines on stderr (default: info).",
    )


def _detector(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="MODULE:CALLABLE",
        help=f"forward model factory, called with seed=--seed (default: {DEFAULT_MODEL}).",
    )
    p.add_argument(
        "--reactor",
        metavar="ENDPOINT",
        help=f"the pump's reactor stream to CONNECT to (default: tcp://127.0.0.1:P+"
        f"{REACTOR_PORT_OFFSET}, P the --connect port).",
    )
    p.add_argument(
        "--reactor-wait",
        type=_nonneg,
        default=2.0,
        metavar="S",
        help="wall seconds to wait at start for the pump's first readback before saying hello "
        "(then start without it; default: 2).",
    )
    p.add_argument(
        "--acquire-timeout",
        type=_nonneg,
        default=30.0,
        metavar="S",
        help="simulated seconds to wait for the pump to be stable on the condition, then "
        "report a fault (default: 30).",
    )


_FAULT_HELP = {
    "drop": "dropped",
    "duplicate": "sent twice",
    "corrupt": "corrupted (see --fault-corrupt-mode)",
    "reorder": "held back and passed on after the next one on its socket",
    "delay": "held up to --fault-max-delay seconds (later ones wait behind it)",
}


def _fault_plan(args: argparse.Namespace) -> FaultPlan | None:
    """The fault plan of the command line (None when it asks for none).

    Raises:
        ValueError: the plan is invalid (rates, crash point, file).
        OSError: the fault file cannot be read.
    """
    try:
        base = FaultPlan.from_file(args.fault_file) if args.fault_file else FaultPlan()
        data = base.model_dump(by_alias=True)
        rates = {k: getattr(args, f"fault_{k}") for k in FAULT_KINDS}
        rates = {k: v for k, v in rates.items() if v is not None}
        for direction in ("out", "in"):
            if args.fault_direction in (direction, "both"):
                data[direction] = {**data[direction], **rates}
        for key, value in (
            ("max_delay_s", args.fault_max_delay),
            ("corrupt_mode", args.fault_corrupt_mode),
            ("seed", args.fault_seed),
            ("crash_at", args.crash_at),
        ):
            if value is not None:
                data[key] = value
        plan = FaultPlan.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"invalid fault plan: {exc}") from None
    return plan if plan.active else None


def _check_plain_text(args: argparse.Namespace, curve: CurveClient | None) -> None:
    """Refuse plain text off loopback without --insecure (the agent's own rule).

    The reactor stream (simulation only) never has CURVE, so a pump binding it
    off loopback also needs --insecure.
    """
    ep = Endpoints.from_base(args.connect)
    refusal = insecure_refusal(
        [ep.commands, ep.events], secured=curve is not None, insecure=args.insecure
    )
    reactor = getattr(args, "reactor", None)
    if refusal is None and args.role == "pump" and reactor and not args.no_reactor:
        refusal = insecure_refusal([reactor], secured=False, insecure=args.insecure)
    if refusal is not None:
        raise ValueError(refusal)
    if args.insecure and curve is None:
        log.warning("insecure_endpoints", reason="--insecure: plain text, no CURVE")


def _build_pump(args: argparse.Namespace) -> Instrument:
    channels = tuple(args.channel) if args.channel else DEFAULT_CHANNELS
    reactor = None if args.no_reactor else (args.reactor or default_reactor(args.connect))
    return SimulatedPump(
        channels,
        safe_flows=_safe_flows(args.safe_flows),
        ramp_s=args.ramp,
        readback_interval_s=args.readback_interval,
        readback_period_s=args.readback_period,
        time_scale=args.time_scale,
        applied_log=args.applied_log,
        reactor=reactor,
    )


def _build_spectrometer(args: argparse.Namespace) -> Instrument:
    model = load_forward_model(args.model, args.seed)
    if not isinstance(model, SpectrumModel):
        raise ModelError(f"{args.model} built {model!r}, which has no spectrum() method")
    mean, sd = _pair(args.baseline, "--baseline")
    noise = DropletNoise(
        flow_jitter=args.flow_jitter,
        amplitude_jitter=args.amplitude_jitter,
        baseline_mean=mean,
        baseline_sd=sd,
        detector_sd=args.detector_noise,
        outlier_rate=args.outlier_rate,
    )
    return SimulatedSpectrometer(
        model,
        reactor=args.reactor or default_reactor(args.connect),
        grid=args.grid,
        droplet_interval_s=args.droplet_interval,
        acquire_timeout_s=args.acquire_timeout,
        time_scale=args.time_scale,
        noise=noise,
        seed=args.seed,
        reactor_wait_s=args.reactor_wait,
        max_droplets=args.max_droplets,
    )


def _build_xrd(args: argparse.Namespace) -> Instrument:
    model = load_forward_model(args.model, args.seed)
    if not isinstance(model, PhaseModel):
        raise ModelError(f"{args.model} built {model!r}, which has no phase() method")
    return SimulatedXrd(
        model,
        reactor=args.reactor or default_reactor(args.connect),
        latency_s=args.latency,
        acquire_timeout_s=args.acquire_timeout,
        time_scale=args.time_scale,
        confidence_jitter=args.confidence_jitter,
        seed=args.seed,
        reactor_wait_s=args.reactor_wait,
    )


_BUILDERS: dict[str, Callable[[argparse.Namespace], Instrument]] = {
    "pump": _build_pump,
    "spectrometer": _build_spectrometer,
    "xrd": _build_xrd,
}


def _channel(text: str) -> Channel:
    parts = text.split(":")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected NAME:MIN:MAX, got {text!r}")
    try:
        return Channel(parts[0], float(parts[1]), float(parts[2]))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _safe_flows(text: str) -> dict[str, float] | None:
    if text.strip().lower() == "zero":
        return None
    flows: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--safe-flows must be 'zero' or NAME=FLOW,..., got {text!r}")
        flows[name.strip()] = float(value)
    return flows


def _pair(text: str, flag: str) -> tuple[float, float]:
    a, sep, b = text.partition(":")
    if not sep:
        raise ValueError(f"{flag} must be A:B, got {text!r}")
    return float(a), float(b)


def _rate(text: str) -> float:
    value = _nonneg(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text!r}")
    return value


def _nonneg(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _positive(text: str) -> float:
    value = _nonneg(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value
