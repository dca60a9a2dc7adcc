"""What Kraken's spot WebSocket v1 (`kraken_v1`) and v2 (`kraken_v2`) share (venue thread).

Integrity is Kraken's CRC32 book checksum (venue-protocols.md 3.4), the shared `KrakenCrc32`
(one function for v1 and v2): there are no sequence numbers. After applying a whole message
and truncating each side to the subscribed depth (Kraken sends no deletes for levels leaving
the window), the CRC32 of the top 10 asks then the top 10 bids, each level written as
`price + qty` with the `.` removed and leading zeros stripped, must equal the message's
checksum.

A mismatch drops that pair's book and resubscribes that pair alone (unsubscribe, then
subscribe for a new snapshot); the other pairs on the connection stay LIVE. A book update
that cannot be used resyncs its pair too: no sequence number would reveal the loss.
"""

from __future__ import annotations

from typing import ClassVar

from mmengine.book.integrity import KrakenCrc32
from mmengine.venues.base import UNPUBLISHED_LIMIT, TypedBookFrames, VenueSpec

DEPTHS = (10, 25, 100, 500, 1000)  # book depths both versions offer (3.1)
KEEPALIVE_S = 30.0  # the server closes a connection after ~1 min without requests (3.5)
SILENCE_S = 15.0  # heartbeats arrive about once a second, even on busy connections (3.5)
# Kraken publishes no fixed subscribe-request rate: it is dynamic, and the server answers
# "Exceeded msg rate" (docs.kraken.com/api/docs/guides/spot-ratelimits).
SUBSCRIBE_LIMIT = UNPUBLISHED_LIMIT


def spot_pair(instrument: str) -> tuple[str, str]:
    """`BTC-USD` -> ("BTC", "USD"); Kraken takes spot pairs only."""
    parts = instrument.split("-")
    if len(parts) != 2:
        raise ValueError(f"kraken: {instrument!r} is not a spot BASE-QUOTE pair")
    return parts[0], parts[1]


class KrakenBook(TypedBookFrames):
    """What both Kraken versions share: spot pairs, depths, keepalive, the checksum."""

    capture_exchange = "KRAKEN"
    keep_wire = True
    keepalive_interval_s = KEEPALIVE_S
    silence_timeout_s = SILENCE_S
    depths = DEPTHS
    subscribe_limit = SUBSCRIBE_LIMIT
    checksum = KrakenCrc32
    ping: ClassVar[str]  # the version's ping request, `{}` standing for its request id

    def __init__(self, spec: VenueSpec) -> None:
        super().__init__(spec)
        self._req_id = 0  # the last request id sent on this connection (pings, requests)

    def keepalive_frame(self) -> str:
        # a request every KEEPALIVE_S keeps the server from closing the connection (3.5)
        self._req_id += 1
        return self.ping.format(self._req_id)
