"""`venues.yaml`: load, validate fully at start-up, and say exactly which key is wrong.

Structure and types are checked by pydantic models; references between sections (a priced
instrument's source must be a configured venue subscribing that instrument) are checked
after, with the same `key.path: message` form.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from mmengine.errors import ConfigError
from mmengine.model import INSTRUMENT_RE
from mmengine.pricing.model import FxSpec, InstrumentSpec, QuoteParams, SourceSpec
from mmengine.venues.base import VenueSpec
from mmengine.venues.registry import PROTOCOLS


def check_instrument(value: str) -> str:
    if not INSTRUMENT_RE.match(value):
        raise ValueError(
            f"{value!r} is not BASE-QUOTE (e.g. BTC-USDT, BTC-USDT-PERP, BTC-USD-20261225)"
        )
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EngineConfig(Strict):
    run_dir: str = Field(
        default_factory=lambda: str(Path(tempfile.gettempdir()) / "mmengine"),
        description="Directory for IPC sockets and endpoints.json (created 0700).",
    )
    pricing_workers: Annotated[int, Field(ge=1, le=64)] = 2
    epoch: Annotated[int, Field(ge=0)] | None = None
    top_levels: Annotated[int, Field(ge=1, le=50)] = 5
    switch_interval_us: Annotated[int, Field(ge=50, le=10_000)] = 500
    metrics_port: Annotated[int, Field(ge=1, le=65535)] | None = Field(
        default=None, description="Serve Prometheus metrics on 127.0.0.1:PORT."
    )
    shutdown_timeout_s: Annotated[float, Field(ge=1, le=600)] = Field(
        default=15.0,
        description="Stop joins every thread within this, or names those alive and exits 1.",
    )


class VenueConfig(Strict):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]*$")]
    protocol: str
    url: str | None = None
    rest_url: str | None = None
    instruments: Annotated[list[str], Field(min_length=1)]
    depth: Annotated[int, Field(ge=1, le=5000)] = 100
    audit: bool = False

    @field_validator("protocol")
    @classmethod
    def _known_protocol(cls, value: str) -> str:
        if value not in PROTOCOLS:
            raise ValueError(f"unknown protocol {value!r}; known: {', '.join(sorted(PROTOCOLS))}")
        return value

    @field_validator("depth")
    @classmethod
    def _depth_offered(cls, value: int, info: ValidationInfo) -> int:
        venue = PROTOCOLS.get(str(info.data.get("protocol")))
        if venue is not None and venue.depths is not None and value not in venue.depths:
            offered = ", ".join(map(str, venue.depths))
            raise ValueError(f"{venue.protocol} offers depths {offered}; was {value}")
        return value

    @field_validator("instruments")
    @classmethod
    def _instruments(cls, values: list[str], info: ValidationInfo) -> list[str]:
        venue = PROTOCOLS.get(str(info.data.get("protocol")))
        for value in values:
            check_instrument(value)
            problem = venue.instrument_problem(value) if venue is not None else None
            if problem is not None:
                raise ValueError(problem)
        if len(set(values)) != len(values):
            raise ValueError("an instrument is listed twice")
        return values


class SourceConfig(Strict):
    venue: str
    instrument: str | None = Field(
        default=None, description="The venue's instrument; defaults to the priced name."
    )
    weight: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="weighted_mid: fixed weight (default: top-of-book size)."
    )


class FairValueConfig(Strict):
    method: Literal["mid", "weighted_mid", "microprice"] = "mid"
    levels: Annotated[int, Field(ge=1, le=50)] = 1  # microprice: levels per side


class VolatilityConfig(Strict):
    half_life_s: Annotated[float, Field(gt=0)] = 30.0
    horizon_s: Annotated[float, Field(gt=0)] = 1.0


class QuoteConfig(Strict):
    levels: Annotated[int, Field(ge=0, le=50)] = 3
    min_spread_bps: Annotated[float, Field(ge=0)] = 2.0
    vol_mult: Annotated[float, Field(ge=0)] = 1.0
    level_step_bps: Annotated[float, Field(ge=0)] = 1.0
    size: Annotated[float, Field(gt=0)] = 1.0
    size_step: Annotated[float, Field(ge=0)] = 0.0
    skew_bps_at_max: Annotated[float, Field(ge=0)] = 0.0
    max_position: Annotated[float, Field(gt=0)] = 1.0
    skew_sizes: bool = False


class InstrumentConfig(Strict):
    name: str
    sources: Annotated[list[SourceConfig], Field(min_length=1)]
    max_age_ms: Annotated[float, Field(gt=0)] = 5000.0
    fair_value: FairValueConfig = FairValueConfig()
    outlier_bps: Annotated[float, Field(gt=0)] = 100.0
    min_venues: Annotated[int, Field(ge=1)] = 2
    max_jump_bps: Annotated[float, Field(gt=0)] = 500.0
    volatility: VolatilityConfig = VolatilityConfig()
    quote: QuoteConfig = QuoteConfig()
    tick: Annotated[float, Field(gt=0)] = 0.01
    lot: Annotated[float, Field(gt=0)] = 0.0001
    position: float = 0.0

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_instrument(value)


class FxConfig(Strict):
    """A conversion rate: `pair` BASE-QUOTE is the price of one BASE in QUOTE."""

    pair: str
    fixed: Annotated[float, Field(gt=0)] | None = None
    instrument: str | None = Field(
        default=None, description="A priced instrument whose fair value is the rate."
    )
    max_age_ms: Annotated[float, Field(gt=0)] = 10_000.0

    @field_validator("pair")
    @classmethod
    def _pair(cls, value: str) -> str:
        return check_instrument(value)


class IpcOutput(Strict):
    books: bool = Field(default=True, description="Also publish venue BookTops on IPC.")


class KafkaOutput(Strict):
    """Deliver every Price to Kafka (key = instrument, value = Avro single-object payload)."""

    bootstrap_servers: Annotated[
        str, Field(pattern=r"^[^\s,:]+:\d+(,[^\s,:]+:\d+)*$", description="HOST:PORT[,...]")
    ]
    topic: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")] = "mmengine.prices"
    partitions: Annotated[int, Field(ge=1, le=10_000)] = 6
    replication: Annotated[int, Field(ge=1, le=32)] = 1
    linger_ms: Annotated[int, Field(ge=0, le=10_000)] = 5
    batch_size: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 256 * 1024
    client: Literal["kafka-python", "confluent"] = Field(
        default="kafka-python",
        description="confluent needs the confluent-kafka package; see docs/kafka.md.",
    )
    idempotence: bool = Field(
        default=True,
        description="Idempotent producer (the writer rebuilds it if the broker forgets it).",
    )
    in_flight_records: Annotated[int, Field(ge=1, le=1_000_000)] = 20_000
    drain_timeout_s: Annotated[float, Field(ge=0, le=600)] = 5.0


class PostgresOutput(Strict):
    """Deliver every Price to PostgreSQL: price_history, price_latest, NOTIFY mmengine_prices."""

    dsn: str | None = Field(
        default=None,
        description="libpq DSN or URI; default $MMENGINE_PG_DSN, then the PG* variables. "
        "Keep the password out of it (PGPASSWORD or ~/.pgpass): it is never logged.",
    )
    batch_max_rows: Annotated[int, Field(ge=1, le=200_000)] = 5_000
    batch_max_wait_ms: Annotated[int, Field(ge=0, le=60_000)] = 50
    connect_timeout_s: Annotated[float, Field(ge=1, le=60)] = 5.0
    reconnect_min_s: Annotated[float, Field(gt=0, le=60)] = 0.2
    reconnect_max_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    drain_timeout_s: Annotated[float, Field(ge=0, le=600)] = 5.0
    statement_timeout_ms: Annotated[int, Field(ge=100, le=3_600_000)] = Field(
        default=10_000, description="A batch statement running longer is cancelled, retried."
    )
    lock_timeout_ms: Annotated[int, Field(ge=10, le=3_600_000)] = Field(
        default=2_000, description="A batch waiting longer on another session's lock: retried."
    )


class OutputsConfig(Strict):
    ipc: IpcOutput = IpcOutput()
    kafka: KafkaOutput | None = None
    postgres: PostgresOutput | None = None


def default_state_dir() -> Path:
    """Where the engine keeps what must survive a restart or a reboot (spools, the last
    epoch): systemd's `$STATE_DIRECTORY` (StateDirectory=), else `$XDG_STATE_HOME/mmengine`,
    else `~/.local/state/mmengine`. Never the temp dir, which many systems clear at boot."""
    systemd = os.environ.get("STATE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "mmengine"


class FsyncInterval(Strict):
    """fsync the spool's segment files at most every `interval_ms` (and on shut-down)."""

    interval_ms: Annotated[int, Field(ge=0, le=60_000)]


