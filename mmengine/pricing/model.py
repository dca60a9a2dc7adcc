"""The pricing model: pure functions and per-instrument state, run on a pricing worker thread.

For one priced instrument, from the latest BookTop of each venue book that feeds it:

1. convert each venue's levels into the instrument's quote currency (`fx_rate`);
2. exclude venues, with a reason: `not_live`, `stale`, `crossed`, `no_fx`, `outlier`;
3. consolidate the rest into one book (levels at equal prices are summed);
4. fair value by `mid`, `weighted_mid` or `microprice`;
5. volatility: a time-weighted EWMA of squared log returns of fair value;
6. a quote ladder: half-spread from the spread floor and volatility, inventory skew, prices
   rounded away from fair to the tick, sizes to the lot, levels crossing fair dropped;
7. halt (no quotes) on too few venues, a jump in fair value, every usable source older than
   `max_age_ms` (`halt_reason` "stale"), or any number that is not finite.

The engine runs `evaluate` here, a faster rendering of `mmengine.pricing.reference.evaluate`
(the model as first written, kept as the reference) that gives the same Decision bit for bit.

No Decision ever carries a non-finite number or a ladder level priced at or below zero:
absurd inputs (sizes near the float limit, a zero or infinite rate) halt the instrument
with a reason instead of raising or publishing NaN.

Every number in the result can be traced to its inputs: venues used with their mid, weight
and FX rate, venues excluded with the reason, and the spread and skew that shaped the ladder.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

from mmengine.model import BookTop, VenueExcluded, VenueUsed

LN2 = math.log(2.0)
INF = math.inf
STALE = "stale"  # halt_reason when every source that could be used is older than max_age_ms


@dataclass(frozen=True)
class SourceSpec:
    """One venue book that feeds a priced instrument."""

    venue: str
    instrument: str
    weight: float | None = None  # weighted_mid: fixed weight; None = top-of-book size
    fx: str | None = None  # FX instrument converting its quote currency; None = same quote
    fx_invert: bool = False  # the FX instrument is quoted the other way round


@dataclass(frozen=True)
class FxSpec:
    """How a currency pair's rate is known: fixed, or priced by the engine."""

    pair: str  # e.g. USDT-USD: the price of one USDT in USD
    fixed: float | None = None
    instrument: str | None = None  # a priced instrument whose fair value is the rate
    max_age_ms: float = 10_000.0


@dataclass(frozen=True)
class QuoteParams:
    """Shape of the two-sided quote ladder."""

    levels: int = 3
    min_spread_bps: float = 2.0  # full spread floor; half on each side
    vol_mult: float = 1.0  # half-spread >= vol_mult * volatility_bps
    level_step_bps: float = 1.0  # level i sits i * step further from fair
    size: float = 1.0  # size of the first level, base units
    size_step: float = 0.0  # level i adds i * size_step
    skew_bps_at_max: float = 0.0  # skew at |position| == max_position
    max_position: float = 1.0
    skew_sizes: bool = False  # also lean sizes: long -> smaller bids, larger asks


@dataclass(frozen=True)
class InstrumentSpec:
    """A priced instrument: its sources and every parameter of its model."""

    name: str
    sources: tuple[SourceSpec, ...]
    max_age_ms: float = 5000.0
    method: str = "mid"  # mid | weighted_mid | microprice
    micro_levels: int = 1  # microprice: levels per side summed for the size imbalance
    outlier_bps: float = 100.0  # only applied with >= 3 usable venues
    min_venues: int = 2
    max_jump_bps: float = 500.0
    vol_half_life_s: float = 30.0
    vol_horizon_s: float = 1.0  # volatility_bps is the st. dev. over this horizon
    tick: float = 0.01
    lot: float = 0.0001
    quote: QuoteParams = field(default_factory=QuoteParams)
    publish: bool = True  # False: priced only as an FX rate for another instrument


@dataclass(slots=True)
class Decision:
    """The model's answer for one instrument at one moment (becomes a Price)."""

    fair_value: float
    best_bid: float
    best_bid_size: float
    best_ask: float
    best_ask_size: float
    cross_venue_crossed: bool
    volatility_bps: float
    half_spread_bps: float
    skew_bps: float
    position: float
    halted: bool
    halt_reason: str
    bids: list[tuple[float, float]]
    asks: list[tuple[float, float]]
    used: list[VenueUsed]
    excluded: list[VenueExcluded]


