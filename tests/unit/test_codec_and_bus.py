"""Avro single-object payloads (decoded with the official `avro` package) and sharding."""

from __future__ import annotations

import dataclasses
import io
import pickle
import subprocess
import sys
from pathlib import Path

import avro.io
import avro.schema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmengine.bus import decode_envelope, decode_tops, encode_top, pack_frames, stable_shard
from mmengine.codec import (
    Codec,
    book_top_record,
    encode_price,
    price_record,
    price_values,
    record_from_values,
)
from mmengine.model import BookTop, Price, VenueExcluded, VenueUsed
from mmengine.pricing.worker import SINK_KEY
from mmengine.sinks.postgres import COPY_SIGNATURE, COPY_TRAILER, RowBuilder


def official_decode(schema_file: str, payload: bytes) -> dict:
    codec = Codec(schema_file)
    schema = avro.schema.parse(codec.path.read_text())
    assert payload[:2] == b"\xc3\x01"
    # The header's fingerprint must be the official package's, for the full schema.
    assert payload[2:10] == schema.fingerprint("CRC-64-AVRO")
    reader = avro.io.DatumReader(schema)
    return reader.read(avro.io.BinaryDecoder(io.BytesIO(payload[10:])))


def test_price_round_trips_through_the_official_decoder() -> None:
    price = Price(
        "BTC-USDT",
        1_700_000_000_000_000_000,
        7,
        65000.5,
        65000.0,
        1.25,
        65001.0,
        0.5,
        ["binance", "kraken"],
        11,
        22,
        33,
    )
    payload = Codec("price.avsc").encode(price_record(price))
    assert official_decode("price.avsc", payload) == price_record(price)


def test_book_top_round_trips_through_the_official_decoder() -> None:
    top = BookTop(
        "binance", "ETH-USDT", "LIVE", 99, -1, 5, 6, [3000.0, 2999.5], [1.0, 2.0], [3000.5], [0.25]
    )
    payload = Codec("book_top.avsc").encode(book_top_record(top))
    assert official_decode("book_top.avsc", payload) == top._asdict()


def test_decoder_refuses_a_payload_of_another_schema() -> None:
    payload = Codec("book_top.avsc").encode(
        book_top_record(BookTop("v", "A-B", "SYNCING", -1, -1, 0, 0, [], [], [], []))
    )
    with pytest.raises(ValueError, match="written with schema"):
        Codec("price.avsc").decode(payload)


def test_every_schema_field_has_a_doc() -> None:
    for name in ("price.avsc", "book_top.avsc"):
        schema = Codec(name).schema_json
        assert schema["namespace"] == "mmengine" and schema["doc"]
        assert all(field.get("doc") for field in schema["fields"]), name


def test_book_top_inproc_round_trip() -> None:
    top = BookTop("binance", "BTC-USDT", "LIVE", 1, -1, 2, 3, [1.0], [2.0], [3.0], [4.0])
    assert decode_tops(encode_top(top)) == [top]
    assert decode_envelope(encode_top(top, applied_ns=7)) == [(top, 7)]
    assert isinstance(pickle.loads(encode_top(top)), tuple)


def test_stable_shard_is_the_same_in_another_process() -> None:
    names = ["BTC-USDT", "ETH-USDT", "SOL-USDT", "BTC-USD", "DOGE-USDT-PERP"]
    here = [stable_shard(n, 4) for n in names]
    code = f"from mmengine.bus import stable_shard;print([stable_shard(n, 4) for n in {names!r}])"
    # A fresh interpreter has a different str hash salt; the shard must not change.
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONHASHSEED": "12345"},
        check=True,
    )
    assert out.stdout.strip() == str(here)
    # Pinned (CRC-32 of the name): changing the hash would reshuffle every shard.
    assert here == [3, 1, 3, 0, 0]
    assert all(0 <= stable_shard(n, 3) < 3 for n in names)


