"""The Grafana dashboard and the Prometheus alert rules in deploy/ ask only for what a running
engine serves (issue 18).

A real engine (`mmengine run`) runs against a Binance simulator with both sinks (a real tansu
broker, a real PostgreSQL) and `engine.metrics_port`; a malformed frame and a gap are
injected so that the counters labelled by kind and reason have series. Every PromQL
expression of the dashboard and of the rules is parsed with `promql-parser` (the Rust
implementation of Prometheus' grammar); every metric it names must be served by that
engine's /metrics, with every label it matches, groups by or prints in an alert. A panel
whose description starts with PENDING would chart a metric a later change adds: it is parsed
but left out of the served-metric check, and may name no other metric (none is pending now).
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import promql_parser as promql
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mmengine.dev.simulator import start_simulator
from tests.conftest import free_port
from tests.integration.kafka_support import Broker, broker  # noqa: F401 (fixture)
from tests.integration.pg_support import PgServer, pg, pg_factory, pg_root  # noqa: F401
from tests.integration.test_operations import INSTRUMENTS, config

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# Labels Prometheus itself attaches to every series of a scrape target.
TARGET_LABELS = {"instance", "job"}
# Series Prometheus records about each scrape, not served by the engine.
PROMETHEUS_SERIES = {"up": set[str]()}
PENDING_METRICS: set[str] = set()  # metrics a panel marked PENDING may name
# Grafana's template variables, as Grafana substitutes them before the query is sent.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*"}


def scrape(port: int) -> dict[str, set[str]]:
    """Every sample name /metrics serves, with the label names it carries."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    served: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            served.setdefault(sample.name, set()).update(sample.labels)
    return served


def engine_config(sim: Any, bootstrap: str, dsn: str, metrics_port: int) -> dict[str, Any]:
    """The metrics test's engine (one audited Binance venue) with both sinks."""
    cfg = config(sim, metrics_port)
    cfg["outputs"] = {
        "kafka": {"bootstrap_servers": bootstrap, "topic": "mmengine.prices", "linger_ms": 10},
        "postgres": {"dsn": dsn, "batch_max_wait_ms": 20},
    }
    cfg["limits"] = {"reconnect_max_s": 0.5}
    return cfg


# --- what the deploy files ask for ---------------------------------------------------------


def dashboard_queries() -> list[tuple[str, str, bool]]:
    """(panel title, PromQL as Grafana sends it, pending) of every dashboard query."""
    doc = json.loads((DEPLOY / "grafana" / "mmengine.json").read_text())
    panels = list(doc["panels"])
    for panel in doc["panels"]:
        panels += panel.get("panels", [])  # a collapsed row holds its panels
    out = []
    for panel in panels:
        pending = panel.get("description", "").startswith("PENDING")
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"{panel['title']}: unknown variable in {expr}"
            out.append((panel["title"], expr, pending))
    for variable in doc["templating"]["list"]:
        if variable["type"] == "query":  # label_values(METRIC, LABEL): Grafana's own syntax
            match = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"])
            assert match, variable["definition"]
            out.append((f"variable {variable['name']}", f"{match[1]}{{{match[2]}!=''}}", False))
    return out


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert set(doc) == {"groups"} and doc["groups"], doc.keys()
    rules = []
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"], group
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"Mmengine[A-Z][A-Za-z]+", rule["alert"]), rule["alert"]
            if "for" in rule:
                promql.parse_duration(rule["for"])  # raises on a malformed duration
            assert rule["labels"]["severity"] in ("warning", "critical"), rule
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            rules.append(rule)
    assert len({r["alert"] for r in rules}) == len(rules), "an alert name twice"
    return rules


def selectors(expr: Any) -> list[Any]:
    found: list[Any] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql.VectorSelector):
            found.append(node)

    promql.walk(expr, pre_visit=visit)
    return found


def series_labels(name: str, served: dict[str, set[str]]) -> set[str]:
    return (served | PROMETHEUS_SERIES)[name] | TARGET_LABELS


def output_labels(node: Any, served: dict[str, set[str]]) -> set[str]:
    """The label names an expression's result series can carry."""
    if isinstance(node, promql.VectorSelector):
        return series_labels(node.name, served)
    if isinstance(node, promql.MatrixSelector):
        return output_labels(node.vector_selector, served)
    if isinstance(node, promql.ParenExpr | promql.UnaryExpr):
        return output_labels(node.expr, served)
    if isinstance(node, promql.Call):
        labels: set[str] = set()
        for arg in node.args:
            if not isinstance(arg, promql.NumberLiteral | promql.StringLiteral):
                labels |= output_labels(arg, served)
        return labels - {"le"} if node.func.name == "histogram_quantile" else labels
    if isinstance(node, promql.AggregateExpr):
        inner = output_labels(node.expr, served)
        modifier = node.modifier
        if modifier is None:
            return set()
        if modifier.type == promql.AggModifierType.By:
            return set(modifier.labels)
        return inner - set(modifier.labels)
    if isinstance(node, promql.BinaryExpr):
        lhs = output_labels(node.lhs, served)
        rhs = output_labels(node.rhs, served)
        if isinstance(node.lhs, promql.NumberLiteral):
            return rhs
        return lhs | rhs if str(node.op) == "or" else lhs
    return set()


