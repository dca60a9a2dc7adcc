"""The pricing model as first written: the reference the fast `mmengine.pricing.model.evaluate`
is checked against (no thread of its own; tests call it).

`evaluate` here is the model's steps 1 to 3 as first written (sources, exclusions, outliers,
the consolidated book), then the steps both share (`decide`: fair value, volatility, halts,
with the plain `quote_ladder`). The engine runs `mmengine.pricing.model.evaluate`, which
computes the same Decision (bit for bit: the same float operations in the same order) with
less Python per Price. `tests/unit/test_pricing_fast.py` requires equal Decisions on random
inputs.
"""

from __future__ import annotations

from mmengine.model import BookTop, VenueExcluded, VenueUsed
from mmengine.pricing.model import (
    INF,
    STALE,
    Decision,
    InstrumentSpec,
    InstrumentState,
    SourceSpec,
    decide,
    halted_decision,
    median,
    quote_ladder,
)


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
    """
    max_age_ns = spec.max_age_ms * 1e6  # a float: int() of a configured inf would raise
    used_tops: list[tuple[SourceSpec, BookTop, float]] = []
    excluded: list[VenueExcluded] = []
    seen_live = False
    for src in spec.sources:
        top = tops.get((src.venue, src.instrument))
        if top is None:
            continue
        if top.state != "LIVE" or not top.bid_prices or not top.ask_prices:
            # A book its venue thread marked STALE (silent for stale_after_s) is stale input,
            # as one aged past max_age_ms is: the halt says so, and repeats while it lasts.
            reason = "stale" if top.state == "STALE" else "not_live"
            excluded.append(VenueExcluded(src.venue, src.instrument, reason))
            continue
        seen_live = True
        if now_ns - top.recv_ts_ns > max_age_ns:
            excluded.append(VenueExcluded(src.venue, src.instrument, "stale"))
            continue
        if top.bid_prices[0] >= top.ask_prices[0]:
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
        used_tops.append((src, top, rate))
    if not seen_live and not excluded:
        return None

    # Outliers (needs >= 3 venues): a venue mid far from the median of all venue mids. The
    # median includes the venue itself: with three venues the median of the two *others*
    # is their mean, so one bad venue would drag it and make the good ones look like
    # outliers; the median of all three is robust to one bad venue.
    if len(used_tops) >= 3:
        mids = [(t.bid_prices[0] + t.ask_prices[0]) / 2 * r for _, t, r in used_tops]
        center = median(mids)
        kept = []
        for entry, mid in zip(used_tops, mids, strict=True):
            if abs(mid / center - 1.0) * 1e4 > spec.outlier_bps:
                excluded.append(VenueExcluded(entry[0].venue, entry[0].instrument, "outlier"))
            else:
                kept.append(entry)
        used_tops = kept

    if not used_tops:
        # Every source that could be used has aged out: say so in the one word a consumer
        # can match on.
        stale = any(x.reason == "stale" for x in excluded)
        return halted_decision(spec, state, excluded, STALE if stale else "no usable venue")

    # Consolidated book: levels converted to the quote currency, equal prices summed.
    n = max(spec.micro_levels, 1)
    bid_levels: dict[float, float] = {}
    ask_levels: dict[float, float] = {}
    used: list[VenueUsed] = []
    raw_weights: list[float] = []
    for src, top, rate in used_tops:
        for p, s in zip(top.bid_prices[:n], top.bid_sizes[:n], strict=False):
            bid_levels[p * rate] = bid_levels.get(p * rate, 0.0) + s
        for p, s in zip(top.ask_prices[:n], top.ask_sizes[:n], strict=False):
            ask_levels[p * rate] = ask_levels.get(p * rate, 0.0) + s
        mid = (top.bid_prices[0] + top.ask_prices[0]) / 2 * rate
        weight = src.weight if src.weight is not None else top.bid_sizes[0] + top.ask_sizes[0]
        raw_weights.append(weight)
        used.append(
            VenueUsed(src.venue, src.instrument, mid, weight, rate, top.venue_seq, top.recv_ts_ns)
        )
    total_weight = sum(raw_weights) or 1.0
    for venue_used in used:
        venue_used.weight /= total_weight

    return decide(spec, state, now_ns, n, bid_levels, ask_levels, used, excluded, quote_ladder)