def test_a_reader_holding_the_first_price_schema_still_decodes_new_payloads(
    data_dir: Path,
) -> None:
    """Schema evolution: every field added since v1 has a default, so Avro resolution
    lets an old reader (which looks the writer schema up by the header's fingerprint)
    read what the engine writes today."""
    old = avro.schema.parse((data_dir / "price_v1.avsc").read_text())
    new = avro.schema.parse(Codec("price.avsc").path.read_text())
    assert old.fingerprint() != new.fingerprint()
    price = Price(
        "BTC-USDT",
        5,
        9,
        100.5,
        100.0,
        2.0,
        101.0,
        3.0,
        ["a", "b"],
        1,
        2,
        3,
        method="microprice",
        volatility_bps=1.5,
        halted=False,
        bids=[(100.4, 1.0)],
        asks=[(100.6, 1.0)],
        venues_used=[VenueUsed("a", "BTC-USDT", 100.5, 1.0, 1.0)],
        venues_excluded=[VenueExcluded("c", "BTC-USDT", "stale")],
    )
    payload = Codec("price.avsc").encode(price_record(price))
    assert payload[2:10] == new.fingerprint()
    reader = avro.io.DatumReader(writers_schema=new, readers_schema=old)
    got = reader.read(avro.io.BinaryDecoder(io.BytesIO(payload[10:])))
    assert got == {
        k: v for k, v in price_record(price).items() if k in {f.name for f in old.fields}
    }
    assert {f.name for f in new.fields} - {f.name for f in old.fields} == {
        "method",
        "volatility_bps",
        "half_spread_bps",
        "position",
        "skew_bps",
        "halted",
        "halt_reason",
        "cross_venue_crossed",
        "bids",
        "asks",
        "venues_used",
        "venues_excluded",
    }
    assert all(f.has_default for f in new.fields if f.name not in {g.name for g in old.fields})


def test_a_reader_holding_the_schema_before_venue_seq_still_decodes_new_payloads(
    data_dir: Path,
) -> None:
    """`venue_seq` and `recv_ts_ns` were added to VenueUsed with defaults: a reader that
    still holds the schema before them (tests/data/price_v2.avsc) decodes today's payloads,
    and a payload that reader's writer made decodes today with the defaults."""
    old = avro.schema.parse((data_dir / "price_v2.avsc").read_text())
    new = avro.schema.parse(Codec("price.avsc").path.read_text())
    assert old.fingerprint() != new.fingerprint()
    used = VenueUsed("okx", "BTC-USDT", 100.5, 0.25, 1.0, 987_654_321, 1_700_000_000_123_456_789)
    price = Price(
        "BTC-USD",
        5,
        9,
        100.5,
        100.0,
        2.0,
        101.0,
        3.0,
        ["okx"],
        1,
        2,
        3,
        venues_used=[used],
        venues_excluded=[VenueExcluded("kraken", "BTC-USD", "stale")],
    )
    payload = encode_price(Codec("price.avsc").header, price)
    reader = avro.io.DatumReader(writers_schema=new, readers_schema=old)
    got = reader.read(avro.io.BinaryDecoder(io.BytesIO(payload[10:])))
    want = price_record(price)
    for entry in want["venues_used"]:
        del entry["venue_seq"], entry["recv_ts_ns"]
    assert got == want
    # ... and the other way: an old payload read with today's schema gets the defaults.
    buf = io.BytesIO()
    avro.io.DatumWriter(old).write(want, avro.io.BinaryEncoder(buf))
    back = avro.io.DatumReader(writers_schema=old, readers_schema=new).read(
        avro.io.BinaryDecoder(io.BytesIO(buf.getvalue()))
    )
    assert back["venues_used"] == [{**want["venues_used"][0], "venue_seq": -1, "recv_ts_ns": 0}]


finite = st.floats(allow_nan=False, allow_infinity=False)
text = st.text(max_size=12)
longs = st.integers(min_value=-(2**63), max_value=2**63 - 1)
prices_st = st.builds(
    Price,
    instrument=text,
    epoch=longs,
    seq=longs,
    fair_value=finite,
    best_bid=finite,
    best_bid_size=finite,
    best_ask=finite,
    best_ask_size=finite,
    venues=st.lists(text, max_size=5),
    exchange_ts_ns=longs,
    recv_ts_ns=longs,
    priced_ts_ns=longs,
    method=text,
    volatility_bps=finite,
    half_spread_bps=finite,
    position=finite,
    skew_bps=finite,
    halted=st.booleans(),
    halt_reason=text,
    cross_venue_crossed=st.booleans(),
    bids=st.lists(st.tuples(finite, finite), max_size=6),
    asks=st.lists(st.tuples(finite, finite), max_size=6),
    venues_used=st.lists(
        st.builds(VenueUsed, text, text, finite, finite, finite, longs, longs), max_size=5
    ),
    venues_excluded=st.lists(st.builds(VenueExcluded, text, text, text), max_size=5),
)


