"""The campaign file (TOML), validated with pydantic; env and CLI override it.

Precedence, lowest first: the file, then environment variables
``SDL_AGENT_<SECTION>__<KEY>=value`` (e.g. ``SDL_AGENT_STOP__MAX_ROUNDS=5``),
then ``--set section.key=value`` on the command line. Values given as strings
are parsed as TOML values when they parse (``5``, ``0.1``, ``true``,
``"text"``), else kept as strings.

>>> cfg = CampaignConfig.from_toml("examples/agnp.toml", overrides={"stop.max_rounds": "2"})
>>> cfg.stop.max_rounds, cfg.campaign.batch_size
(2, 15)
"""

from __future__ import annotations

import csv
import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.core.campaign import CampaignSettings
from agent.core.objective import AgnpLoss
from agent.core.phase import PhaseSettings
from agent.core.replicates import Grid, ReplicateSettings
from agent.core.space import Channel, ChannelMap, LinearConstraint, Parameter, Space
from agent.core.stopping import (
    AllOf,
    AnyOf,
    MaxConditions,
    MaxRounds,
    ModelAccuracy,
    ModelStability,
    NoImprovement,
    RegretBound,
    StopRule,
    TargetLoss,
    WallTime,
)
from agent.core.strategies.registry import make_expansion, make_strategy
from agent.security import ServerSecurity
from protocols.security import (
    CurveKeys,
    KeyFileError,
    load_allowed_keys,
    load_key_names,
    load_secret_key,
)

__all__ = ["ENV_PREFIX", "CampaignConfig", "ConfigError"]

