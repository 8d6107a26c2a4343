"""``sdl-agent``: the command line.

Subcommands: ``run`` a campaign beside real or simulated drivers (journalled,
resumable), ``monitor`` a running agent (read-only), ``export`` a journal as
CSV, ``report`` it as plots and one HTML page, ``demo`` a whole simulated lab,
start a simulated ``driver``, ``validate`` a campaign file, write the wire
``schema``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from agent.core.strategies.registry import STRATEGY_NAMES

__all__ = ["main"]

_EPILOG = """\
examples:
  sdl-agent demo                                   # simulated lab, up to 4 rounds of 15
  sdl-agent run examples/agnp.toml --set stop.max_rounds=8
  sdl-agent run examples/agnp.toml --resume        # carry on from runs/journal.sqlite
  sdl-agent monitor --connect lab-pc:5562          # watch it from anywhere (read-only)
  sdl-agent export runs/journal.sqlite --csv out/  # conditions.csv, replicates.csv, labels.csv
  sdl-agent report runs/journal.sqlite --out report/  # PNG plots + report/index.html
  sdl-agent driver pump --connect tcp://127.0.0.1:5560
  sdl-agent validate examples/agnp.toml
  sdl-agent schema --out docs/schemas
  sdl-agent keys generate --dir keys agent pump spectrometer xrd   # CURVE key pairs

environment:
  SDL_AGENT_<SECTION>__<KEY>=value overrides the campaign file
  (e.g. SDL_AGENT_STOP__MAX_ROUNDS=5); --set overrides both.
  SDL_TRACEMALLOC=DIR: heap growth reports of 'run' in DIR (agent/memtrace.py).
"""


_REPORT_HELP = """\
Read a campaign journal and write into OUTDIR:

  best_loss.png    best median loss so far against conditions measured, by strategy
  spectra.png      median spectra of the best conditions against the target
  parameters.png   each parameter per condition, inside the search box and its widenings
  replicates.png   each condition's replicate losses: used, outliers, the median
  importance.png   which inputs matter: mean |SHAP| of each input for a model's
                   predicted loss and predicted peak wavelength (see below)
  input_importance.csv  the same as a table, most important input first
  index.html       a summary table (best condition, recipe, stop rule, widenings) and
                   every plot embedded: one self-contained file to mail

Input importance is the one a strategy stored in the journal; else the report
computes it: it trains the spectrum model on the journal's median spectra (at
least 20 complete conditions, and the campaign configuration and target in the
journal) and explains it with SHAP (the optional 'shap' library). That takes a
few seconds; --no-importance skips it. Without it the page says why.

The journal is opened read-only: never written to nor migrated, and a campaign
still running may go on writing it. How to read the plots: docs/report.md.