@settings(max_examples=300)
@given(price=prices_st)
def test_hot_path_price_encoder_is_byte_identical_to_fastavro(price: Price) -> None:
    codec = Codec("price.avsc")
    assert encode_price(codec.header, price) == codec.encode(price_record(price))


def _expected_record(price: Price) -> dict:
    """What a Price must decode to, written from the model's own fields (dataclasses.asdict),
    not from `price_record`, so a field the codec maps wrongly or forgets is seen."""
    expected = dataclasses.asdict(price)
    for side in ("bids", "asks"):
        expected[side] = [{"price": p, "size": s} for p, s in expected[side]]
    return expected


@settings(max_examples=200)
@given(price=prices_st)
def test_what_the_official_decoder_reads_is_the_price_the_engine_had(price: Price) -> None:
    decoded = official_decode("price.avsc", encode_price(Codec("price.avsc").header, price))
    assert decoded == _expected_record(price)


def test_every_price_field_is_in_the_schema_and_nothing_else() -> None:
    schema_fields = [f["name"] for f in Codec("price.avsc").schema_json["fields"]]
    assert schema_fields == [f.name for f in dataclasses.fields(Price)]


PRICE_CODEC = Codec("price.avsc")
PG_ROWS = RowBuilder()  # builds rows, never connects


@settings(max_examples=100, deadline=None)
@given(price=prices_st.filter(lambda p: p.instrument))
def test_price_values_give_what_decoding_the_payload_gives(price: Price) -> None:
    """The Postgres writer builds rows from the values pricing hands it instead of
    decoding the Avro payload: both must give the same COPY row, byte for byte (the
    direct path and a replay of the spooled record then store the same row and key)."""
    codec = PRICE_CODEC
    payload = encode_price(codec.header, price)
    values = pickle.dumps(price_values(price), pickle.HIGHEST_PROTOCOL)
    assert record_from_values(pickle.loads(values)) == codec.decode(payload)
    record = pack_frames(
        [price.instrument.encode(), SINK_KEY.pack(price.epoch, price.seq, 5), payload]
    )
    builder = PG_ROWS
    from_values = builder.from_values(record, values)
    decoded = builder.from_record(record)
    assert from_values is not None
    assert from_values == decoded
    # Values that do not belong to the record (or do not unpickle) are not used: the
    # batch decodes the payload instead.
    other = pickle.dumps((*price_values(price)[:2], price.seq + 1, *price_values(price)[3:]))
    assert builder.from_values(record, other) is None
    assert builder.from_values(record, b"garbage") is None
    before = builder.decoded
    batch = builder.prepare([record, record], [other, from_values])
    assert builder.decoded == before + 1 and batch.rows == 2 and not batch.bad
    assert batch.data == COPY_SIGNATURE + decoded[4] * 2 + COPY_TRAILER


def test_a_sink_message_is_one_frame_its_record_and_then_its_values() -> None:
    """Pricing hands a writer one frame per Price: the spool record itself, and for a writer
    that asked for them the Price's values after it, as a last part it can take off."""
    from mmengine.bus import sink_message, unpack_frames

    parts = (b"BTC-USDT", SINK_KEY.pack(3, 7, 123), b"\xc3\x01avro")
    record = sink_message(*parts)
    assert record == pack_frames(parts) and unpack_frames(record) == list(parts)
    with_values = sink_message(*parts, b"pickled values")
    assert unpack_frames(with_values) == [*parts, b"pickled values"]
    # What the Postgres writer keeps as the record: the message without its values part.
    assert with_values[: len(with_values) - 4 - len(b"pickled values")] == record