ENV_PREFIX = "SDL_AGENT_"

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
Pos = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class ConfigError(ValueError):
    """The campaign file (or an override) is invalid; the message says where and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CampaignSection(_Section):
    id: Name = "campaign"
    batch_size: Annotated[int, Field(ge=1, le=1000)] = 15
    seed: int = 0


class ObjectiveConfig(_Section):
    target: Path
    wl_start: Pos = 380.0
    wl_stop: Pos = 800.0
    wl_step: Pos = 1.0
    amplitude_low: Pos = 0.7
    amplitude_high: Pos = 1.2

    @model_validator(mode="after")
    def _check(self) -> ObjectiveConfig:
        if self.wl_stop <= self.wl_start:
            raise ValueError("wl_stop must exceed wl_start")
        if self.amplitude_high < self.amplitude_low:
            raise ValueError("amplitude_high must be >= amplitude_low")
        return self

    @property
    def grid(self) -> Grid:
        n = round((self.wl_stop - self.wl_start) / self.wl_step) + 1
        return Grid(self.wl_start, self.wl_step, n)


class PhaseConfig(_Section):
    """``[phase]``: the solid phase a recipe must make, and how labels are treated."""

    required: Name | None = None
    min_confidence: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    phases: list[Name] = []
    label_timeout_s: Pos = 3600.0
    feasibility: bool = True
    p_floor: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05

    @model_validator(mode="after")
    def _check(self) -> PhaseConfig:
        if self.required is not None and self.phases and self.required not in self.phases:
            raise ValueError(f"required phase {self.required!r} is not in phases")
        return self

    def build(self) -> PhaseSettings:
        return PhaseSettings(**{**self.model_dump(), "phases": tuple(self.phases)})


class ReplicatesConfig(_Section):
    min_count: Annotated[int, Field(ge=1, le=10_000)] = 5
    max_count: Annotated[int, Field(ge=1, le=10_000)] = 48
    per_acquire: Annotated[int, Field(ge=1, le=1000)] = 5
    mad_threshold: Pos = 3.5
    mad_floor: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.005
    settle_tolerance: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.01
    settle_window: Annotated[int, Field(ge=1, le=1000)] = 3
    timeout_s: Pos = 120.0
    retries: Annotated[int, Field(ge=0, le=10)] = 1
    droplet_timeout_s: Pos = 30.0

    @model_validator(mode="after")
    def _check(self) -> ReplicatesConfig:
        if self.max_count < self.min_count:
            raise ValueError("max_count must be >= min_count")
        return self


class ExpansionConfig(_Section):
    enabled: bool = True
    edge_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.05
    min_hits: Annotated[int, Field(ge=1)] = 3
    patience: Annotated[int, Field(ge=1)] = 1
    grow_fraction: Annotated[float, Field(gt=0, le=10)] = 0.5


class TwoStepConfig(_Section):
    """``[strategy.two_step]``: the BO -> BO + DNN schedule (docs/campaign.md)."""

    bo: Literal["lp-ei", "qlognei", "ucb"] = "lp-ei"
    dnn_points: Annotated[int, Field(ge=0, le=1000)] = 7
    trust_cosine: Annotated[float, Field(gt=0, le=1)] = 0.95
    trust_mse: Pos | None = None
    members: Annotated[int, Field(ge=2, le=64)] = 5
    optimism: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    min_distance: Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)] = 0.1


class StrategyConfig(_Section):
    initial: Literal["lhs"] = "lhs"
    kind: Literal["lhs", "lp-ei", "qlognei", "ucb", "two-step"] = "lp-ei"
    initial_rounds: Annotated[int, Field(ge=1)] = 1
    ucb_beta: Pos = 2.0
    noise: Literal["learned", "known"] = "learned"
    expansion: ExpansionConfig = ExpansionConfig()
    two_step: TwoStepConfig = TwoStepConfig()


class NoImprovementConfig(_Section):
    window: Annotated[int, Field(ge=1, le=1000)]
    min_delta: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0


class RegretBoundConfig(_Section):
    level: Pos | None = None
    scale: Pos = 1.0

    @model_validator(mode="after")
    def _check(self) -> RegretBoundConfig:
        if self.level is not None and "scale" in self.model_fields_set:
            raise ValueError("give level (a fixed threshold) or scale (of the noise), not both")
        return self


class ModelAccuracyConfig(_Section):
    cosine: Annotated[float, Field(gt=0, le=1)] | None = None
    mse: Pos | None = None

    @model_validator(mode="after")
    def _check(self) -> ModelAccuracyConfig:
        if self.cosine is None and self.mse is None:
            raise ValueError("model_accuracy needs cosine and/or mse")
        return self


class StopRulesConfig(_Section):
    """Stop rules by key; :meth:`rules` builds them in the order they are reported."""

    max_rounds: Annotated[int, Field(ge=1)] | None = None
    max_conditions: Annotated[int, Field(ge=1)] | None = None
    wall_time_s: Pos | None = None
    target_loss: Annotated[float, Field(ge=0, le=1)] | None = None
    no_improvement: NoImprovementConfig | None = None
    regret_bound: RegretBoundConfig | None = None
    model_accuracy: ModelAccuracyConfig | None = None
    model_stability: Annotated[float, Field(gt=0, le=1)] | None = None

    def rules(self) -> list[StopRule]:
        """The rules given, objective and model rules first, budgets last (when
        several fire in the same round, the more informative reason is reported)."""
        return self._condition_rules() + self._budget_rules()

    def _condition_rules(self) -> list[StopRule]:
        rules: list[StopRule] = []
        if self.target_loss is not None:
            rules.append(TargetLoss(self.target_loss))
        if self.model_accuracy is not None:
            rules.append(ModelAccuracy(self.model_accuracy.cosine, self.model_accuracy.mse))
        if self.model_stability is not None:
            rules.append(ModelStability(self.model_stability))
        if self.regret_bound is not None:
            rules.append(RegretBound(self.regret_bound.level, self.regret_bound.scale))
        if self.no_improvement is not None:
            rules.append(NoImprovement(self.no_improvement.window, self.no_improvement.min_delta))
        return rules

    def _budget_rules(self) -> list[StopRule]:
        rules: list[StopRule] = []
        if self.max_rounds is not None:
            rules.append(MaxRounds(self.max_rounds))
        if self.max_conditions is not None:
            rules.append(MaxConditions(self.max_conditions))
        if self.wall_time_s is not None:
            rules.append(WallTime(self.wall_time_s))
        return rules


class StopGroupConfig(StopRulesConfig):
    """One ``[[stop.all_of]]`` group: fires when every rule in it fires."""

    @model_validator(mode="after")
    def _check(self) -> StopGroupConfig:
        n = len(self.rules())
        if n < 2:
            raise ValueError(
                f"an all_of group needs at least two rules, got {n} "
                "(a single rule belongs in [stop] itself)"
            )
        return self


class StopConfig(StopRulesConfig):
    """``[stop]``: the campaign stops when any rule given here fires, or when every
    rule of one of the ``[[stop.all_of]]`` groups does."""

    max_rounds: Annotated[int, Field(ge=1)] | None = 3
    all_of: list[StopGroupConfig] = Field(default=[], max_length=16)

    @model_validator(mode="after")
    def _check(self) -> StopConfig:
        if self.max_rounds is None and self.max_conditions is None and self.wall_time_s is None:
            raise ValueError(
                "[stop] needs a budget that always ends the campaign: "
                "max_rounds, max_conditions or wall_time_s"
            )
        return self

    def rule(self) -> StopRule:
        """Any of: the single objective and model rules, then the groups, then the budgets."""
        groups: list[StopRule] = [AllOf(tuple(g.rules())) for g in self.all_of]
        return AnyOf((*self._condition_rules(), *groups, *self._budget_rules()))

    def describe(self) -> str:
        """One line for humans: the rules given and the groups."""
        parts = [_rules_text(self, ", ")] if self.rules() else []
        parts += [f"all of ({_rules_text(g, ' and ')})" for g in self.all_of]
        return "; ".join(parts)

    def reads_strategy_metrics(self) -> bool:
        """Whether a regret-bound rule is configured (it needs a GP strategy)."""
        return self.regret_bound is not None or any(g.regret_bound for g in self.all_of)


class ParameterConfig(_Section):
    name: Name
    unit: str = ""
    bounds: tuple[float, float]
    hard_limits: tuple[float, float] | None = None
    expandable: bool = False
    resolution: Annotated[float, Field(ge=0)] = 0.0

    def build(self) -> Parameter:
        lo, hi = self.bounds
        hlo, hhi = self.hard_limits if self.hard_limits is not None else self.bounds
        return Parameter(self.name, lo, hi, hlo, hhi, self.expandable, self.resolution, self.unit)


class ConstraintConfig(_Section):
    coefficients: dict[Name, float]
    upper: float


class ChannelConfig(_Section):
    name: Name
    share: Name | None = None
    ratio: Annotated[float, Field(ge=0)] | None = None
    min_flow: Annotated[float, Field(ge=0)] = 0.0
    max_flow: Annotated[float, Field(gt=0)] = math.inf

    @model_validator(mode="after")
    def _one_source(self) -> ChannelConfig:
        if (self.share is None) == (self.ratio is None):
            raise ValueError(f"channel {self.name}: give exactly one of share or ratio")
        return self


class PumpConfig(_Section):
    total: Name
    channels: list[ChannelConfig] = Field(min_length=1)


class DriversConfig(_Section):
    required: list[Literal["pump", "spectrometer", "xrd"]] = ["pump", "spectrometer", "xrd"]
    heartbeat_interval_s: Pos = 0.5
    heartbeat_timeout_s: Pos = 5.0
    settle_timeout_s: Pos = 60.0


class BusConfig(_Section):
    base: str = "tcp://127.0.0.1:5560"
    max_message_bytes: Annotated[int, Field(ge=1024, le=64 << 20)] = 1 << 20
    status_interval_s: Annotated[float, Field(ge=0.05, le=3600, allow_inf_nan=False)] = 2.0


class SecurityConfig(_Section):
    """``[security]``: CURVE on every endpoint the agent binds (docs/security.md).

    The agent's key pair comes from ``secret_key_file`` (a ``.key_secret``
    file, mode 0600) or ``secret_key`` (the Z85 secret itself, meant for the
    environment: ``SDL_AGENT_SECURITY__SECRET_KEY``); ``allowed_keys`` lists the
    clients let in: ``.key`` files or directories of them, each key sending only
    as the name of its file (``pump.key``: ``pump``); ``monitor_keys``
    the same for clients let in on the status endpoint only (monitors, which
    then cannot publish measurements or talk on the commands endpoint).
    Relative paths are relative to the campaign file. Neither the section nor a secret is ever
    logged, journalled or part of the configuration hash.
    """

    secret_key_file: Path | None = None
    secret_key: SecretStr | None = None
    allowed_keys: list[Path] = Field(default=[], max_length=1000)
    monitor_keys: list[Path] = Field(default=[], max_length=1000)

    @field_validator("allowed_keys", "monitor_keys", mode="before")
    @classmethod
    def _one_path(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | Path) else value

    @model_validator(mode="after")
    def _check(self) -> SecurityConfig:
        if self.secret_key_file is not None and self.secret_key is not None:
            raise ValueError("give secret_key_file or secret_key, not both")
        if self.enabled and not self.allowed_keys:
            raise ValueError("a secret key needs allowed_keys (the clients' public keys)")
        if (self.allowed_keys or self.monitor_keys) and not self.enabled:
            raise ValueError(
                "allowed_keys and monitor_keys need the agent's secret_key_file (or secret_key)"
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.secret_key_file is not None or self.secret_key is not None

    def build(self, base_dir: Path) -> ServerSecurity | None:
        """The agent's keys and allow-list, read from their files (None: no CURVE).

        Raises:
            KeyFileError: a key file is missing, malformed or readable by others.
        """
        if self.secret_key is not None:
            keys = CurveKeys.from_secret(
                self.secret_key.get_secret_value(), where="security.secret_key"
            )
        elif self.secret_key_file is not None:
            keys = load_secret_key(_under(base_dir, self.secret_key_file))
        else:
            return None
        names = load_key_names(_under(base_dir, p) for p in self.allowed_keys)
        monitors: frozenset[bytes] = frozenset()
        if self.monitor_keys:
            monitors = load_allowed_keys(_under(base_dir, p) for p in self.monitor_keys)
        return ServerSecurity(keys, frozenset(names), monitors=monitors, names=names)


class CampaignConfig(_Section):
    """The whole campaign file."""

    campaign: CampaignSection = CampaignSection()
    objective: ObjectiveConfig
    replicates: ReplicatesConfig = ReplicatesConfig()
    phase: PhaseConfig = PhaseConfig()
    strategy: StrategyConfig = StrategyConfig()
    stop: StopConfig = StopConfig()
    parameters: list[ParameterConfig] = Field(min_length=1)
    constraints: list[ConstraintConfig] = []
    pump: PumpConfig | None = None
    drivers: DriversConfig = DriversConfig()
    bus: BusConfig = BusConfig()
    security: SecurityConfig = Field(default=SecurityConfig(), exclude=True)
    base_dir: Path = Field(default=Path("."), exclude=True)

    @classmethod
    def from_toml(
        cls,
        path: str | Path,
        overrides: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CampaignConfig:
        """Read, override (env, then ``overrides``) and validate a campaign file.

        Raises:
            ConfigError: unreadable file, bad TOML, or invalid values (the
                message lists each problem with its location).
        """
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read campaign file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        env = os.environ if env is None else env
        for key, value in env.items():
            if key.startswith(ENV_PREFIX):
                dotted = key[len(ENV_PREFIX) :].lower().replace("__", ".")
                _apply(raw, dotted, value)
        for dotted, value in (overrides or {}).items():
            _apply(raw, dotted, value)
        raw["base_dir"] = path.resolve().parent
        try:
            cfg = cls.model_validate(raw)
            cfg.to_settings()  # cross-section checks: names, target file, strategies
            cfg.server_security()  # the key files are there and readable
        except ValidationError as exc:
            raise ConfigError(_describe(path, exc)) from None
        except (ValueError, KeyError, OSError, KeyFileError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        return cfg

    @model_validator(mode="after")
    def _check_split(self) -> CampaignConfig:
        split = self.strategy.kind == "two-step"
        if split and self.strategy.two_step.dnn_points > self.campaign.batch_size:
            raise ValueError(
                f"strategy.two_step.dnn_points ({self.strategy.two_step.dnn_points}) exceeds "
                f"campaign.batch_size ({self.campaign.batch_size})"
            )
        return self

    @model_validator(mode="after")
    def _check_stop_rules(self) -> CampaignConfig:
        if self.stop.reads_strategy_metrics() and self.strategy.kind == "lhs":
            raise ValueError(
                "stop.regret_bound needs a GP strategy (strategy.kind lp-ei, ucb or "
                "qlognei); with lhs it could never fire"
            )
        return self

    def server_security(self) -> ServerSecurity | None:
        """``[security]`` with its keys read (None: not configured, plain text).

        Raises:
            KeyFileError: see :meth:`SecurityConfig.build`.
        """
        return self.security.build(self.base_dir)

    def space(self) -> Space:
        channels = None
        if self.pump is not None:
            channels = ChannelMap(
                self.pump.total,
                tuple(
                    Channel(c.name, c.share, c.ratio, c.min_flow, c.max_flow)
                    for c in self.pump.channels
                ),
            )
        return Space(
            parameters=tuple(p.build() for p in self.parameters),
            constraints=tuple(LinearConstraint(c.coefficients, c.upper) for c in self.constraints),
            channels=channels,
        )

    def target(self) -> np.ndarray:
        """The target spectrum on the campaign grid (CSV: wavelength_nm, absorbance)."""
        path = self.objective.target
        if not path.is_absolute():
            path = self.base_dir / path
        return load_target(path, self.objective.grid)

    def to_settings(self) -> CampaignSettings:
        """The core's view of this file."""
        space = self.space()
        grid = self.objective.grid
        loss = AgnpLoss(
            self.target(),
            grid.wavelengths,
            self.objective.amplitude_low,
            self.objective.amplitude_high,
        )
        r = self.replicates
        s = self.strategy
        return CampaignSettings(
            campaign_id=self.campaign.id,
            space=space,
            loss=loss,
            grid=grid,
            replicates=ReplicateSettings(**r.model_dump()),
            initial_strategy=make_strategy(s.initial),
            strategy=make_strategy(
                s.kind,
                beta=s.ucb_beta,
                noise=s.noise,
                loss=loss,
                two_step=s.two_step.model_dump(),
            ),
            stop_rule=self.stop.rule(),
            batch_size=self.campaign.batch_size,
            initial_rounds=s.initial_rounds,
            expansion=make_expansion(**s.expansion.model_dump()),
            required_roles=tuple(self.drivers.required),
            label_role="xrd" if "xrd" in self.drivers.required else None,
            heartbeat_timeout_s=self.drivers.heartbeat_timeout_s,
            settle_timeout_s=self.drivers.settle_timeout_s,
            phase=self.phase.build(),
        )


