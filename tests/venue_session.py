"""A `Session` for driving one venue connection's books in a test, without sockets."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mmengine.book.sync import BookDriver
from mmengine.model import BookTop
from mmengine.venues.base import VenueSpec
from mmengine.venues.registry import open_venue


class RecordingSession:
    """Keeps everything the driver sends, publishes and asks for. REST answers come from
    `rest` (url -> body) on the next `fetched`, or stay pending until `answer` is called
    (`hold=True`: a slow fetch)."""

    def __init__(self, rest: dict[str, str] | None = None, hold: bool = False) -> None:
        self.sent: list[str] = []
        self.tops: list[BookTop] = []
        self.reconnects: list[str] = []
        self.rest = rest if rest is not None else {}
        self.hold = hold
        self.requested: list[tuple[Any, str]] = []
        self._answers: list[tuple[Any, str | None, str, int]] = []

    def send(self, text: str) -> None:
        self.sent.append(text)

    def publish(self, top: BookTop) -> None:
        self.tops.append(top)

    def reconnect(self, reason: str) -> None:
        self.reconnects.append(reason)

    def fetch(self, key: Any, url: str) -> None:
        if self.hold:
            self.requested.append((key, url))
        else:
            self.answer(key, url)

    def answer(self, key: Any, url: str, at_ns: int = 0) -> None:
        """Answer a fetch from `rest`: the body of the first key found in `url` (an error
        when there is none), received at `at_ns`."""
        body = next((b for part, b in self.rest.items() if part in url), None)
        error = "" if body is not None else f"no answer for {url}"
        self._answers.append((key, body, error, at_ns))

    def answer_all(self, at_ns: int = 0) -> None:
        """Answer every fetch asked for so far (a held, slow REST comes back at `at_ns`)."""
        for key, url in self.requested:
            self.answer(key, url, at_ns)
        self.requested.clear()

    def fetched(self) -> list[tuple[Any, str | None, str, int]]:
        answers, self._answers = self._answers, []
        return answers


def venue(
    protocol: str,
    instruments: tuple[str, ...],
    session: RecordingSession | None = None,
    connect: bool = True,
    **spec: Any,
) -> tuple[BookDriver, RecordingSession]:
    """The books of one venue connection of `protocol`, connected (all SYNCING)."""
    session = session or RecordingSession()
    driver = open_venue(VenueSpec(protocol, protocol, instruments, **spec), session)
    if connect:
        driver.on_connected()
    return driver, session


class Tops:
    """A transport's TopPublisher that keeps every BookTop with its arrival time."""

    waiting = 0  # it keeps everything: nothing ever waits

    def __init__(self) -> None:
        self.got: list[tuple[float, BookTop]] = []

    def send(self, top: BookTop) -> None:
        self.got.append((time.monotonic(), top))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def wait_for(cond: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll `cond` until true; AssertionError after `seconds`."""
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)
