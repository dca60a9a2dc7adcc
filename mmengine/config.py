"""`venues.yaml`: load, validate fully at start-up, and say exactly which key is wrong.

Structure, types and ranges are checked by pydantic models (every number finite, within
what a trading user would mean); references between sections (a priced instrument's
source must be a configured venue subscribing that instrument) are checked on the same
document in the same pass, so one run of `check-config` lists every problem, each as
`key.path: message`, with "did you mean" for a near-miss key or name. Settings that are
valid but cannot do what they seem to ask (an instrument that can never quote) are
`warnings`.
"""

from __future__ import annotations

import difflib
import os
import re
import typing
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
    model_validator,
)

from mmengine.book.core import book_core
from mmengine.errors import ConfigError
from mmengine.locate import default_run_dir
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


# Bounds a trading user would mean. Every float is also finite (`allow_inf_nan=False`).
MAX_BPS = 10_000.0  # 100 %: a spread, step or skew of that much reaches a price of 0
INT64_MAX = 2**63 - 1  # `epoch` is an Avro long and a Postgres bigint
HOUR_MS = 3_600_000.0
DAY_S = 86_400.0
PG_PASSWORD_ENV = "PGPASSWORD"


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    """` (did you mean 'x'?)` for a near miss among `choices`, else ``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class EngineConfig(Strict):
    run_dir: str = Field(
        default_factory=lambda: str(default_run_dir()),
        description="Directory for IPC sockets and endpoints.json (created 0700); default "
        "$MMENGINE_RUN_DIR, else <tmp>/mmengine: where the tools look without --run-dir.",
    )
    pricing_workers: Annotated[int, Field(ge=1, le=64)] = 2
    epoch: Annotated[int, Field(ge=0, le=INT64_MAX)] | None = None
    top_levels: Annotated[int, Field(ge=1, le=50)] = 5
    switch_interval_us: Annotated[int, Field(ge=50, le=10_000)] = 500
    metrics_port: Annotated[int, Field(ge=1, le=65535)] | None = Field(
        default=None, description="Serve Prometheus metrics on 127.0.0.1:PORT."
    )
    shutdown_timeout_s: Annotated[float, Field(ge=1, le=600)] = Field(
        default=15.0,
        description="Stop joins every thread within this, or names those alive and exits 1.",
    )
    book_core: Literal["compiled", "python"] | None = Field(
        default=None,
        validate_default=True,
        description="Which book core keeps the venue books: compiled (C++, built by "
        "`make venv`) or python (the pure-Python reference, for debugging); default "
        "$MMENGINE_BOOK, else compiled. A compiled core that is not built is an error.",
    )

    @field_validator("book_core")
    @classmethod
    def _book_core_available(cls, value: str | None) -> str | None:
        try:
            book_core(value)
        except ConfigError as exc:
            raise ValueError("; ".join(exc.problems)) from None
        return value


class VenueConfig(Strict):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]*$")]
    protocol: str
    url: str | None = None
    rest_url: str | None = None
    instruments: Annotated[list[str], Field(min_length=1)]
    depth: Annotated[int, Field(ge=1, le=5000)] = 100
    audit: bool = False
    ca_file: str | None = Field(
        default=None,
        description="PEM file of the CAs trusted for this venue's wss:// and https:// "
        "(default: the system's trust store).",
    )

    @field_validator("ca_file")
    @classmethod
    def _ca_file_readable(cls, value: str | None) -> str | None:
        if value is not None and not (Path(value).is_file() and os.access(value, os.R_OK)):
            raise ValueError(f"{value!r} is not a readable file")
        return value

    @field_validator("protocol")
    @classmethod
    def _known_protocol(cls, value: str) -> str:
        if value not in PROTOCOLS:
            raise ValueError(
                f"unknown protocol {value!r}{did_you_mean(value, PROTOCOLS)}; "
                f"known: {', '.join(sorted(PROTOCOLS))}"
            )
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
    weight: Annotated[float, Field(gt=0, le=1e12)] | None = Field(
        default=None, description="weighted_mid: fixed weight (default: top-of-book size)."
    )


class FairValueConfig(Strict):
    method: Literal["mid", "weighted_mid", "microprice"] = "mid"
    levels: Annotated[int, Field(ge=1, le=50)] = 1  # microprice: levels per side


class VolatilityConfig(Strict):
    half_life_s: Annotated[float, Field(gt=0, le=DAY_S)] = 30.0
    horizon_s: Annotated[float, Field(gt=0, le=DAY_S)] = 1.0


class QuoteConfig(Strict):
    levels: Annotated[int, Field(ge=0, le=50)] = 3
    min_spread_bps: Annotated[float, Field(ge=0, lt=2 * MAX_BPS)] = 2.0
    vol_mult: Annotated[float, Field(ge=0, le=1000)] = 1.0
    level_step_bps: Annotated[float, Field(ge=0, lt=MAX_BPS)] = 1.0
    size: Annotated[float, Field(gt=0, le=1e12)] = 1.0
    size_step: Annotated[float, Field(ge=0, le=1e12)] = 0.0
    skew_bps_at_max: Annotated[float, Field(ge=0, lt=MAX_BPS)] = 0.0
    max_position: Annotated[float, Field(gt=0, le=1e12)] = 1.0
    skew_sizes: bool = False

    @model_validator(mode="after")
    def _bids_stay_above_zero(self) -> QuoteConfig:
        # Level i bids fair * (1 - (half_spread + i * step) / 1e4) around a center that the
        # skew moves by less than 100 %; half_spread >= min_spread / 2 (volatility only
        # widens it, and pricing halts on a ladder that reaches 0). So the deepest bid at
        # fair value with no volatility is already <= 0 when this reaches 100 %.
        if self.levels:
            deepest = self.min_spread_bps / 2 + self.level_step_bps * (self.levels - 1)
            if deepest >= MAX_BPS:
                raise ValueError(
                    f"the deepest bid would sit min_spread_bps/2 + (levels-1) * level_step_bps"
                    f" = {deepest:g} bps below fair value, at or below 0: keep it under "
                    f"{MAX_BPS:g} (fewer levels or a smaller level_step_bps)"
                )
        return self


class InstrumentConfig(Strict):
    name: str
    sources: Annotated[list[SourceConfig], Field(min_length=1)]
    max_age_ms: Annotated[float, Field(gt=0, le=HOUR_MS)] = 5000.0
    fair_value: FairValueConfig = FairValueConfig()
    # Beyond 100 % a limit simply never trips (a way to switch it off): finite is enough.
    outlier_bps: Annotated[float, Field(gt=0, le=1e6)] = 100.0
    min_venues: Annotated[int, Field(ge=1, le=100)] = 2
    max_jump_bps: Annotated[float, Field(gt=0, le=1e6)] = 500.0
    volatility: VolatilityConfig = VolatilityConfig()
    quote: QuoteConfig = QuoteConfig()
    tick: Annotated[float, Field(gt=0, le=1e6)] = 0.01
    lot: Annotated[float, Field(gt=0, le=1e6)] = 0.0001
    position: Annotated[float, Field(ge=-1e12, le=1e12)] = 0.0

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_instrument(value)


class FxConfig(Strict):
    """A conversion rate: `pair` BASE-QUOTE is the price of one BASE in QUOTE."""

    pair: str
    fixed: Annotated[float, Field(ge=1e-9, le=1e9)] | None = None
    instrument: str | None = Field(
        default=None, description="A priced instrument whose fair value is the rate."
    )
    max_age_ms: Annotated[float, Field(gt=0, le=24 * HOUR_MS)] = 10_000.0

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
        default="confluent",
        description="confluent (librdkafka; the default) sustains 20,000 Prices/s with lag "
        "p99 in tens of ms where kafka-python falls behind; see docs/kafka.md.",
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
        "No password here: it comes from PGPASSWORD (or ~/.pgpass, or $MMENGINE_PG_DSN).",
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

    @field_validator("dsn")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        # Config files get copied, committed and shared; the password belongs in the
        # environment (README: "never from the file").
        if value is not None and (
            re.search(r"(^|\s)password\s*=", value, re.I)
            or re.search(r"[?&]password=", value, re.I)
            or re.match(r"^[a-z][a-z0-9+.-]*://[^/?#@:\s]*:[^/?#@\s]+@", value, re.I)
        ):
            raise ValueError(
                f"holds a password; keep it out of the config file: set {PG_PASSWORD_ENV} "
                "in the environment (or use ~/.pgpass, or give the whole DSN in "
                "MMENGINE_PG_DSN)"
            )
        return value


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
    stale_after_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    reconnect_max_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
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
    engine: EngineConfig = Field(default_factory=EngineConfig)  # (validated when built)
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
                ca_file=v.ca_file,
                book_core=self.engine.book_core,
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

    def warnings(self) -> list[str]:
        """Valid settings that cannot do what they seem to ask (`check-config` prints them,
        `run` logs them)."""
        out = []
        for n, i in enumerate(self.instruments):
            if i.min_venues > len(i.sources):
                out.append(
                    f"instruments[{n}].min_venues: {i.min_venues}, but {i.name} has "
                    f"{len(i.sources)} source(s): it will never quote"
                )
            if i.fair_value.method == "microprice" and i.fair_value.levels > self.engine.top_levels:
                out.append(
                    f"instruments[{n}].fair_value.levels: {i.fair_value.levels}, but each venue "
                    f"top carries engine.top_levels = {self.engine.top_levels} levels"
                )
            if abs(i.position) > i.quote.max_position:
                out.append(
                    f"instruments[{n}].position: {i.position:g} is beyond quote.max_position "
                    f"{i.quote.max_position:g}: the skew is capped at quote.skew_bps_at_max"
                )
        return out


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _entries(doc: dict[str, Any], key: str) -> list[tuple[int, dict[str, Any]]]:
    """(index, mapping) of each mapping in the list `doc[key]` (anything else is skipped:
    the models report it)."""
    value = doc.get(key)
    if not isinstance(value, list):
        return []
    return [(n, e) for n, e in enumerate(value) if isinstance(e, dict)]


def _cross_check(doc: dict[str, Any]) -> list[str]:
    """References between sections, checked on the raw document so that they are reported
    in the same pass as the models' own errors (a malformed entry is skipped here)."""
    problems: list[str] = []
    venues: dict[str, list[str]] = {}
    for i, v in _entries(doc, "venues"):
        name = v.get("name")
        if not isinstance(name, str):
            continue
        if name in venues:
            problems.append(f"venues[{i}].name: {name!r} is used by another venue")
        listed = v.get("instruments")
        venues[name] = [x for x in listed if isinstance(x, str)] if isinstance(listed, list) else []
    seen: set[str] = set()
    priced: dict[str, dict[str, Any]] = {}
    for i, inst in _entries(doc, "instruments"):
        name = inst.get("name")
        if isinstance(name, str):
            if name in seen:
                problems.append(f"instruments[{i}].name: {name!r} is priced twice")
            seen.add(name)
            priced[name] = inst
        for j, src in _entries(inst, "sources"):
            where = f"instruments[{i}].sources[{j}]"
            venue = src.get("venue")
            if not isinstance(venue, str):
                continue
            if venue not in venues:
                problems.append(
                    f"{where}.venue: {venue!r} is not a configured venue"
                    f"{did_you_mean(venue, venues)}"
                )
                continue
            wanted = src.get("instrument") or name
            if isinstance(wanted, str) and wanted not in venues[venue]:
                problems.append(
                    f"{where}.instrument: {wanted!r} is not subscribed on venue {venue!r} "
                    f"(it lists {', '.join(venues[venue])})"
                )
    fx = _entries(doc, "fx")
    for i, f in fx:
        where = f"fx[{i}]"
        if (f.get("fixed") is None) == (f.get("instrument") is None):
            problems.append(f"{where}: give exactly one of 'fixed' or 'instrument'")
        elif f.get("instrument") is not None and f["instrument"] not in priced:
            problems.append(
                f"{where}.instrument: {f['instrument']!r} is not a priced instrument"
                f"{did_you_mean(str(f['instrument']), priced)}"
            )
    pairs = {tuple(str(f["pair"]).split("-")[:2]) for _, f in fx if isinstance(f.get("pair"), str)}
    for i, inst in _entries(doc, "instruments"):
        name = inst.get("name")
        for j, src in _entries(inst, "sources"):
            source = src.get("instrument") or name
            if not (isinstance(name, str) and isinstance(source, str)):
                continue
            if not (INSTRUMENT_RE.match(name) and INSTRUMENT_RE.match(source)):
                continue  # reported as not BASE-QUOTE
            have, want = quote_of(source), quote_of(name)
            if have != want and (have, want) not in pairs and (want, have) not in pairs:
                problems.append(
                    f"instruments[{i}].sources[{j}]: quoted in {have}, priced in {want}, and no "
                    f"fx entry converts them (add fx: [{{pair: {have}-{want}, fixed: 1.0}}] "
                    f"or one with 'instrument')"
                )
    return problems


