"""`venues.yaml`: load, validate fully at start-up, and say exactly which key is wrong.

Structure and types are checked by pydantic models; references between sections (a priced
instrument's source must be a configured venue subscribing that instrument) are checked
after, with the same `key.path: message` form.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mmengine.errors import ConfigError
from mmengine.model import INSTRUMENT_RE
from mmengine.pricing.model import InstrumentSpec, SourceSpec
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

    @field_validator("instruments")
    @classmethod
    def _instruments(cls, values: list[str]) -> list[str]:
        for value in values:
            check_instrument(value)
        if len(set(values)) != len(values):
            raise ValueError("an instrument is listed twice")
        return values


class SourceConfig(Strict):
    venue: str
    instrument: str | None = Field(
        default=None, description="The venue's instrument; defaults to the priced name."
    )


class InstrumentConfig(Strict):
    name: str
    sources: Annotated[list[SourceConfig], Field(min_length=1)]
    max_age_ms: Annotated[float, Field(gt=0)] = 5000.0

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_instrument(value)


class IpcOutput(Strict):
    books: bool = Field(default=True, description="Also publish venue BookTops on IPC.")


class OutputsConfig(Strict):
    ipc: IpcOutput = IpcOutput()


class LimitsConfig(Strict):
    stale_after_s: Annotated[float, Field(gt=0)] = 10.0
    reconnect_max_s: Annotated[float, Field(gt=0)] = 30.0


class Config(Strict):
    engine: EngineConfig = EngineConfig()
    venues: Annotated[list[VenueConfig], Field(min_length=1)]
    instruments: Annotated[list[InstrumentConfig], Field(min_length=1)]
    outputs: OutputsConfig = OutputsConfig()
    limits: LimitsConfig = LimitsConfig()

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

    def instrument_specs(self) -> list[InstrumentSpec]:
        return [
            InstrumentSpec(
                name=i.name,
                sources=tuple(SourceSpec(s.venue, s.instrument or i.name) for s in i.sources),
                max_age_ms=i.max_age_ms,
            )
            for i in self.instruments
        ]


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
    return problems


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