class LimitsConfig(Strict):
    stale_after_s: Annotated[float, Field(gt=0)] = 10.0
    reconnect_max_s: Annotated[float, Field(gt=0)] = 30.0
    spool_dir: str = Field(
        default_factory=lambda: str(default_state_dir() / "spool"),
        description="Writers' spools live in <spool_dir>/<sink>, the last epoch in "
        "<spool_dir>/epoch; default $XDG_STATE_HOME/mmengine/spool (~/.local/state/...).",
    )
    fsync: Literal["none"] | FsyncInterval = Field(
        default_factory=lambda: FsyncInterval(interval_ms=100),
        description="'none', or {interval_ms: N}: what a power cut can lose (docs/operations.md).",
    )
    spool_max_bytes: Annotated[int, Field(ge=1024)] = 1024**3  # per sink
    spool_memory_records: Annotated[int, Field(ge=1, le=10_000_000)] = 10_000


class Config(Strict):
    engine: EngineConfig = EngineConfig()
    venues: Annotated[list[VenueConfig], Field(min_length=1)]
    instruments: Annotated[list[InstrumentConfig], Field(min_length=1)]
    fx: list[FxConfig] = []
    outputs: OutputsConfig = OutputsConfig()
    limits: LimitsConfig = Field(default_factory=LimitsConfig)  # reads the environment

    def venue_specs(self) -> list[VenueSpec]:
        return [
            VenueSpec(
                name=v.name,
                protocol=v.protocol,
                instruments=tuple(v.instruments),
                depth=v.depth,
                url=v.url,
                rest_url=v.rest_url,
                top_levels=self.engine.top_levels,
                audit=v.audit,
                stale_after_s=self.limits.stale_after_s,
            )
            for v in self.venues
        ]

    def fx_for(self, have: str, want: str) -> tuple[str, bool] | None:
        """(fx key, inverted) converting quote currency `have` into `want`, if configured.

        The key is what the pricing worker's rate table holds: the pair for a fixed rate,
        the priced instrument for an engine-priced one."""
        for f in self.fx:
            base, quote = f.pair.split("-")[:2]
            if (base, quote) in ((have, want), (want, have)):
                return (f.instrument or f.pair), (base, quote) == (want, have)
        return None

    def fx_specs(self) -> tuple[FxSpec, ...]:
        return tuple(FxSpec(f.pair, f.fixed, f.instrument, f.max_age_ms) for f in self.fx)

    def instrument_specs(self) -> list[InstrumentSpec]:
        specs = []
        for i in self.instruments:
            sources = []
            for s in i.sources:
                name = s.instrument or i.name
                fx = self.fx_for(quote_of(name), quote_of(i.name))
                sources.append(
                    SourceSpec(
                        s.venue,
                        name,
                        weight=s.weight,
                        fx=fx[0] if fx and quote_of(name) != quote_of(i.name) else None,
                        fx_invert=bool(fx and fx[1]),
                    )
                )
            q = i.quote
            specs.append(
                InstrumentSpec(
                    name=i.name,
                    sources=tuple(sources),
                    max_age_ms=i.max_age_ms,
                    method=i.fair_value.method,
                    micro_levels=i.fair_value.levels,
                    outlier_bps=i.outlier_bps,
                    min_venues=i.min_venues,
                    max_jump_bps=i.max_jump_bps,
                    vol_half_life_s=i.volatility.half_life_s,
                    vol_horizon_s=i.volatility.horizon_s,
                    tick=i.tick,
                    lot=i.lot,
                    quote=QuoteParams(
                        levels=q.levels,
                        min_spread_bps=q.min_spread_bps,
                        vol_mult=q.vol_mult,
                        level_step_bps=q.level_step_bps,
                        size=q.size,
                        size_step=q.size_step,
                        skew_bps_at_max=q.skew_bps_at_max,
                        max_position=q.max_position,
                        skew_sizes=q.skew_sizes,
                    ),
                )
            )
        return specs

    def positions(self) -> dict[str, float]:
        return {i.name: i.position for i in self.instruments if i.position}


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _cross_check(cfg: Config) -> list[str]:
    problems: list[str] = []
    venues: dict[str, VenueConfig] = {}
    for i, v in enumerate(cfg.venues):
        if v.name in venues:
            problems.append(f"venues[{i}].name: {v.name!r} is used by another venue")
        venues[v.name] = v
    seen: set[str] = set()
    for i, inst in enumerate(cfg.instruments):
        if inst.name in seen:
            problems.append(f"instruments[{i}].name: {inst.name!r} is priced twice")
        seen.add(inst.name)
        for j, src in enumerate(inst.sources):
            where = f"instruments[{i}].sources[{j}]"
            venue = venues.get(src.venue)
            if venue is None:
                problems.append(f"{where}.venue: {src.venue!r} is not a configured venue")
                continue
            name = src.instrument or inst.name
            if name not in venue.instruments:
                problems.append(
                    f"{where}.instrument: {name!r} is not subscribed on venue {src.venue!r} "
                    f"(it lists {', '.join(venue.instruments)})"
                )
    priced = {i.name for i in cfg.instruments}
    for i, f in enumerate(cfg.fx):
        where = f"fx[{i}]"
        if (f.fixed is None) == (f.instrument is None):
            problems.append(f"{where}: give exactly one of 'fixed' or 'instrument'")
        elif f.instrument is not None and f.instrument not in priced:
            problems.append(f"{where}.instrument: {f.instrument!r} is not a priced instrument")
    for i, inst in enumerate(cfg.instruments):
        for j, src in enumerate(inst.sources):
            have, want = quote_of(src.instrument or inst.name), quote_of(inst.name)
            if have != want and cfg.fx_for(have, want) is None:
                problems.append(
                    f"instruments[{i}].sources[{j}]: quoted in {have}, priced in {want}, and no "
                    f"fx entry converts them (add fx: [{{pair: {have}-{want}, fixed: 1.0}}] "
                    f"or one with 'instrument')"
                )
    return problems


def quote_of(instrument: str) -> str:
    """`BTC-USDT-PERP` -> `USDT`."""
    return instrument.split("-")[1]


def parse_config(doc: Any) -> Config:
    """Validate a decoded YAML document; raises ConfigError listing every problem."""
    if not isinstance(doc, dict):
        raise ConfigError([f"(top level): expected a mapping, was {type(doc).__name__}"])
    try:
        cfg = Config.model_validate(doc)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif err["type"] == "missing":
                msg = "required key is missing"
            elif "input" in err and err["type"] not in ("value_error",):
                msg = f"{msg} (was {err['input']!r})"
            problems.append(f"{_path(err['loc'])}: {msg}")
        raise ConfigError(problems) from None
    problems = _cross_check(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file. YAML is loaded with the safe loader (no tags)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    return parse_config(doc)
