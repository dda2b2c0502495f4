"""Prometheus metrics on `--metrics HOST:PORT` (`GET /metrics`, text format 0.0.4).

Nothing is counted twice: a collector reads the agent's own counters (the membership core,
its runtime, routing, and the SIP and DNS front-ends) at each scrape and presents them in
Prometheus form. The HTTP side is a small trio server on the agent's own loop, so a scrape
reads the counters between two events, never while they change (prometheus-client's own
server runs in a thread). Only GET /metrics (and /) is served; anything else is a 404 or 405,
requests are bounded in size and time, at most 16 connections at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import structlog
import trio
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from .sockets import serve_listener
from .status import AgentStatus

__all__ = ["Latency", "MetricsServer", "collect_status"]

log = structlog.get_logger("swimthor.metrics")

MAX_REQUEST = 8192
REQUEST_TIME = 5.0
MAX_CONNECTIONS = 16

_REJECTED = {
    "rejected_seal": "unsealed",
    "rejected_replay": "replay",
    "rejected_stale": "stale",
    "rejected_decode": "malformed",
    "rejected_incarnation": "implausible incarnation",
    "stream_rejected": "malformed stream",
}
_NAME = re.compile(r"[^a-zA-Z0-9_]")


# Bucket upper bounds (seconds) of the latency histograms: SIP work runs from tens of
# microseconds (a cached answer) to a replication round trip.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip


class Latency:
    """A latency histogram cheap enough for the request path: a linear scan of 14 bounds."""

    __slots__ = ("counts", "sum", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        i = 0
        for bound in LATENCY_BUCKETS:
            if seconds <= bound:
                break
            i += 1
        self.counts[i] += 1
        self.total += 1
        self.sum += seconds

    def snapshot(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": self.sum, "count": self.total}


def _histogram(name: str, doc: str, snap: Mapping[str, Any]) -> Metric:
    family = HistogramMetricFamily(name, doc)
    cumulative = 0
    buckets = []
    for bound, n in zip((*LATENCY_BUCKETS, float("inf")), snap["counts"], strict=True):
        cumulative += n
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    family.add_metric([], buckets, sum_value=snap["sum"])
    return family


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def collect_status(status: AgentStatus) -> Iterator[Metric]:
    """Metric families from an agent's `status()` (what `swimthor status --format json`
    shows), so the metrics and the status never disagree."""
    yield GaugeMetricFamily(
        "swimthor_health_score",
        "Lifeguard local health score (0: healthy)",
        value=float(status.get("health") or 0),
    )
    yield GaugeMetricFamily(
        "swimthor_incarnation", "this member's incarnation", value=status.get("incarnation") or 0
    )
    members = GaugeMetricFamily(
        "swimthor_members",
        "members this node knows, by state and datacenter",
        labels=["state", "dc"],
    )
    by_dc = status.get("by_dc") or {}
    for dc, counts in sorted(by_dc.items()):
        for state, n in sorted((counts or {}).items()):
            members.add_metric([str(state), str(dc)], float(n))
    yield members
    converged: Mapping[str, Any] = status.get("converged") or {}
    agree = GaugeMetricFamily(
        "swimthor_view_agreement", "members whose view digest matches ours, or not", labels=["view"]
    )
    for key in ("agree", "disagree", "unknown"):
        agree.add_metric([key], float(converged.get(key) or 0))
    yield agree
    routing = status.get("routing") or {}
    if "epoch" in routing:
        yield GaugeMetricFamily(
            "swimthor_routing_epoch", "routing epoch (moves on every membership change)",
            value=routing["epoch"],
        )  # fmt: skip

    stats = dict(cast(Mapping[str, float], status.get("stats") or {}))
    rejected = CounterMetricFamily(
        "swimthor_gossip_rejected",
        "gossip packets and frames refused, by reason",
        labels=["reason"],
    )
    for key, reason in _REJECTED.items():
        if key in stats:
            rejected.add_metric([reason], float(stats.pop(key)))
    yield rejected
    for key, value in sorted(stats.items()):
        yield _counter(f"swimthor_gossip_{_NAME.sub('_', key)}", f"membership core: {key}", value)
    for key, value in sorted((status.get("runtime") or {}).items()):
        yield _counter(f"swimthor_runtime_{_NAME.sub('_', key)}", f"gossip transport: {key}", value)

    sip = status.get("sip")
    if isinstance(sip, Mapping):
        yield GaugeMetricFamily(
            "swimthor_sip_bindings", "bindings held here", value=sip["bindings"]
        )
        yield GaugeMetricFamily(
            "swimthor_sip_subscribers", "subscribers held here", value=sip.get("subscribers", 0)
        )
        yield GaugeMetricFamily(
            "swimthor_sip_aors", "addresses-of-record held here", value=sip["aors"]
        )
        yield GaugeMetricFamily(
            "swimthor_sip_synced",
            "1 once this node's start-up sync found its digests equal to every other member's",
            value=1 if sip.get("sync", "synced") == "synced" else 0,
        )
        by_method = CounterMetricFamily(
            "swimthor_sip_requests", "SIP requests received, by method", labels=["method"]
        )
        for method, n in sorted((sip.get("requests_by_method") or {}).items()):
            by_method.add_metric([method], float(n))
        yield by_method
        by_code = CounterMetricFamily(
            "swimthor_sip_answers", "SIP responses this node made, by status code", labels=["code"]
        )
        for code, n in sorted((sip.get("answers_by_code") or {}).items()):
            by_code.add_metric([str(code)], float(n))
        yield by_code
        latency = sip.get("latency") or {}
        if "handling" in latency:
            yield _histogram(
                "swimthor_sip_handling_seconds",
                "time to handle one SIP datagram (parse, decide, send what can go at once)",
                latency["handling"],
            )
        if "register" in latency:
            yield _histogram(
                "swimthor_sip_register_seconds",
                "REGISTER received to 200 sent, replication to the other owners included",
                latency["register"],
            )
        for section in ("proxy", "transport", "replication"):
            for key, value in sorted((sip.get(section) or {}).items()):
                yield _counter(
                    f"swimthor_sip_{section}_{_NAME.sub('_', key)}", f"SIP {section}: {key}", value
                )
    dns = status.get("dns")
    if isinstance(dns, Mapping):
        answers = CounterMetricFamily(
            "swimthor_dns_answers", "DNS queries answered, by outcome", labels=["outcome"]
        )
        for key, value in sorted((dns.get("answers") or {}).items()):
            answers.add_metric([key], float(value))
        yield answers
        by_type = CounterMetricFamily(
            "swimthor_dns_queries", "DNS queries answered, by type", labels=["qtype"]
        )
        for qtype, n in sorted((dns.get("by_qtype") or {}).items()):
            by_type.add_metric([qtype], float(n))
        yield by_type
        by_rcode = CounterMetricFamily(
            "swimthor_dns_responses", "DNS answers sent, by response code", labels=["rcode"]
        )
        for rcode, n in sorted((dns.get("by_rcode") or {}).items()):
            by_rcode.add_metric([rcode], float(n))
        yield by_rcode
        for key, value in sorted((dns.get("transport") or {}).items()):
            yield _counter(f"swimthor_dns_transport_{_NAME.sub('_', key)}", f"DNS: {key}", value)


class _StatusCollector(Collector):
    def __init__(self, status: Callable[[], AgentStatus]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        yield from collect_status(self._status())


class MetricsServer:
    """GET /metrics over HTTP/1.x on a trio TCP listener."""

    def __init__(self, bind: tuple[str, int], status: Callable[[], AgentStatus]) -> None:
        self.bind = bind
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StatusCollector(status))
        self.bound: tuple[str, int] | None = None
        self._active = 0
        self.stats = {"scrapes": 0, "bad_requests": 0, "refused": 0}

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def serve(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(self.bind[1], host=self.bind[0])
        listener = listeners[0]
        for extra in listeners[1:]:
            await extra.aclose()
        name = listener.socket.getsockname()
        self.bound = (str(name[0]), int(name[1]))
        log.info("metrics started", metrics=f"{self.bound[0]}:{self.bound[1]}")
        task_status.started(self.bound)

        def admit(stream: trio.SocketStream) -> Callable[[], Any] | None:
            if self._active >= MAX_CONNECTIONS:
                self.stats["refused"] += 1
                return None
            self._active += 1

            async def serve_one() -> None:
                try:
                    await self._answer(stream)
                finally:
                    self._active -= 1
                    await trio.aclose_forcefully(stream)

            return serve_one

        async with listener:
            await serve_listener(listener, admit, what="metrics")

    async def _answer(self, stream: trio.SocketStream) -> None:
        head = b""
        with trio.move_on_after(REQUEST_TIME):
            while b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) < MAX_REQUEST:
                try:
                    chunk = await stream.receive_some(4096)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return
                if not chunk:
                    break
                head += chunk
        line = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0].decode("latin-1")
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self.stats["bad_requests"] += 1
            await self._send(stream, 400, b"bad request\n")
            return
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            await self._send(stream, 405, b"only GET\n", [("Allow", "GET, HEAD")])
            return
        if target not in ("/metrics", "/"):
            await self._send(stream, 404, b"try /metrics\n")
            return
        self.stats["scrapes"] += 1
        body = self.render()
        await self._send(
            stream,
            200,
            b"" if method == "HEAD" else body,
            [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")],
            length=len(body),
        )

    @staticmethod
    async def _send(
        stream: trio.SocketStream,
        status: int,
        body: bytes,
        headers: list[tuple[str, str]] | None = None,
        length: int | None = None,
    ) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
        lines = [f"HTTP/1.1 {status} {reason[status]}"]
        for name, value in headers or []:
            lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(body) if length is None else length}")
        lines.append("Connection: close")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        try:
            with trio.move_on_after(REQUEST_TIME):
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
