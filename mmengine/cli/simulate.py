"""The `mmengine simulate` command (main thread of the CLI process).

A module of its own so that the other commands start without importing the simulator
package (`LazyGroup` in `mmengine.cli` imports it when `simulate` is used); the `--fault`
choices are the simulator's own `FAULT_KINDS`, so a new fault kind is offered at once.
"""

from __future__ import annotations

from typing import Any

import click

from mmengine.dev.simulator import FAULT_KINDS, start_simulator
from mmengine.signals import StopFlag


@click.command()
@click.option("--venue", required=True, help="Venue protocol to simulate, e.g. binance.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=0, help="Port (0 picks a free one).")
@click.option("--instruments", default=None, help="Comma-separated, e.g. BTC-USDT,ETH-USDT.")
@click.option("--rate", type=float, default=50.0, show_default=True, help="Book messages/s.")
@click.option("--replay", type=click.Path(exists=True), default=None, help="Replay a capture.")
@click.option(
    "--fault",
    "faults",
    multiple=True,
    type=click.Choice(FAULT_KINDS),
    help="Inject this fault at random times (repeatable).",
)
@click.option("--fault-interval", type=float, default=5.0, show_default=True, help="Seconds.")
@click.option("--seed", type=int, default=None, help="Seed for a reproducible market.")
@click.option(
    "--shift-bps", type=float, default=0.0, help="Show every market this far from the others."
)
@click.option(
    "--market-seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the fair prices all simulators follow (the same in every process).",
)
def simulate(
    venue: str,
    host: str,
    port: int,
    instruments: str | None,
    rate: float,
    replay: str | None,
    faults: tuple[str, ...],
    fault_interval: float,
    seed: int | None,
    shift_bps: float,
    market_seed: int,
) -> None:
    """Run a local venue simulator that speaks the venue's exact protocol.

    It serves synthetic books (or replays a capture) over WebSocket, plus the venue's REST
    snapshot where it has one, and injects the named faults. The books follow a fair price
    per instrument that every simulator with the same --market-seed shares, even in other
    processes, each venue with its own basis, noise, latency and spread.
    """
    if replay is not None:
        _check_capture_fits(venue, replay)
    stop = StopFlag().install()
    try:
        handle = start_simulator(
            venue,
            host=host,
            port=port,
            instruments=instruments.split(",") if instruments else None,
            rate=rate,
            replay=replay,
            faults=list(faults),
            fault_interval_s=fault_interval,
            seed=seed,
            shift_bps=shift_bps,
            market_seed=market_seed,
        )
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    with handle:
        click.echo(f"{venue} simulator: ws {handle.ws_url}  rest {handle.rest_url}")
        while not stop.wait(1.0):
            pass
    click.echo(simulator_summary(venue, handle.stats))


def _check_capture_fits(venue: str, capture: str) -> None:
    """Refuse to replay a capture of another protocol (it would only confuse a client)."""
    from mmengine.capture import read_capture
    from mmengine.replay import UnsupportedCapture, capture_connections, detect_protocol

    try:
        header, events = read_capture(capture)
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"cannot read {capture}: {exc}") from None
    protocols = {c.protocol for c in capture_connections(header, events) if c.protocol}
    try:
        protocols = protocols or {detect_protocol(header, events)}
    except UnsupportedCapture as exc:
        raise click.ClickException(f"{capture}: {exc}") from None
    served = venue.removesuffix("-deep")  # coinbase-advanced-deep serves coinbase-advanced
    if served not in protocols:
        raise click.ClickException(
            f"{capture} is a {' and '.join(sorted(protocols))} capture; the {venue} simulator "
            f"cannot replay it (use --venue {sorted(protocols)[0]})"
        )


def simulator_summary(venue: str, stats: dict[str, Any]) -> str:
    """What a simulator did, as one sentence."""
    faults = ", ".join(f"{n} {kind}" for kind, n in sorted(stats.get("faults", {}).items()))
    return (
        f"{venue} simulator stopped: {stats.get('connections', 0)} connections, "
        f"{stats.get('frames_sent', 0):,} frames sent, "
        f"{stats.get('updates_generated', 0):,} book updates generated, "
        f"{stats.get('snapshots_served', 0)} REST snapshots served, "
        f"{stats.get('slow_consumer_drops', 0)} slow clients dropped, "
        f"faults injected: {faults or 'none'}"
    )
