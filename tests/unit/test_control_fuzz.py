"""The control endpoint, fuzzed on its real REP socket: every request gets an answer, and
the thread keeps serving (issue 16: one `set-position` with a list instrument killed it)."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmengine.pricing.control import ControlServer
from mmengine.pricing.worker import control_endpoint

INSTRUMENTS = {"BTC-USDT", "ETH-USDT"}
WORKERS = 2


class Client:
    """The control server on an ipc endpoint, the workers' control PULLs, and a REQ."""

    def __init__(self, run_dir: Path) -> None:
        self.ctx = zmq.Context()
        self.pulls = []
        for k in range(WORKERS):
            pull = self.ctx.socket(zmq.PULL)
            pull.bind(control_endpoint(k))
            self.pulls.append(pull)
        self.server = ControlServer(
            self.ctx, f"ipc://{run_dir / 'control'}", set(INSTRUMENTS), WORKERS
        )
        self.server.start()
        assert self.server.ready.wait(5) and self.server.error is None
        self.req = self.ctx.socket(zmq.REQ)
        self.req.setsockopt(zmq.LINGER, 0)
        self.req.connect(self.server.endpoint)

    def ask(self, *frames: bytes) -> dict[str, Any]:
        self.req.send_multipart(list(frames))
        assert self.req.poll(3000), f"no answer to {frames[0][:80]!r}"
        reply = json.loads(self.req.recv())
        assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), reply
        if reply["ok"]:
            assert set(reply) == {"ok", "worker"} and reply["worker"] in range(WORKERS)
        else:
            assert set(reply) == {"ok", "error"} and isinstance(reply["error"], str)
            assert reply["error"] and len(reply["error"]) < 300
        return reply

    def positions(self) -> list[tuple[str, float]]:
        out = []
        for pull in self.pulls:
            while pull.poll(0):
                out.append(pickle.loads(pull.recv()))
        return out

    def close(self) -> None:
        self.server.stop()
        self.server.join(5)
        self.req.close()
        for pull in self.pulls:
            pull.close(0)
        self.ctx.term()


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    c = Client(tmp_path)
    yield c
    c.close()


def request(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def valid(reply: dict[str, Any]) -> bool:
    return reply["ok"] is True


def test_the_reported_requests_get_an_error_and_the_thread_keeps_serving(client: Client) -> None:
    digits = "1" + "0" * 400
    bad = [
        request(op="set_position", instrument=["BTC-USDT"], qty=1),  # the user's repro
        request(op="set_position", instrument={"a": 1}, qty=1),
        f'{{"op": "set_position", "instrument": "BTC-USDT", "qty": {digits}}}'.encode(),
        f'{{"op": "set_position", "instrument": "BTC-USDT", "qty": 1{"0" * 5000}}}'.encode(),
        b"[" * 100_000 + b"]" * 100_000,  # RecursionError in json
        b'{"op": "set_position", "instrument": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        request(op="set_position", instrument="BTC-USDT", qty="1"),
        request(op="set_position", instrument="BTC-USDT", qty=True),
        b'{"op": "set_position", "instrument": "BTC-USDT", "qty": NaN}',
        b'{"op": "set_position", "instrument": "BTC-USDT", "qty": -Infinity}',
        request(op=["set_position"], instrument="BTC-USDT", qty=1),
        request(op="set_position", qty=1),
        b"\xff\xfe\x00garbage",
        b"",
        b"x" * 200_000,
        b"null",
        b"[1, 2]",
    ]
    for raw in bad:
        assert not valid(client.ask(raw)), raw[:80]
    assert not valid(client.ask(b"{}", b"second frame"))
    assert valid(client.ask(request(op="set_position", instrument="BTC-USDT", qty=1.5)))
    assert client.positions() == [("BTC-USDT", 1.5)]
    assert client.server.is_alive()
    stats = client.server.stats
    assert stats.refused == len(bad) + 1 and stats.accepted == 1 and stats.errors == 0


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**320)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
near_valid = st.fixed_dictionaries(
    {},
    optional={
        "op": st.one_of(st.just("set_position"), json_values),
        "instrument": st.one_of(st.sampled_from(sorted(INSTRUMENTS)), json_values),
        "qty": json_values,
        "extra": json_values,
    },
)


def test_fuzzed_requests_always_get_an_answer(client: Client) -> None:
    @settings(
        max_examples=400,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        payload=st.one_of(
            near_valid.map(lambda d: json.dumps(d).encode()),
            json_values.map(lambda v: json.dumps(v).encode()),
            st.binary(max_size=200),
            st.text(max_size=100).map(str.encode),
        )
    )
    def one(payload: bytes) -> None:
        reply = client.ask(payload)
        if reply["ok"]:
            req = json.loads(payload)
            assert req["op"] == "set_position" and req["instrument"] in INSTRUMENTS
            assert isinstance(req["qty"], int | float) and not isinstance(req["qty"], bool)

    one()
    assert client.server.is_alive() and client.server.stats.errors == 0
    client.positions()
    assert valid(client.ask(request(op="set_position", instrument="ETH-USDT", qty=-2)))
    assert client.positions() == [("ETH-USDT", -2.0)]
