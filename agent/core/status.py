"""What a live monitor is told: the fields of the ``campaign_status`` and
``condition_progress`` status messages, built from a :class:`Campaign`.

Pure views: they read the campaign (and ``now``, campaign time) and change
nothing; the shell adds the envelope and publishes them
(:mod:`protocols.messages` has the models and their bounds, which these
functions keep to: names and numbers that would not fit are left out).

>>> from agent.core.campaign import Campaign, Result
>>> from agent.core.testing import toy_settings
>>> campaign = Campaign(toy_settings(), seed=0)
>>> batch = campaign.ask()
>>> campaign.tell(batch, [Result(loss=0.5 - 0.01 * i) for i in range(len(batch))])
>>> status = campaign_status(campaign, now=None)
>>> status["round"], status["rounds_complete"], [s["rule"] for s in status["stop"]]
(1, 1, ['max_rounds'])
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from agent.core.campaign import Campaign
from agent.core.events import Announce, Decision
from agent.core.stopping import closeness

__all__ = ["campaign_status", "condition_progress", "filed_with"]

_ACTIVE_STATES = ("setting", "settling", "measuring")


def campaign_status(campaign: Campaign, now: float | None) -> dict[str, Any]:
    """The fields of a ``campaign_status`` message (no envelope) at ``now``.

    ``conditions_done``/``conditions_total`` count the current round's
    conditions that are complete or failed / all of them; ``best_loss`` is the
    lowest median loss of any complete condition so far (the current round
    included, before the strategy is told it); ``stop`` is
    :func:`agent.core.stopping.closeness` of the campaign's stop rule.
    """
    round_no = campaign.round
    in_round = [r for r in campaign.conditions.values() if r.round == round_no]
    done = [r for r in campaign.conditions.values() if r.state == "complete"]
    scored = [r for r in done if r.median_loss is not None and math.isfinite(r.median_loss)]
    best = min(scored, key=lambda r: float(r.median_loss), default=None)  # type: ignore[arg-type]
    progress = campaign.progress(now)
    stop = [
        {"rule": g.rule[:_MAX_NAME], "fraction": g.fraction, "numbers": _wire_numbers(g.numbers)}
        for g in closeness(campaign.settings.stop_rule, progress)
        if _NAME.match(g.rule[:_MAX_NAME])
    ][:_MAX_RULES]
    active = [
        _active(r)
        for r in campaign.conditions.values()
        if r.state in _ACTIVE_STATES and r.round == round_no
    ]
    elapsed = progress.elapsed_s
    return {
        "state": campaign.state,
        "round": round_no,
        "rounds_complete": campaign.rounds_complete,
        "conditions_done": sum(r.state in ("complete", "failed") for r in in_round),
        "conditions_total": len(in_round),
        "best_loss": None if best is None else float(best.median_loss),  # type: ignore[arg-type]
        "best_condition": "" if best is None else best.condition,
        "box": {p.name: (float(p.lower), float(p.upper)) for p in campaign.space.parameters},
        "active": active,
        "stop": stop,
        "elapsed_s": None if elapsed is None or not elapsed >= 0 else float(elapsed),
    }


def condition_progress(campaign: Campaign, condition: str, now: float) -> dict[str, Any] | None:
    """The fields of a ``condition_progress`` message for ``condition`` at ``now``;
    None when it has no replicates yet (not measured, or unknown)."""
    rec = campaign.conditions.get(condition)
    if rec is None or rec.replicates is None:
        return None
    reps = rec.replicates  # its counts, not status(): that copies the used spectra
    rule = reps.settings
    median = reps.median_loss()
    return {
        "round": rec.round,
        "condition": rec.condition,
        "n_accepted": reps.n_used,
        "n_rejected": reps.n_outliers + reps.n_invalid,
        "n_min": rule.min_count,
        "n_max": rule.max_count,
        "median_loss": float(median) if math.isfinite(median) else None,
        "complete": rec.state == "complete",
        "elapsed_s": max(0.0, now - rec.replicates.started_at),
    }


def _active(rec: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"condition": rec.condition, "state": rec.state}
    if rec.replicates is not None:
        st = rec.replicates.status()
        out.update(n_accepted=st.n_used, n_rejected=st.n_outliers + st.n_invalid)
    return out


# Bounds of the campaign_status message (protocols.messages.CampaignStatus).
_MAX_NAME = 64
_MAX_NUMBERS = 64
_MAX_RULES = 64
_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


def _wire_numbers(numbers: Mapping[str, float]) -> dict[str, float]:
    """Finite values under well-formed keys, at most 64 (the first ones)."""
    out: dict[str, float] = {}
    for key, value in numbers.items():
        if len(out) >= _MAX_NUMBERS:
            break
        if _NAME.match(key) and math.isfinite(float(value)):
            out[key] = float(value)
    return out


def filed_with(campaign: Campaign, condition: str, decisions: list[Decision]) -> bool:
    """Whether the spectrum just handled for ``condition`` was filed (so a
    ``condition_progress`` view is due): the condition is still being measured,
    or the spectrum completed it (``decisions`` announce it); a late spectrum
    for a finished condition was not."""
    rec = campaign.conditions.get(condition)
    if rec is not None and rec.state == "measuring":
        return True
    return any(
        isinstance(d, Announce)
        and d.kind == "condition_complete"
        and d.fields.get("condition") == condition
        for d in decisions
    )