@dataclass(slots=True)
class InstrumentState:
    """What the model remembers between prices of one instrument (owned by one worker)."""

    position: float = 0.0
    last_fair: float = 0.0
    last_ts_ns: int = 0
    var_rate: float = 0.0  # EWMA of squared log returns per second
    # What `evaluate` derived from the spec it last priced with (kept here, in the state the
    # worker thread owns, rather than in a cache shared by threads); not part of the state.
    plan: _Plan | None = field(default=None, compare=False, repr=False)


# --- steps --------------------------------------------------------------------------------


def microprice(bid: float, bid_size: float, ask: float, ask_size: float) -> float:
    """Size-imbalance-weighted price: leans towards the side with less size behind it."""
    total = bid_size + ask_size
    if total <= 0.0:
        return (bid + ask) / 2
    return (bid * ask_size + ask * bid_size) / total


def update_volatility(state: InstrumentState, fair: float, ts_ns: int, half_life_s: float) -> None:
    """Time-weighted EWMA of the variance rate (squared log return per second).

    With decay d = 2^(-dt/h), var <- d*var + (1-d) * r^2/dt. For small dt, (1-d)/dt tends to
    ln2/h, so bursts of closely spaced updates neither blow up nor vanish.
    """
    if state.last_ts_ns == 0 or state.last_fair <= 0.0:
        return
    dt = (ts_ns - state.last_ts_ns) / 1e9
    if dt <= 0.0:
        return
    r = math.log(fair / state.last_fair)
    decay = math.exp(-LN2 * dt / half_life_s)
    state.var_rate = decay * state.var_rate + (1.0 - decay) * (r * r) / dt


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


@cache
def _decimals(step: float) -> int:
    text = f"{step:.12f}".rstrip("0")
    return len(text.split(".")[1]) if "." in text else 0


def round_down(value: float, step: float) -> float:
    """Largest multiple of `step` <= value (with a tolerance for binary representation)."""
    return round(math.floor(value / step + 1e-9) * step, _decimals(step))


def round_up(value: float, step: float) -> float:
    """Smallest multiple of `step` >= value."""
    return round(math.ceil(value / step - 1e-9) * step, _decimals(step))


def skew_bps(position: float, q: QuoteParams) -> float:
    """Long -> negative skew (quotes move down, to sell); clamped at max_position."""
    ratio = max(-1.0, min(1.0, position / q.max_position)) if q.max_position > 0 else 0.0
    return -q.skew_bps_at_max * ratio


def raw_ladder(
    fair: float, half_spread_bps: float, skew: float, q: QuoteParams, tick: float
) -> list[tuple[float, float]]:
    """(bid, ask) of each ladder level before any level is dropped: both shifted by `skew`
    bps, level i `level_step_bps * i` further out, bids rounded down and asks up to the tick."""
    center = fair * (1.0 + skew / 1e4)
    out = []
    for i in range(q.levels):
        offset = (half_spread_bps + q.level_step_bps * i) / 1e4
        bid = center * (1.0 - offset)
        ask = center * (1.0 + offset)
        # A level beyond the float range stays non-finite (quote_ladder drops it); rounding
        # it would raise (math.floor of inf or nan).
        out.append(
            (
                round_down(bid, tick) if math.isfinite(bid / tick) else bid,
                round_up(ask, tick) if math.isfinite(ask / tick) else ask,
            )
        )
    return out