def _unwrap(annotation: Any) -> list[Any]:
    """The classes inside an annotation (Optional, Annotated, list[...] unwrapped)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin is not None:
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg)]
    return [annotation]


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    """The keys a config section at `loc` accepts (empty if not a section)."""
    models: list[type[BaseModel]] = [Config]
    for part in loc:
        if isinstance(part, int):
            continue
        nested: list[type] = []
        for model in models:
            field = model.model_fields.get(part) if isinstance(model, type) else None
            if field is not None:
                nested += [t for t in _unwrap(field.annotation) if isinstance(t, type)]
        models = [m for m in nested if issubclass(m, BaseModel)]
    return [name for m in models for name in m.model_fields]


def _message(err: Any) -> str:
    msg = str(err["msg"]).removeprefix("Value error, ")
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        key = str(loc[-1]) if loc else ""
        return "unknown key" + did_you_mean(key, _fields_at(loc[:-1]))
    if err["type"] == "missing":
        return "required key is missing"
    if "input" in err and err["type"] not in ("value_error",):
        return f"{msg} (was {err['input']!r})"
    return msg


def quote_of(instrument: str) -> str:
    """`BTC-USDT-PERP` -> `USDT`."""
    return instrument.split("-")[1]


def parse_config(doc: Any) -> Config:
    """Validate a decoded YAML document; raises ConfigError listing every problem."""
    if not isinstance(doc, dict):
        raise ConfigError([f"(top level): expected a mapping, was {type(doc).__name__}"])
    problems: list[str] = []
    cfg: Config | None = None
    try:
        cfg = Config.model_validate(doc)
    except ValidationError as exc:
        problems = [f"{_path(err['loc'])}: {_message(err)}" for err in exc.errors()]
    problems += _cross_check(doc)
    if problems or cfg is None:
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
