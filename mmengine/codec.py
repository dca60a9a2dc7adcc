"""Avro single-object encoding of the engine's messages (called from any thread).

A payload is `C3 01`, the schema's 8-byte little-endian CRC-64-AVRO fingerprint of its
parsing canonical form, then the Avro binary body, so any reader can tell which schema
wrote it. fastavro encodes on the hot path; the tests decode with the official `avro`
package, which is the reference.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from mmengine.model import BookTop, Price

SCHEMA_DIR = Path(__file__).parent / "schemas"
MAGIC = b"\xc3\x01"


class Codec:
    """Encoder/decoder for one schema file. Not thread-safe: one per thread."""

    def __init__(self, schema_file: str) -> None:
        self.path = SCHEMA_DIR / schema_file
        self.schema_json = json.loads(self.path.read_text())
        self.parsed = fastavro.parse_schema(self.schema_json)
        self.fingerprint = bytes.fromhex(
            fingerprint(to_parsing_canonical_form(self.parsed), "CRC-64-AVRO")
        )
        self.header = MAGIC + self.fingerprint
        self._buf = io.BytesIO()

    def encode(self, record: dict[str, Any]) -> bytes:
        buf = self._buf
        buf.seek(0)
        buf.truncate()
        buf.write(self.header)
        fastavro.schemaless_writer(buf, self.parsed, record)
        return buf.getvalue()

    def decode(self, payload: bytes) -> dict[str, Any]:
        if payload[:2] != MAGIC:
            raise ValueError("not an Avro single-object payload (no C3 01 marker)")
        if payload[2:10] != self.fingerprint:
            raise ValueError(
                f"payload written with schema {payload[2:10].hex()}, "
                f"this reader knows {self.fingerprint.hex()} ({self.path.name})"
            )
        result: dict[str, Any] = fastavro.schemaless_reader(
            io.BytesIO(payload[10:]), self.parsed, None
        )
        return result


def price_record(price: Price) -> dict[str, Any]:
    """The Avro record of a Price (field for field; `asdict` would deep-copy)."""
    return {
        "instrument": price.instrument,
        "epoch": price.epoch,
        "seq": price.seq,
        "fair_value": price.fair_value,
        "best_bid": price.best_bid,
        "best_bid_size": price.best_bid_size,
        "best_ask": price.best_ask,
        "best_ask_size": price.best_ask_size,
        "venues": price.venues,
        "exchange_ts_ns": price.exchange_ts_ns,
        "recv_ts_ns": price.recv_ts_ns,
        "priced_ts_ns": price.priced_ts_ns,
        "method": price.method,
        "volatility_bps": price.volatility_bps,
        "half_spread_bps": price.half_spread_bps,
        "position": price.position,
        "skew_bps": price.skew_bps,
        "halted": price.halted,
        "halt_reason": price.halt_reason,
        "cross_venue_crossed": price.cross_venue_crossed,
        "bids": [{"price": p, "size": q} for p, q in price.bids],
        "asks": [{"price": p, "size": q} for p, q in price.asks],
        "venues_used": [
            {
                "venue": u.venue,
                "instrument": u.instrument,
                "mid": u.mid,
                "weight": u.weight,
                "fx_rate": u.fx_rate,
            }
            for u in price.venues_used
        ],
        "venues_excluded": [
            {"venue": x.venue, "instrument": x.instrument, "reason": x.reason}
            for x in price.venues_excluded
        ],
    }


def book_top_record(top: BookTop) -> dict[str, Any]:
    return top._asdict()
