"""The control endpoint (its own thread, `control`): positions from the trading system.

REQ/REP on `ipc://<run_dir>/control`, JSON both ways:
    {"op": "set_position", "instrument": "BTC-USDT", "qty": 1.5}  ->  {"ok": true, "worker": 0}
(plus `"warning"` when |qty| is beyond the instrument's quote.max_position: accepted, and
the skew stays at its cap).
The position goes to the worker that owns the instrument, which re-prices it at once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import threading
from typing import Any

import zmq

from mmengine.bus import stable_shard
from mmengine.pricing.worker import control_endpoint

log = logging.getLogger("mmengine.control")


class ControlServer(threading.Thread):
    """Answers control requests; owns the REP socket and one PUSH per pricing worker."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        instruments: set[str],
        workers: int,
        max_positions: dict[str, float] | None = None,
    ) -> None:
        super().__init__(name="control", daemon=True)
        self.ctx = ctx
        self.endpoint = endpoint
        self.instruments = instruments
        self.max_positions = max_positions or {}  # quote.max_position per instrument
        self.workers = workers
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        rep = self.ctx.socket(zmq.REP)
        rep.setsockopt(zmq.LINGER, 0)
        pushes = []
        try:
            rep.bind(self.endpoint)
            os.chmod(self.endpoint.removeprefix("ipc://"), 0o600)
            for k in range(self.workers):
                push = self.ctx.socket(zmq.PUSH)
                push.setsockopt(zmq.LINGER, 0)
                push.connect(control_endpoint(k))
                pushes.append(push)
        except zmq.ZMQError as exc:
            self.error = exc
            self.ready.set()
            for sock in (rep, *pushes):
                sock.close()
            return
        self.ready.set()
        try:
            while not self._stop_event.is_set():
                if not rep.poll(100):
                    continue
                raw = rep.recv()
                reply = self.handle(raw, pushes)
                rep.send(json.dumps(reply).encode())
        finally:
            for sock in (rep, *pushes):
                sock.close()

    def handle(self, raw: bytes, pushes: list[zmq.Socket]) -> dict[str, Any]:
        """Validate one request; a bad one gets an error reply, never an exception."""
        try:
            req = json.loads(raw)
        except ValueError:
            return {"ok": False, "error": "request is not JSON"}
        if not isinstance(req, dict) or req.get("op") != "set_position":
            return {"ok": False, "error": "unknown op; expected 'set_position'"}
        name = req.get("instrument")
        qty = req.get("qty")
        if name not in self.instruments:
            return {"ok": False, "error": f"{name!r} is not priced by this engine"}
        if not isinstance(qty, int | float) or isinstance(qty, bool) or not math.isfinite(qty):
            return {"ok": False, "error": f"qty must be a finite number, was {qty!r}"}
        k = stable_shard(name, self.workers)
        pushes[k].send(pickle.dumps((name, float(qty))))
        log.info("position %s = %s (worker %d)", name, qty, k)
        reply: dict[str, Any] = {"ok": True, "worker": k}
        cap = self.max_positions.get(name)
        if cap is not None and abs(qty) > cap:
            # Accepted: the position is a fact. The skew is clamped at max_position.
            reply["warning"] = (
                f"|{qty:g}| is beyond {name}'s quote.max_position {cap:g}: the skew is capped "
                f"at quote.skew_bps_at_max, as for a position of {math.copysign(cap, qty):g}"
            )
        return reply
