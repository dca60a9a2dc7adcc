"""A `Session` for driving one venue connection's books in a test, without sockets."""

from __future__ import annotations

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
        self.rest = rest or {}
        self.hold = hold
        self.requested: list[tuple[Any, str]] = []
        self._answers: list[tuple[Any, str | None, str]] = []

    def send(self, text: str) -> None:
        self.sent.append(text)

    def publish(self, top: BookTop) -> None:
        self.tops.append(top)

    def reconnect(self, reason: str) -> None:
        self.reconnects.append(reason)

    def fetch(self, key: Any, url: str) -> None:
        self.requested.append((key, url))
        if not self.hold:
            self.answer(key, url)

    def answer(self, key: Any, url: str) -> None:
        """Answer a fetch from `rest` (an error when there is no body for `url`)."""
        path = url.split("://", 1)[-1].split("/", 1)[-1]
        body = next((b for u, b in self.rest.items() if path.startswith(u.lstrip("/"))), None)
        self._answers.append((key, body, "" if body is not None else f"no answer for {url}"))

    def fetched(self) -> list[tuple[Any, str | None, str]]:
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