def quote_ladder(
    fair: float,
    half_spread_bps: float,
    skew: float,
    position: float,
    q: QuoteParams,
    tick: float,
    lot: float,
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Bids (descending) and asks (ascending) around `fair`, each level strictly beyond fair.

    Sizes round down to the lot; a level that would reach fair, repeat a price, have no
    size, or be priced at or below zero or beyond the float range is dropped (a wide ladder,
    `levels: 50, level_step_bps: 250`, or a large volatility would otherwise bid <= 0).
    """
    lean = max(-1.0, min(1.0, position / q.max_position)) if q.skew_sizes and q.max_position else 0
    bids: list[tuple[float, float]] = []
    asks: list[tuple[float, float]] = []
    for i, (bid, ask) in enumerate(raw_ladder(fair, half_spread_bps, skew, q, tick)):
        size = q.size + q.size_step * i
        bid_size = round_down(size * (1.0 - lean), lot)
        ask_size = round_down(size * (1.0 + lean), lot)
        if 0.0 < bid < fair and bid_size > 0.0 and (not bids or bid < bids[-1][0]):
            bids.append((bid, bid_size))
        if fair < ask < INF and ask_size > 0.0 and (not asks or ask > asks[-1][0]):
            asks.append((ask, ask_size))
    return bids, asks


# --- the whole model ----------------------------------------------------------------------


Ladder = Callable[
    [float, float, float, float, QuoteParams, float, float],
    tuple[list[tuple[float, float]], list[tuple[float, float]]],
]


@dataclass(slots=True)
class _Plan:
    """What `evaluate` derives from an InstrumentSpec once, instead of on every Price."""

    spec: InstrumentSpec  # the spec it was derived from (compared by identity)
    sources: tuple[tuple[SourceSpec, tuple[str, str]], ...]  # with its key into `tops`
    max_age_ns: float
    levels: int  # venue levels per side into the consolidated book (micro_levels, >= 1)
    ladder: Ladder  # quote_ladder, or the same ladder for sizes that never lean


def _plan(spec: InstrumentSpec, state: InstrumentState) -> _Plan:
    plan = state.plan
    if plan is not None and plan.spec is spec:
        return plan
    q = spec.quote
    ladder: Ladder = quote_ladder
    if not (q.skew_sizes and q.max_position):
        # quote_ladder's lean is then 0: size * (1.0 - 0) is size, bid and ask alike.
        sizes = tuple(round_down(q.size + q.size_step * i, spec.lot) for i in range(q.levels))
        ladder = _fixed_size_ladder(sizes, _decimals(spec.tick))
    plan = _Plan(
        spec=spec,
        sources=tuple((src, (src.venue, src.instrument)) for src in spec.sources),
        max_age_ns=spec.max_age_ms * 1e6,  # a float: int() of a configured inf would raise
        levels=max(spec.micro_levels, 1),
        ladder=ladder,
    )
    state.plan = plan
    return plan


def evaluate(
    spec: InstrumentSpec,
    tops: dict[tuple[str, str], BookTop],
    fx_rates: dict[str, tuple[float, int]],
    state: InstrumentState,
    now_ns: int,
    fx_max_age_ns: dict[str, float] | None = None,
) -> Decision | None:
    """Price `spec` from the latest `tops` keyed by (venue, instrument).

    `fx_rates` maps an FX instrument to (rate, time it was priced in ns). Returns None only
    when no source has ever sent a LIVE top (nothing to say yet).

    This is `mmengine.pricing.reference.evaluate` (the model step by step) with less Python
    per Price: what depends only on the spec is worked out once (`_plan`), each venue's mid
    is computed once, the ladder's rounding is inlined. Every float operation is the
    reference's, in the same order, so the Decision is the same bit for bit (checked on
    random inputs by tests/unit/test_pricing_fast.py).
    """
    plan = _plan(spec, state)
    max_age_ns = plan.max_age_ns
    used_tops: list[tuple[SourceSpec, BookTop, float, float]] = []  # + rate, mid
    excluded: list[VenueExcluded] = []
    seen_live = False
    for src, key in plan.sources:
        top = tops.get(key)
        if top is None:
            continue
        bid_prices = top.bid_prices
        ask_prices = top.ask_prices
        if top.state != "LIVE" or not bid_prices or not ask_prices:
            # A book its venue thread marked STALE (silent for stale_after_s) is stale input,
            # as one aged past max_age_ms is: the halt says so, and repeats while it lasts.
            reason = "stale" if top.state == "STALE" else "not_live"
            excluded.append(VenueExcluded(src.venue, src.instrument, reason))
            continue
        seen_live = True
        if now_ns - top.recv_ts_ns > max_age_ns:
            excluded.append(VenueExcluded(src.venue, src.instrument, "stale"))
            continue
        if bid_prices[0] >= ask_prices[0]:
            excluded.append(VenueExcluded(src.venue, src.instrument, "crossed"))
            continue
        rate = 1.0
        if src.fx is not None:
            known = fx_rates.get(src.fx)
            limit = (fx_max_age_ns or {}).get(src.fx, max_age_ns)
            if known is None or not 0.0 < known[0] < INF or now_ns - known[1] > limit:
                excluded.append(VenueExcluded(src.venue, src.instrument, "no_fx"))
                continue
            rate = 1.0 / known[0] if src.fx_invert else known[0]
        used_tops.append((src, top, rate, (bid_prices[0] + ask_prices[0]) / 2 * rate))
    if not seen_live and not excluded:
        return None

    # Outliers (needs >= 3 venues): a venue mid far from the median of all venue mids (the
    # reference says why the median includes the venue itself).
    if len(used_tops) >= 3:
        center = median([entry[3] for entry in used_tops])
        limit_bps = spec.outlier_bps
        kept = []
        for entry in used_tops:
            if abs(entry[3] / center - 1.0) * 1e4 > limit_bps:
                excluded.append(VenueExcluded(entry[0].venue, entry[0].instrument, "outlier"))
            else:
                kept.append(entry)
        used_tops = kept

    if not used_tops:
        stale = any(x.reason == "stale" for x in excluded)
        return halted_decision(spec, state, excluded, STALE if stale else "no usable venue")

    # Consolidated book: levels converted to the quote currency, equal prices summed.
    n = plan.levels
    bid_levels: dict[float, float] = {}
    ask_levels: dict[float, float] = {}
    used: list[VenueUsed] = []
    raw_weights: list[float] = []
    get_bid = bid_levels.get
    get_ask = ask_levels.get
    for src, top, rate, mid in used_tops:
        bid_sizes = top.bid_sizes
        ask_sizes = top.ask_sizes
        if n == 1:
            p = top.bid_prices[0] * rate
            bid_levels[p] = get_bid(p, 0.0) + bid_sizes[0]
            p = top.ask_prices[0] * rate
            ask_levels[p] = get_ask(p, 0.0) + ask_sizes[0]
        else:
            for p, s in zip(top.bid_prices[:n], bid_sizes[:n], strict=False):
                p *= rate
                bid_levels[p] = get_bid(p, 0.0) + s
            for p, s in zip(top.ask_prices[:n], ask_sizes[:n], strict=False):
                p *= rate
                ask_levels[p] = get_ask(p, 0.0) + s
        weight = src.weight if src.weight is not None else bid_sizes[0] + ask_sizes[0]
        raw_weights.append(weight)
        used.append(
            VenueUsed(src.venue, src.instrument, mid, weight, rate, top.venue_seq, top.recv_ts_ns)
        )
    total_weight = sum(raw_weights) or 1.0
    for venue_used in used:
        venue_used.weight /= total_weight

    return decide(spec, state, now_ns, n, bid_levels, ask_levels, used, excluded, plan.ladder)


def decide(
    spec: InstrumentSpec,
    state: InstrumentState,
    now_ns: int,
    n: int,
    bid_levels: dict[float, float],
    ask_levels: dict[float, float],
    used: list[VenueUsed],
    excluded: list[VenueExcluded],
    ladder: Ladder,
) -> Decision:
    """The model's steps 4 to 7 from the consolidated book (`n` levels a side from each
    venue) and the venues used: fair value, volatility, halts, the ladder (`quote_ladder`,
    or a faster one giving the same levels), and the Decision."""
    best_bid = max(bid_levels)
    best_ask = min(ask_levels)
    crossed = best_bid >= best_ask
    method = spec.method
    if method == "weighted_mid":
        fair = sum(u.mid * u.weight for u in used)
    elif method == "microprice":
        bids_n = sorted(bid_levels, reverse=True)[:n]
        asks_n = sorted(ask_levels)[:n]
        fair = microprice(
            best_bid,
            sum(bid_levels[p] for p in bids_n),
            best_ask,
            sum(ask_levels[p] for p in asks_n),
        )
    else:
        fair = (best_bid + best_ask) / 2

    if not math.isfinite(fair) or fair <= 0.0:
        # Sizes near the float limit make the microprice inf/inf; never let it into the
        # state (volatility, the jump check) or a Price.
        return halted_decision(spec, state, excluded, f"non-finite fair value ({fair!r})")
    update_volatility(state, fair, now_ns, spec.vol_half_life_s)
    if not math.isfinite(state.var_rate):
        state.var_rate = 0.0
    jump_bps = abs(fair / state.last_fair - 1.0) * 1e4 if state.last_fair > 0 else 0.0
    state.last_fair = fair
    state.last_ts_ns = now_ns
    volatility_bps = math.sqrt(state.var_rate * spec.vol_horizon_s) * 1e4

    q = spec.quote
    half_spread = max(q.min_spread_bps / 2, q.vol_mult * volatility_bps)
    skew = skew_bps(state.position, q)
    halt_reason = ""
    if len(used) < spec.min_venues:
        halt_reason = f"{len(used)} usable venue(s), fewer than min_venues {spec.min_venues}"
    elif jump_bps > spec.max_jump_bps:
        halt_reason = f"fair value moved {jump_bps:.1f} bps in one step (max {spec.max_jump_bps})"
    bids: list[tuple[float, float]] = []
    asks: list[tuple[float, float]] = []
    if not halt_reason:
        bids, asks = ladder(fair, half_spread, skew, state.position, q, spec.tick, spec.lot)
    decision = Decision(
        fair_value=fair,
        best_bid=best_bid,
        best_bid_size=bid_levels[best_bid],
        best_ask=best_ask,
        best_ask_size=ask_levels[best_ask],
        cross_venue_crossed=crossed,
        volatility_bps=volatility_bps,
        half_spread_bps=half_spread,
        skew_bps=skew,
        position=state.position,
        halted=bool(halt_reason),
        halt_reason=halt_reason,
        bids=bids,
        asks=asks,
        used=used,
        excluded=excluded,
    )
    bad = non_finite_field(decision)
    if bad is not None:
        return halted_decision(spec, state, excluded, f"non-finite {bad}")
    return decision


def _fixed_size_ladder(sizes: tuple[float, ...], decimals: int) -> Ladder:
    """`quote_ladder` for sizes that do not lean with the position (`sizes`, one per level,
    already rounded to the lot), with `raw_ladder`'s rounding inlined (`decimals`: the
    tick's): the same operations, the same levels."""
    floor = math.floor
    ceil = math.ceil
    isfinite = math.isfinite

    def ladder(
        fair: float,
        half_spread_bps: float,
        skew: float,
        _position: float,
        q: QuoteParams,
        tick: float,
        _lot: float,
    ) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        bids: list[tuple[float, float]] = []
        asks: list[tuple[float, float]] = []
        center = fair * (1.0 + skew / 1e4)
        step_bps = q.level_step_bps
        for i, size in enumerate(sizes):
            offset = (half_spread_bps + step_bps * i) / 1e4
            bid = center * (1.0 - offset)
            ask = center * (1.0 + offset)
            if isfinite(bid / tick):
                bid = round(floor(bid / tick + 1e-9) * tick, decimals)
            if isfinite(ask / tick):
                ask = round(ceil(ask / tick - 1e-9) * tick, decimals)
            if size > 0.0:
                if 0.0 < bid < fair and (not bids or bid < bids[-1][0]):
                    bids.append((bid, size))
                if fair < ask < INF and (not asks or ask > asks[-1][0]):
                    asks.append((ask, size))
        return bids, asks

    return ladder


