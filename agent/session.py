"""One live campaign from config to CSV: what ``sdl-agent run`` and the demo share."""

from __future__ import annotations

import asyncio
import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.config import CampaignConfig
from agent.core.campaign import Campaign, RestoreError
from agent.export import condition_columns
from agent.journal import Journal, JournalRefused, config_hash, run_meta
from agent.runtime import AgentRuntime
from protocols import messages as m
from protocols.sockets import Endpoints

__all__ = ["CampaignOutcome", "open_journal", "run_campaign", "write_conditions_csv"]

log = structlog.get_logger("sdl_agent")


@dataclass
class CampaignOutcome:
    """What a finished live campaign leaves behind."""

    campaign: Campaign
    runtime: AgentRuntime
    initial_box: dict[str, tuple[float, float]]
    csv_path: Path
    seconds: float

    def summary(self) -> str:
        c = self.campaign
        recs = list(c.conditions.values())
        done = [r for r in recs if r.state == "complete"]
        failed = [r for r in recs if r.state == "failed"]
        lines = [
            f"campaign {c.settings.campaign_id}: stopped "
            f"({c.stop_reason.rule if c.stop_reason else 'not stopped'}: "
            f"{c.stop_reason.reason if c.stop_reason else ''})",
            f"  rounds {c.rounds_complete}, conditions {len(done)} complete / "
            f"{len(failed)} failed, {sum(r.n_used for r in done)} replicates used, "
            f"{sum(r.n_rejected for r in done)} outliers rejected, "
            f"{self.seconds:.1f} s",
        ]
        best = min(done, key=lambda r: float(r.median_loss or math.inf), default=None)
        if best is not None:
            recipe = ", ".join(f"{k}={v:.3g}" for k, v in best.recipe.items())
            phase = best.phase
            lines.append(
                f"  best median loss {best.median_loss:.4f} at {best.condition} "
                f"({best.strategy}): {recipe}"
                + (f"; phase {phase[0]} ({phase[1]:.2f})" if phase else "")
            )
        per_round = ", ".join(f"{x:.3f}" for x in c.best_by_round)
        lines.append(f"  best loss after each round: {per_round}")
        widened = []
        for p in c.space.parameters:
            lo, hi = self.initial_box[p.name]
            if (p.lower, p.upper) != (lo, hi):
                widened.append(f"{p.name} [{lo:g}, {hi:g}] -> [{p.lower:.4g}, {p.upper:.4g}]")
        lines.append("  box widened: " + ("; ".join(widened) if widened else "no"))
        rt = self.runtime.counters
        lines.append(
            f"  bus: {rt.received} messages in, {rt.rejected} rejected, "
            f"{rt.gaps} sequence gaps ({rt.missing} missing)"
        )
        lines.append(f"  conditions CSV: {self.csv_path}")
        return "\n".join(lines)


async def run_campaign(
    cfg: CampaignConfig,
    *,
    seed: int,
    out_dir: Path,
    on_status: Callable[[m.Message], None] | None = None,
    drain_s: float = 2.0,
    journal_path: Path | None = None,
    resume: bool = False,
    synchronous: str = "NORMAL",
) -> CampaignOutcome:
    """Run ``cfg`` live until it stops; write ``conditions.csv`` into ``out_dir``.

    With ``journal_path``, every step is journalled there first; ``resume``
    rebuilds the campaign from that journal and carries on (see
    :meth:`Campaign.restore`), else the journal must not exist yet.

    Raises:
        JournalRefused: the journal exists (without ``resume``), or is missing,
            corrupt or another campaign's (with it); nothing is written then.
    """
    settings = cfg.to_settings()
    initial_box = {p.name: (p.lower, p.upper) for p in settings.space.parameters}
    journal = open_journal(cfg, seed, journal_path, resume, synchronous)
    try:
        if journal is not None and resume:
            facts = journal.facts()  # the journal's connection lives in this thread
            try:
                campaign = Campaign.restore(settings, seed, facts)
            except RestoreError as exc:
                raise JournalRefused(f"journal {journal.path} cannot be replayed: {exc}") from None
            resumed = {
                "journal": str(journal.path),
                "rounds": campaign.rounds_complete,
                "conditions_done": sum(
                    r.state in ("complete", "failed") for r in campaign.conditions.values()
                ),
                "active": campaign.active.cmd_id if campaign.active else "",
            }
            journal.note(time.time(), "campaign_resumed", resumed)
            log.info("campaign_resumed", **resumed)
        else:
            campaign = Campaign(settings, seed=seed)
        runtime = AgentRuntime(
            campaign,
            Endpoints.from_base(cfg.bus.base),
            heartbeat_interval=cfg.drivers.heartbeat_interval_s,
            max_bytes=cfg.bus.max_message_bytes,
            status_interval=cfg.bus.status_interval_s,
            drain_s=drain_s,
            on_status=on_status,
            journal=journal,
            security=cfg.server_security(),
        )
        t0 = time.perf_counter()
        if campaign.stopped:  # resumed a campaign whose stop rule had fired: nothing to do
            why = campaign.stop_reason
            log.info(
                "campaign_already_stopped",
                rule=why.rule if why else "",
                reason=why.reason if why else "",
            )
        else:
            await runtime.run()
    finally:
        if journal is not None:
            journal.close()
    path = await asyncio.to_thread(write_conditions_csv, campaign, out_dir / "conditions.csv")
    return CampaignOutcome(campaign, runtime, initial_box, path, time.perf_counter() - t0)


def open_journal(
    cfg: CampaignConfig, seed: int, path: Path | None, resume: bool, synchronous: str = "NORMAL"
) -> Journal | None:
    """Create (or, to resume, open and check) the campaign's journal; None without a path.

    Raises:
        JournalRefused: see :func:`run_campaign`.
    """
    if path is None:
        if resume:
            raise JournalRefused("--resume needs a journal")
        return None
    digest = config_hash(cfg, seed)
    if resume:
        return Journal.open(
            path, campaign_id=cfg.campaign.id, config_hash=digest, synchronous=synchronous
        )
    return Journal.create(
        path,
        campaign_id=cfg.campaign.id,
        config_hash=digest,
        seed=seed,
        parameters=[p.name for p in cfg.parameters],
        synchronous=synchronous,
        extra_meta=run_meta(cfg),
    )


def write_conditions_csv(campaign: Campaign, path: Path) -> Path:
    """One row per condition: recipe, replicates used, median loss, phase, status."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(campaign.space.names)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(condition_columns(names))
        for rec in campaign.conditions.values():
            phase = rec.phase
            w.writerow(
                [
                    rec.condition,
                    rec.round,
                    rec.strategy,
                    rec.state,
                    *(f"{rec.recipe[n]:.6g}" for n in names),
                    rec.n_used,
                    rec.n_rejected,
                    "" if rec.median_loss is None else f"{rec.median_loss:.6f}",
                    "" if rec.loss_sd is None else f"{rec.loss_sd:.6f}",
                    phase[0] if phase else "",
                    f"{phase[1]:.3f}" if phase else "",
                    rec.failure,
                ]
            )
    return path