exit status: 0 written; 2 the journal is missing, corrupt or not a journal;
1 OUTDIR cannot be written.
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "driver":
        return _driver(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.func(args))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sdl-agent",
        description="A headless agent that closes the loop of a self-driving lab over ZeroMQ.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a campaign against drivers on the bus",
        description="Bind the agent's endpoints and run CAMPAIGN until a stop rule fires "
        "or SIGINT/SIGTERM (the pump is then put in its safe state).",
    )
    run.add_argument("campaign", type=Path, help="campaign file (TOML)")
    _common(run)
    run.add_argument(
        "--out",
        type=Path,
        default=Path("runs"),
        help="directory for the conditions CSV and the journal (default: %(default)s)",
    )
    run.add_argument(
        "--journal",
        type=Path,
        default=None,
        metavar="PATH",
        help="the campaign's journal, SQLite (default: OUT/journal.sqlite); a run never "
        "overwrites one",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="rebuild the campaign from its journal and carry on (same campaign file, "
        "overrides and seed)",
    )
    run.add_argument(
        "--journal-sync",
        choices=("normal", "full"),
        default="normal",
        help="SQLite synchronous: normal survives a killed agent, full also a power cut "
        "at ~4 ms per write (default: %(default)s)",
    )
    run.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --base without [security] keys: plain text that anyone "
        "who reaches the ports can read and write (docs/security.md)",
    )
    run.set_defaults(func=_run)

    mon = sub.add_parser(
        "monitor",
        help="watch a running agent: round, replicates, best loss, box, stop rules (read-only)",
        description="Subscribe to a running agent's status events and show its progress: "
        "the round and its conditions, the condition being measured and its replicates, the "
        "best loss, the search box, and how close each stop rule is to firing. It only "
        "listens (a ZeroMQ SUB socket), so it can run on any machine that reaches the "
        "status endpoint and can never command the lab. On a terminal the view is redrawn "
        "in place; otherwise one line per event.",
        epilog="The status endpoint is the agent's base port + 2: an agent run with "
        "--base tcp://0.0.0.0:5560 is watched with --connect tcp://LAB-PC:5562. "
        "See docs/monitor.md.",
    )
    mon.add_argument(
        "--connect",
        required=True,
        metavar="ENDPOINT",
        help="the agent's status endpoint, tcp://HOST:PORT or HOST:PORT (base port + 2)",
    )
    mon.add_argument(
        "--once",
        action="store_true",
        help="print one campaign_status snapshot and exit (exit code 1 if none comes "
        "within --timeout)",
    )
    mon.add_argument(
        "--json", action="store_true", help="one JSON object per line per event, for scripts"
    )
    mon.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="with --once: how long to wait for a snapshot (default: %(default)s)",
    )
    mon.add_argument(
        "--until-stopped",
        action="store_true",
        help="exit after the campaign_stopped event (default: keep watching, across agent "
        "restarts, until Ctrl-C)",
    )
    mon.add_argument(
        "--log-level",
        default="warning",
        choices=("debug", "info", "warning", "error"),
        help="JSON log lines on stderr, e.g. rejected messages (default: %(default)s)",
    )
    _curve_client(mon)
    mon.set_defaults(func=_monitor)

    export = sub.add_parser(
        "export",
        help="write a journal's conditions and replicates as CSV",
        description="Read a campaign journal (never written to) and write conditions.csv, "
        "labels.csv and replicates.csv into OUTDIR.",
    )
    export.add_argument("journal", type=Path, help="the journal (SQLite)")
    export.add_argument("--csv", type=Path, required=True, metavar="OUTDIR")
    export.set_defaults(func=_export)

    report = sub.add_parser(
        "report",
        help="write a journal's plots (PNG) and one self-contained HTML page",
        description=_REPORT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument("journal", type=Path, help="the journal (SQLite), e.g. runs/journal.sqlite")
    report.add_argument(
        "--out", type=Path, required=True, metavar="OUTDIR", help="directory to write into"
    )
    report.add_argument(
        "--no-importance",
        action="store_true",
        help="do not compute input importance (SHAP of a spectrum model fitted on the "
        "journal's spectra, a few seconds); importance stored in the journal is still shown",
    )
    report.set_defaults(func=_report)

    demo = sub.add_parser(
        "demo",
        help="run a simulated lab: three driver processes and the agent",
        description="Start the simulated pump, spectrometer and XRD as separate processes on "
        "loopback TCP, run the campaign, write a CSV of conditions, print a summary and end by "
        "writing the report (OUT/report/index.html and its PNGs; see sdl-agent report --help).",
    )
    demo.add_argument(
        "--campaign",
        type=Path,
        default=None,
        help="campaign file (default: the bundled examples/agnp.toml)",
    )
    demo.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="round budget (default: 4; the target may stop it sooner)",
    )
    demo.add_argument(
        "--time-scale",
        type=float,
        default=0.02,
        help="simulated durations are multiplied by this (default: %(default)s)",
    )
    demo.add_argument(
        "--out", type=Path, default=Path("demo-out"), help="output directory (default: %(default)s)"
    )
    demo.add_argument("--seed", type=int, default=0, help="seed for agent and drivers")
    demo.add_argument(
        "--strategy",
        choices=STRATEGY_NAMES,
        default=None,
        help="strategy after round 1 (default: the campaign file's)",
    )
    demo.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    demo.set_defaults(func=_demo)

    val = sub.add_parser("validate", help="check a campaign file and print what it sets up")
    val.add_argument("campaign", type=Path)
    val.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    val.set_defaults(func=_validate)

    schema = sub.add_parser("schema", help="write the JSON Schema of every wire message")
    schema.add_argument(
        "--out", type=Path, default=Path("schemas"), help="directory (default: %(default)s)"
    )
    schema.set_defaults(func=_schema)

    keys = sub.add_parser(
        "keys",
        help="CURVE keys: sdl-agent keys generate --dir DIR NAME...",
        description="Manage the CURVE keys of the agent, the drivers and monitors "
        "(docs/security.md).",
    )
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    gen = keys_sub.add_parser(
        "generate",
        help="write a key pair per NAME",
        description="Write DIR/NAME.key (the public key, to hand out) and DIR/NAME.key_secret "
        "(public and secret key, mode 0600, to keep) for each NAME. A driver's key sends only "
        "as its NAME, which must be its role (pump, spectrometer, xrd). Never overwrites a key: "
        "exit 2 if one of the files exists.",
    )
    gen.add_argument("--dir", type=Path, required=True, help="directory to write into")
    gen.add_argument("names", nargs="+", metavar="NAME", help="e.g. agent pump spectrometer")
    gen.set_defaults(func=_keys_generate)

    sub.add_parser(
        "driver",
        help="start a simulated driver: sdl-agent driver pump|spectrometer|xrd --help",
    )
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a campaign-file value, e.g. --set stop.max_rounds=8",
    )
    p.add_argument(
        "--base",
        default=None,
        help="commands endpoint tcp://HOST:PORT; events PORT+1, status PORT+2",
    )
    p.add_argument("--seed", type=int, default=None, help="seed (default: the file's)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def _curve_client(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--curve-secret-key",
        type=Path,
        default=None,
        metavar="FILE",
        help="this client's CURVE secret key file (NAME.key_secret); or its Z85 text in "
        "$SDL_CURVE_SECRET_KEY",
    )
    p.add_argument(
        "--curve-server-key",
        type=Path,
        default=None,
        metavar="FILE",
        help="the agent's public key file (agent.key); with it the connection is CURVE",
    )