def check_expression(where: str, text: str, served: dict[str, set[str]]) -> Any:
    """Parse; every metric served; every label matched or grouped by exists on its input."""
    try:
        expr = promql.parse(text)
    except ValueError as exc:
        raise AssertionError(f"{where}: {text!r} does not parse: {exc}") from None
    for sel in selectors(expr):
        assert sel.name in served or sel.name in PROMETHEUS_SERIES, (
            f"{where}: {sel.name} is not served by the engine's /metrics"
        )
        for matcher in sel.matchers.matchers:
            assert matcher.name in series_labels(sel.name, served), (
                f"{where}: {sel.name} has no label {matcher.name!r}"
            )

    def grouped(node: Any) -> None:
        if isinstance(node, promql.AggregateExpr) and node.modifier is not None:
            inner = output_labels(node.expr, served) | {"le"}
            missing = set(node.modifier.labels) - inner
            assert not missing, f"{where}: grouped by {missing}, which its input lacks"

    promql.walk(expr, pre_visit=grouped)
    return expr


# --- the test --------------------------------------------------------------------------------


def test_every_metric_the_dashboard_and_alerts_use_is_served(
    broker: Broker,  # noqa: F811
    pg: PgServer,  # noqa: F811
    engine_factory: Any,
) -> None:
    port = free_port()
    with start_simulator("binance", instruments=INSTRUMENTS, rate=200, seed=18) as sim:
        engine = engine_factory(engine_config(sim, broker.bootstrap, pg.dsn, port))
        try:
            # A malformed frame and a gap: series for skipped frames by kind, resyncs by reason.
            served: dict[str, set[str]] = {}
            injected = False
            deadline = time.monotonic() + 30
            wanted = {
                "mmengine_sink_acknowledged_total",
                "mmengine_sink_written_total",
                "mmengine_venue_skipped_frames_total",
                "mmengine_venue_resyncs_total",
                "mmengine_instrument_halted",
            }
            while not wanted <= set(served):
                assert time.monotonic() < deadline, sorted(wanted - set(served))
                time.sleep(0.2)
                served = scrape(port)
                if not injected and "mmengine_instrument_halted" in served:
                    sim.inject("malformed")
                    sim.inject("gap")
                    injected = True
        finally:
            assert engine.stop() == 0, engine.output[-3000:]

    queries = dashboard_queries()
    assert len(queries) >= 20
    for title, text, pending in queries:
        if pending:
            expr = promql.parse(text)
            assert {s.name for s in selectors(expr)} <= PENDING_METRICS, title
            continue
        check_expression(f"dashboard panel {title!r}", text, served)
    # What the dashboard promises to show: each of these is charted somewhere.
    charted = " ".join(text for _, text, _ in queries)
    for metric in (
        "mmengine_venue_connected",
        "mmengine_book_state",
        "mmengine_venue_frames_total",
        "mmengine_venue_resyncs_total",
        "mmengine_venue_skipped_frames_total",
        "mmengine_pricing_prices_total",
        "mmengine_pricing_halted_prices_total",
        "mmengine_instrument_halted",
        "mmengine_pricing_latency_seconds_bucket",
        "mmengine_stage_latency_seconds_bucket",
        "mmengine_sink_delivery_lag_seconds",
        "mmengine_sink_lag_seconds",
        "mmengine_sink_spool_bytes",
        "mmengine_sink_dropped_total",
        "mmengine_thread_deaths_total",
        "mmengine_thread_restarts_total",
    ):
        assert metric in charted, metric

    rules = alert_rules()
    for rule in rules:
        where = f"alert {rule['alert']}"
        expr = check_expression(where, rule["expr"], served)
        printed = set()
        for text in rule["annotations"].values():
            printed |= set(re.findall(r"\$labels\.(\w+)", text))
        missing = printed - output_labels(expr, served)
        assert not missing, f"{where}: prints {missing}, which its series do not carry"
    alerting_on = " ".join(rule["expr"] for rule in rules)
    for metric in (
        "mmengine_venue_connected",
        'mmengine_book_state{state="LIVE"}',
        "mmengine_instrument_halted",
        "mmengine_sink_spool_bytes",
        "mmengine_sink_delivery_lag_seconds",
        "mmengine_sink_lag_seconds",
        "mmengine_thread_restarts_total",
    ):
        assert metric in alerting_on, metric


def test_a_broken_expression_or_an_unknown_metric_is_caught() -> None:
    """The checks above can fail: a typo in a metric, a label or a parenthesis is seen."""
    served = {"mmengine_venue_connected": {"venue"}, "mmengine_book_state": {"venue", "state"}}
    check_expression("ok", 'sum by (venue) (mmengine_book_state{state="LIVE"}) == 0', served)
    for bad, why in (
        ("mmengine_venue_conected == 0", "is not served"),
        ('mmengine_venue_connected{vneue="x"} == 0', "has no label"),
        ("sum by (instrument) (mmengine_venue_connected)", "grouped by"),
        ("sum by (venue (mmengine_venue_connected)", "does not parse"),
    ):
        with pytest.raises(AssertionError, match=why):
            check_expression("bad", bad, served)
    expr = promql.parse("sum by (instance) (mmengine_book_state) == 0")
    assert "venue" not in output_labels(expr, served)