def non_finite_field(d: Decision) -> str | None:
    """The first number of `d` that is not finite (its field name), or None.

    One sum decides the common case (about 1 us): NaN and inf propagate through it. A sum
    that overflows from finite parts halts as well, which only absurd inputs can cause.
    """
    total = (
        d.fair_value
        + d.best_bid
        + d.best_bid_size
        + d.best_ask
        + d.best_ask_size
        + d.volatility_bps
        + d.half_spread_bps
        + d.skew_bps
        + d.position
        + sum(map(sum, d.bids))
        + sum(map(sum, d.asks))
    )
    for u in d.used:
        total += u.mid + u.weight + u.fx_rate
    if math.isfinite(total):
        return None
    names = (
        "fair_value",
        "best_bid",
        "best_bid_size",
        "best_ask",
        "best_ask_size",
        "volatility_bps",
        "half_spread_bps",
        "skew_bps",
        "position",
    )
    for name in names:
        if not math.isfinite(getattr(d, name)):
            return name
    if not all(math.isfinite(x) for level in d.bids + d.asks for x in level):
        return "ladder level"
    if not all(math.isfinite(u.mid + u.weight + u.fx_rate) for u in d.used):
        return "venue mid, weight or rate"
    return "sum of prices and sizes (overflow)"


def halted_decision(
    spec: InstrumentSpec, state: InstrumentState, excluded: list[VenueExcluded], reason: str
) -> Decision:
    """A Price that says "do not quote": no fair value could be formed.

    Only finite numbers from the state go into it (the state never holds a non-finite fair
    value; a non-finite position or volatility is reported as 0)."""
    volatility = math.sqrt(state.var_rate * spec.vol_horizon_s) * 1e4
    position = state.position if math.isfinite(state.position) else 0.0
    return Decision(
        fair_value=state.last_fair,
        best_bid=0.0,
        best_bid_size=0.0,
        best_ask=0.0,
        best_ask_size=0.0,
        cross_venue_crossed=False,
        volatility_bps=volatility if math.isfinite(volatility) else 0.0,
        half_spread_bps=0.0,
        skew_bps=skew_bps(position, spec.quote),
        position=position,
        halted=True,
        halt_reason=reason,
        bids=[],
        asks=[],
        used=[],
        excluded=excluded,
    )