def _overrides(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"sdl-agent: --set wants KEY=VALUE, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def _load(path: Path, pairs: list[str]):
    from agent.config import CampaignConfig, ConfigError

    try:
        return CampaignConfig.from_toml(path, overrides=_overrides(pairs))
    except ConfigError as exc:
        print(f"sdl-agent: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _run(args: argparse.Namespace) -> int:
    from agent.journal import JournalRefused
    from agent.logs import configure_logging
    from agent.memtrace import traced
    from agent.session import run_campaign

    overrides = list(args.set)
    if args.base:
        overrides.append(f'bus.base="{args.base}"')
    cfg = _load(args.campaign, overrides)
    configure_logging(args.log_level)
    if not _plain_text_allowed(cfg, args.insecure):
        return 2
    seed = cfg.campaign.seed if args.seed is None else args.seed
    journal = args.journal if args.journal is not None else args.out / "journal.sqlite"
    try:
        result = asyncio.run(
            traced(
                run_campaign(
                    cfg,
                    seed=seed,
                    out_dir=args.out,
                    journal_path=journal,
                    resume=args.resume,
                    synchronous=args.journal_sync,
                )
            )
        )
    except JournalRefused as exc:
        print(f"sdl-agent: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    print(f"  journal: {journal}")
    return 0


def _plain_text_allowed(cfg, insecure: bool) -> bool:
    """The agent's rule for its endpoints: CURVE, loopback, or an explicit --insecure."""
    import structlog

    from protocols.security import insecure_refusal
    from protocols.sockets import Endpoints, is_loopback

    endpoints = list(Endpoints.from_base(cfg.bus.base).__dict__.values())
    refusal = insecure_refusal(endpoints, secured=cfg.security.enabled, insecure=insecure)
    if refusal is not None:
        print(f"sdl-agent: {refusal}", file=sys.stderr)
        return False
    exposed = [e for e in endpoints if not is_loopback(e)]
    if exposed and not cfg.security.enabled:
        structlog.get_logger("sdl_agent").warning(
            "insecure_endpoints",
            endpoints=exposed,
            reason="--insecure: no CURVE; anyone who reaches these ports can read the "
            "status, send measurements and impersonate a driver",
        )
    return True


def _keys_generate(args: argparse.Namespace) -> int:
    from protocols.security import KeyFileError, generate_key_files

    if len(set(args.names)) != len(args.names):
        print("sdl-agent keys: a NAME is given twice", file=sys.stderr)
        return 2
    for name in args.names:
        try:
            public, secret = generate_key_files(args.dir, name)
        except KeyFileError as exc:
            print(f"sdl-agent keys: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"sdl-agent keys: cannot write into {args.dir}: {exc.strerror}", file=sys.stderr)
            return 1
        print(f"wrote {public} (public) and {secret} (secret, mode 0600)")
    return 0


def _monitor(args: argparse.Namespace) -> int:
    from agent.logs import configure_logging
    from agent.monitor import parse_endpoint, watch
    from protocols.security import CurveClient, KeyFileError

    try:
        endpoint = parse_endpoint(args.connect)
    except ValueError as exc:
        print(f"sdl-agent monitor: {exc}", file=sys.stderr)
        return 2
    if not args.timeout > 0:
        print("sdl-agent monitor: --timeout must be > 0", file=sys.stderr)
        return 2
    try:
        curve = CurveClient.from_files(args.curve_secret_key, args.curve_server_key)
    except KeyFileError as exc:
        print(f"sdl-agent monitor: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    return watch(
        endpoint,
        once=args.once,
        as_json=args.json,
        timeout=args.timeout,
        until_stopped=args.until_stopped,
        curve=curve,
    )


def _export(args: argparse.Namespace) -> int:
    from agent.export import export_csv
    from agent.journal import JournalRefused

    try:
        paths = export_csv(args.journal, args.csv)
    except JournalRefused as exc:
        print(f"sdl-agent: {exc}", file=sys.stderr)
        return 2
    print("wrote " + " and ".join(str(p) for p in paths))
    return 0


def _report(args: argparse.Namespace) -> int:
    from agent.journal import JournalRefused
    from agent.report import write_report

    try:
        files = write_report(args.journal, args.out, compute_importance=not args.no_importance)
    except JournalRefused as exc:
        print(f"sdl-agent: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sdl-agent: cannot write the report into {args.out}: {exc}", file=sys.stderr)
        return 1
    beside = [p.name for p in files.images] + ([files.table.name] if files.table else [])
    print(f"wrote {files.index} ({', '.join(beside)} beside it)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo

    return run_demo(
        campaign=args.campaign,
        rounds=args.rounds,
        time_scale=args.time_scale,
        out_dir=args.out,
        seed=args.seed,
        strategy=args.strategy,
        log_level=args.log_level,
    )


def _validate(args: argparse.Namespace) -> int:
    cfg = _load(args.campaign, args.set)
    settings = cfg.to_settings()
    print(f"campaign {settings.campaign_id}: OK")
    for p in settings.space.parameters:
        flag = " (expandable)" if p.expandable else ""
        print(
            f"  {p.name:10s} box [{p.lower:g}, {p.upper:g}]  "
            f"hard [{p.hard_lower:g}, {p.hard_upper:g}] {p.unit}{flag}"
        )
    for c in settings.space.constraints:
        print(f"  constraint {c.describe()} <= {c.upper:g}")
    print(
        f"  batch {settings.batch_size}, strategy {settings.initial_strategy.name} then "
        f"{settings.strategy.name}, grid {settings.grid.n} points"
    )
    print(f"  stop when any of: {cfg.stop.describe()}")
    server = cfg.server_security()  # public keys and counts only, never a secret
    if server is None:
        print("  security: none (plain text; a non-loopback base needs --insecure)")
    else:
        names = ", ".join(sorted(set(server.names.values())))
        print(
            f"  security: CURVE, agent key {server.keys.public.decode()}, "
            f"{len(server.allowed)} driver key(s) ({names}), {len(server.monitors)} monitor key(s)"
        )
    return 0


def _schema(args: argparse.Namespace) -> int:
    from protocols.schema import write_schemas

    paths = write_schemas(args.out)
    print(f"wrote {len(paths)} schemas to {args.out}")
    return 0


def _driver(argv: list[str]) -> int:
    """Hand over to the drivers' own entry point in a fresh interpreter.

    The agent never imports a driver (they meet only on the wire), so this
    replaces the current process with ``python -m drivers ...``.
    """
    os.execv(sys.executable, [sys.executable, "-m", "drivers", *argv])
    return 0  # pragma: no cover - execv does not return