def load_target(path: Path, grid: Grid) -> np.ndarray:
    """Read a target CSV and put it on ``grid`` (linear interpolation inside its range).

    Raises:
        ValueError: unreadable, non-numeric, or not covering the grid.
    """
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh) if r and not r[0].startswith("#")]
    except OSError as exc:
        raise ValueError(f"cannot read target spectrum {path}: {exc.strerror}") from None
    if rows and not _is_number(rows[0][0]):
        rows = rows[1:]
    try:
        data = np.array([[float(a), float(b)] for a, b, *_ in rows])
    except ValueError:
        raise ValueError(f"target spectrum {path}: non-numeric values") from None
    if data.ndim != 2 or len(data) < 2 or not np.all(np.isfinite(data)):
        raise ValueError(f"target spectrum {path}: need >= 2 finite rows")
    wl = grid.wavelengths
    if data[0, 0] > wl[0] + 1e-6 or data[-1, 0] < wl[-1] - 1e-6:
        raise ValueError(
            f"target spectrum {path} covers {data[0, 0]:g}-{data[-1, 0]:g} nm, "
            f"the grid needs {wl[0]:g}-{wl[-1]:g} nm"
        )
    return np.interp(wl, data[:, 0], data[:, 1])


def _under(base_dir: Path, path: Path) -> Path:
    return path if path.is_absolute() else base_dir / path


def _apply(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a table")
    node[leaf] = _parse_value(value)


def _parse_value(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def _rules_text(rules: StopRulesConfig, sep: str) -> str:
    given = rules.model_dump(exclude_none=True, exclude={"all_of"})
    return sep.join(f"{k} {_inline(v)}" for k, v in given.items())


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {v:g}" for k, v in value.items()) + "}"
    return f"{value:g}"


def _describe(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: {exc.error_count()} problem(s):"]
    for e in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {where}: {e['msg']}")
    return "\n".join(lines)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
