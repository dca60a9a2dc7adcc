"""The control endpoint (its own thread, `control`): positions from the trading system.

REQ/REP on `ipc://<run_dir>/control`, JSON both ways:
    {"op": "set_position", "instrument": "BTC-USDT", "qty": 1.5}  ->  {"ok": true, "worker": 0}
(plus `"warning"` when |qty| is beyond the instrument's quote.max_position: accepted, and
the skew stays at its cap).
The position goes to the worker that owns the instrument, which re-prices it at once.

Every request gets an answer: a malformed one (not JSON, nested too deep, a number too
large for a float, a list where a name belongs, several frames) gets
`{"ok": false, "error": "..."}`, and an error the code did not expect is logged with its
traceback, counted, and answered the same way. The thread goes on serving either way.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import reprlib
from dataclasses import dataclass
from typing import Any

import zmq

from mmengine.bus import ServiceThread, stable_shard
from mmengine.logs import RepeatLimiter
from mmengine.pricing.worker import control_endpoint

log = logging.getLogger("mmengine.control")

MAX_REQUEST_BYTES = 64 * 1024  # a position update is under 200 bytes
POLL_MS = 100

_brief = reprlib.Repr()  # echoes what was received without echoing megabytes or recursing
_brief.maxlevel = 2
_brief.maxstring = 40
_brief.maxother = 40
_brief.maxlong = 40


def describe(value: Any) -> str:
    """A short, safe rendering of a received value for an error message (<= 80 chars)."""
    text = _brief.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(slots=True)
class ControlStats:
    """Counters of the control thread (plain ints read by the status thread)."""

    requests: int = 0
    accepted: int = 0
    refused: int = 0  # answered ok: false (malformed or not allowed)
    errors: int = 0  # unexpected exceptions caught (answered ok: false, logged)


class ControlServer(ServiceThread):
    """Answers control requests; owns the REP socket and one PUSH per pricing worker."""

    def __init__(
        self,
        ctx: zmq.Context[Any],
        endpoint: str,
        instruments: set[str],
        workers: int,
        max_positions: dict[str, float] | None = None,
    ) -> None:
        super().__init__("control")
        self.ctx = ctx
        self.endpoint = endpoint
        self.instruments = instruments
        self.max_positions = max_positions or {}  # quote.max_position per instrument
        self.workers = workers
        self.stats = ControlStats()
        self._error_log = RepeatLimiter()

    def run(self) -> None:
        rep = self.ctx.socket(zmq.REP)
        rep.setsockopt(zmq.LINGER, 0)
        pushes = []
        try:
            rep.bind(self.endpoint)
            if self.endpoint.startswith("ipc://"):
                os.chmod(self.endpoint.removeprefix("ipc://"), 0o600)
            for k in range(self.workers):
                push = self.ctx.socket(zmq.PUSH)
                push.setsockopt(zmq.LINGER, 0)
                push.connect(control_endpoint(k))
                pushes.append(push)
        except (zmq.ZMQError, OSError) as exc:
            self._not_bound(exc, (rep, *pushes))
            return
        self.ready.set()
        try:
            while not self._stop_event.is_set():
                if not rep.poll(POLL_MS):
                    continue
                frames = rep.recv_multipart()
                self.stats.requests += 1
                reply = self.answer(frames, pushes)
                if reply.get("ok"):
                    self.stats.accepted += 1
                else:
                    self.stats.refused += 1
                rep.send(json.dumps(reply).encode())
        finally:
            for sock in (rep, *pushes):
                sock.close()

    def answer(self, frames: list[bytes], pushes: list[zmq.Socket[Any]]) -> dict[str, Any]:
        """The reply to one request, whatever it holds; never raises."""
        try:
            if len(frames) != 1:
                return {"ok": False, "error": f"expected one frame, got {len(frames)}"}
            return self.handle(frames[0], pushes)
        except Exception as exc:
            self.stats.errors += 1
            if self._error_log.allow("handle") is not None:
                log.exception("control: unexpected error answering a request")
            return {"ok": False, "error": f"internal error ({type(exc).__name__})"}

    def handle(self, raw: bytes, pushes: list[zmq.Socket[Any]]) -> dict[str, Any]:
        """Validate one request; a bad one gets an error reply."""
        if len(raw) > MAX_REQUEST_BYTES:
            return {"ok": False, "error": f"request is {len(raw)} bytes; at most 65536"}
        try:
            req = json.loads(raw)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            return {"ok": False, "error": "request is not JSON (or is nested too deep)"}
        if not isinstance(req, dict):
            return {"ok": False, "error": f"expected a JSON object, got {type(req).__name__}"}
        op = req.get("op")
        if op != "set_position":
            return {"ok": False, "error": f"unknown op {describe(op)}; expected 'set_position'"}
        name = req.get("instrument")
        if not isinstance(name, str) or name not in self.instruments:
            return {"ok": False, "error": f"{describe(name)} is not priced by this engine"}
        qty = req.get("qty")
        if isinstance(qty, bool) or not isinstance(qty, int | float):
            return {"ok": False, "error": f"qty must be a finite number, was {describe(qty)}"}
        try:
            value = float(qty)
        except OverflowError:
            return {"ok": False, "error": "qty is too large for a float"}
        if not math.isfinite(value):
            return {"ok": False, "error": f"qty must be a finite number, was {describe(qty)}"}
        k = stable_shard(name, self.workers)
        try:
            # Never wait on a worker: one that is not draining its queue gets a refusal.
            pushes[k].send(pickle.dumps((name, value)), zmq.NOBLOCK)
        except zmq.Again:
            return {"ok": False, "error": f"pricing worker {k} is not taking updates"}
        log.info("position %s = %s (worker %d)", name, value, k)
        reply: dict[str, Any] = {"ok": True, "worker": k}
        cap = self.max_positions.get(name)
        if cap is not None and abs(value) > cap:
            # Accepted: the position is a fact. The skew is clamped at max_position.
            reply["warning"] = (
                f"|{value:g}| is beyond {name}'s quote.max_position {cap:g}: the skew is "
                f"capped at quote.skew_bps_at_max, as for a position of "
                f"{math.copysign(cap, value):g}"
            )
        return reply
