"""One agent: a membership core, its trio runtime and the control socket in one nursery.

`Agent.run()` binds the gossip sockets, builds the core with the address others reach us at,
starts the runtime and the control server, joins through the seeds, logs every membership
event with its evidence, keeps the keyring file current, and on SIGTERM/SIGINT (or the
control command "leave", or `stop()`) leaves the cluster gracefully within a bounded grace
period before everything is cancelled. Logging is configured by the entry point, not here.
What each control command means is in control_commands.py; it acts on the agent through
`leave()`, `update_metadata()` and `persist_keyring()`.
"""

from __future__ import annotations

import errno
import gc
import ipaddress
import os
import random
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, cast

import structlog
import trio

from . import __version__
from . import log as swimlog
from .config import AgentConfig, format_hostport
from .control import default_control_path, open_control_socket, serve_control
from .control_commands import ControlCommands
from .directory import DNS_TAG, SIP_TAG, DirectoryChange, MemberDirectory
from .dns import DnsService
from .keyring import Keyring, KeyringFileError
from .membership import (
    Addr,
    Event,
    Isolation,
    Joined,
    JoinFailed,
    KeyringChanged,
    Member,
    MemberFailed,
    MemberHeld,
    MemberJoined,
    MemberLeft,
    MemberRecovered,
    MemberReleased,
    Membership,
    MemberSuspected,
    MemberUpdated,
    NameConflict,
    Rejected,
)
from .membership.runtime import MembershipRuntime
from .metrics import MetricsServer
from .routing import PLACEMENT_SPREAD, PLACEMENT_TAG, ZONE_TAG, RoutingTable
from .sip import SipService
from .sockets import BindError, bind_sockets
from .status import AgentStatus

__all__ = ["KEYRING_FILE", "Agent"]

log = structlog.get_logger("swimthor.agent")

KEYRING_FILE = "keyring.json"
# Allocations (net of frees) between young-generation collections; CPython's default is 700.
GC_THRESHOLD = 20_000
# How often our load report (on our view summaries) is refreshed.
LOAD_REPORT_EVERY = 2.0
# Membership and routing events kept in memory for `swimthor monitor --since`.
RECENT_EVENTS = 1000
# Objects that survived this long are moved out of the collector's sight (gc.freeze), so a full
# collection does not walk every binding held (200,000 bindings: a 160 ms pause); every
# GC_FULL_INTERVAL they are brought back for one full collection, so cycles that were garbage
# when frozen are still reclaimed.
GC_FREEZE_INTERVAL = 30.0
GC_FULL_INTERVAL = 600.0
# Extra time beyond leave_propagate_time that a graceful leave may take before we cancel.
LEAVE_GRACE = 1.0


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _guess_advertise_host() -> str:
    """The host's address as its own name resolves (no packet is sent), else 127.0.0.1."""
    try:
        host = socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"
    return host or "127.0.0.1"


async def _resolve(addr: Addr) -> Addr:
    """An IP literal for a seed given by name; the name itself if it does not resolve."""
    host, port = addr
    try:
        ipaddress.ip_address(host)
        return addr
    except ValueError:
        pass
    try:
        with trio.fail_after(5):
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, trio.TooSlowError) as e:
        log.warning("cannot resolve seed", seed=format_hostport(addr), reason=str(e))
        return addr
    for family, _, _, _, sockaddr in infos:
        if family == socket.AF_INET:
            return (str(sockaddr[0]), port)
    return (str(infos[0][4][0]), port) if infos else addr


async def _gc_maintenance() -> None:
    """See GC_FREEZE_INTERVAL. One process may run several agents (the demo): harmless, the
    collector is process-wide and freezing twice is the same as once."""
    since_full = 0.0
    while True:
        await trio.sleep(GC_FREEZE_INTERVAL)
        since_full += GC_FREEZE_INTERVAL
        if since_full >= GC_FULL_INTERVAL:
            since_full = 0.0
            gc.unfreeze()
            gc.collect()
        gc.freeze()


class NameInUseError(ValueError):
    """Another live member answers under this agent's name; the agent refuses to run."""


class Agent:
    """Wiring for one node. `run()` until stopped; see the module docstring."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        keyring: Keyring | None,
        rng: random.Random | None = None,
        handle_signals: bool = True,
    ) -> None:
        self.config = config
        self.keyring = keyring
        self.rng = rng if rng is not None else random.Random()
        self.handle_signals = handle_signals
        self._core: Membership | None = None
        self._runtime: MembershipRuntime | None = None
        self._bound: Addr | None = None
        self._control_path: str | None = None
        self._done = trio.Event()
        self._finished = trio.Event()
        self._leaving = False
        self._left = trio.Event()
        # The live members (directory.py), fed from the membership events only; routing, SIP
        # and DNS follow it, in that order (routing subscribes first, so that the front-ends
        # see the epoch their change made).
        self.directory = MemberDirectory()
        # Who owns which key (routing/), kept current from the directory.
        # A SIP node looks up the owners of every address-of-record it sees; a re-registering
        # phone hits the cache (64k answers per epoch, about 13 MB).
        self.routing = RoutingTable(roles=None, cache_size=65_536)
        self.directory.subscribe(self._route)
        # The SIP front-end, on agents with the role sip (config.sip set).
        self.sip: SipService | None = None
        # The DNS front-end, on agents with --dns (config.dns set).
        self.dns: DnsService | None = None
        # Prometheus metrics, on agents with --metrics.
        self.metrics: MetricsServer | None = None
        # The last RECENT_EVENTS membership and routing events, for `swimthor monitor`.
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self._event_seq = 0
        # What the control socket's commands mean (control_commands.py).
        self._control_commands = ControlCommands(self)

    # ------------------------------------------------------------ properties

    @property
    def core(self) -> Membership:
        if self._core is None:
            raise RuntimeError("the agent is not running yet")
        return self._core

    @property
    def runtime(self) -> MembershipRuntime:
        if self._runtime is None:
            raise RuntimeError("the agent is not running yet")
        return self._runtime

    @property
    def bound_addr(self) -> Addr | None:
        """The gossip host:port the sockets are bound to (None before `run()` binds)."""
        return self._bound

    @property
    def control_path(self) -> str | None:
        """The control socket path, or None when the control socket is disabled."""
        return self._control_path

    @property
    def recent_events(self) -> Sequence[dict[str, Any]]:
        """The last RECENT_EVENTS membership and routing events, oldest first."""
        return self._recent

    @property
    def event_seq(self) -> int:
        """The sequence number of the newest event (0 before the first)."""
        return self._event_seq

    def status(self) -> dict[str, Any]:
        return dict(self.core.status(trio.current_time()))

    def full_status(self) -> AgentStatus:
        """What `swimthor status` shows, and what the metrics are read from: the core's
        status (a StatusReply) with the agent's sections added."""
        status = cast(AgentStatus, dict(self.core.status(trio.current_time())))
        status["runtime"] = dict(self.runtime.stats)
        status["routing"] = routing_status(self.routing)
        if self.sip is not None:
            status["sip"] = self.sip.status()
        if self.dns is not None:
            status["dns"] = self.dns.status()
        return status

    # ------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[Agent] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the agent until it leaves or is cancelled; `task_status.started(self)` once
        the gossip sockets (and the control socket) are bound."""
        cfg = self.config
        mcfg = cfg.membership()
        sockets = bind_sockets(cfg.bind)
        try:
            self._bound = sockets.addr
            if cfg.advertise is not None:
                advertise = cfg.advertise
            elif _unspecified(sockets.addr[0]):
                advertise = (_guess_advertise_host(), sockets.addr[1])
            else:
                advertise = sockets.addr
            name = cfg.name or socket.gethostname()
            swimlog.bind_node(name)
            tags = dict(cfg.tags)
            # The placement rules this node knows, and its zone (swimthor.routing).
            tags[PLACEMENT_TAG] = str(PLACEMENT_SPREAD)
            if cfg.zone:
                tags[ZONE_TAG] = cfg.zone
            if cfg.sip is not None:
                self.sip = SipService(
                    cfg.sip,
                    name=name,
                    advertise_host=advertise[0],
                    routing=self.routing,
                    keyring=lambda: self._core.keyring if self._core is not None else None,
                    label=cfg.label,
                    data_dir=cfg.data_dir,
                    directory=self.directory,
                )
                tags[SIP_TAG] = format_hostport(_bind_front_end("SIP", cfg.sip.bind, self.sip.open))
                tags.update(self.sip.stream_tags())
            if cfg.dns is not None:
                self.dns = DnsService(
                    cfg.dns,
                    name=name,
                    dc=cfg.dc,
                    advertise_host=advertise[0],
                    routing=self.routing,
                    replicas=cfg.sip.replicas if cfg.sip is not None else 2,
                    directory=self.directory,
                )
                tags[DNS_TAG] = format_hostport(_bind_front_end("DNS", cfg.dns.bind, self.dns.open))
            now = trio.current_time()
            core = Membership(
                name=name,
                addr=advertise,
                config=mcfg,
                rng=self.rng,
                now=now,
                dc=cfg.dc,
                roles=cfg.roles,
                weight=cfg.weight,
                tags=tags,
                keyring=self.keyring,
                label=cfg.label,
                wall_offset=time.time() - now,
            )
        except BaseException:
            sockets.close()
            if self.sip is not None:
                self.sip.server.close()
            if self.dns is not None:
                self.dns.server.close()
            raise
        control_sock: socket.socket | None = None
        if cfg.control != "":
            path = cfg.control or default_control_path()
            try:
                control_sock = open_control_socket(path)
            except BaseException:
                sockets.close()
                raise
            self._control_path = path
        self._core = core
        runtime = MembershipRuntime(core, cfg.bind, mcfg, sockets=sockets)
        self._runtime = runtime
        events = runtime.subscribe(max_buffer=10_000)
        self.directory.sync(core.members())
        if self.sip is not None:
            assert self.sip.replicator is not None
            runtime.add_stream_service(self.sip.replicator.claim)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(runtime.serve)
                if (
                    ipaddress.ip_address(advertise[0]).is_loopback
                    and not ipaddress.ip_address(sockets.addr[0]).is_loopback
                ):
                    log.warning(
                        "advertising a loopback address; other hosts cannot reach it "
                        "(set --advertise)",
                        advertise=format_hostport(advertise),
                    )
                if control_sock is not None and self._control_path is not None:
                    await nursery.start(
                        partial(serve_control, sock=control_sock),
                        self._control_path,
                        self._control_commands.handle,
                    )
                nursery.start_soon(self._pump_events, events)
                nursery.start_soon(self._report_load)
                if self.sip is not None:
                    await nursery.start(self.sip.run)
                if self.dns is not None:
                    await nursery.start(self.dns.run)
                if cfg.metrics is not None:
                    self.metrics = MetricsServer(cfg.metrics, self.full_status)
                    await nursery.start(self.metrics.serve)
                if self.handle_signals and threading.current_thread() is threading.main_thread():
                    nursery.start_soon(self._watch_signals)
                log.info(
                    "agent started",
                    bind=format_hostport(sockets.addr),
                    advertise=format_hostport(advertise),
                    dc=cfg.dc,
                    sealed=self.keyring is not None,
                    profile=cfg.profile,
                    control=self._control_path or "disabled",
                )
                if cfg.seeds:
                    seeds = [await _resolve(s) for s in cfg.seeds]
                    core.join(seeds, trio.current_time())
                    runtime.wake()
                task_status.started(self)
                # Everything built at start (modules, config, sockets, tables) lives as long as
                # the agent: keep the collector from scanning it again, and let it run less
                # often (each SIP request allocates a few hundred short-lived objects; the
                # default threshold of 700 ran a collection every couple of requests).
                gc.freeze()
                gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
                nursery.start_soon(_gc_maintenance)
                await self._done.wait()
                nursery.cancel_scope.cancel()
            conflict = core.conflict
            if conflict is not None:
                raise NameInUseError(
                    f"name {name!r} is in use by a live member at "
                    f"{format_hostport(conflict.other)}; start this agent with another --name"
                )
        finally:
            self._finished.set()
            log.info("agent stopped")

    async def stop(self) -> None:
        """Leave gracefully, then stop `run()` and wait for it to return."""
        if self._runtime is not None and not self._finished.is_set():
            await self._leave()
        self._done.set()
        if self._runtime is not None:
            await self._finished.wait()

    async def _leave(self) -> None:
        """Graceful leave bounded by leave_propagate_time + LEAVE_GRACE; once per agent."""
        if self._leaving:
            await self._left.wait()
            return
        self._leaving = True
        try:
            budget = self.config.membership().leave_propagate_time + LEAVE_GRACE
            log.info("leaving the cluster")
            done = await self.runtime.leave(budget)
            if not done:
                log.warning("leave did not complete in time", budget=budget)
        finally:
            self._left.set()

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                async for signum in signals:
                    if self._leaving:
                        log.warning(
                            "second signal: stopping now", signal=signal.Signals(signum).name
                        )
                        self._done.set()
                        return
                    log.info("signal received: leaving", signal=signal.Signals(signum).name)
                    nursery.start_soon(self.leave)

    async def _report_load(self) -> None:
        """Keep our load report (it rides on our view summaries) current."""
        started = trio.current_time()
        major, minor, patch = (int(x) for x in [*__version__.split("."), "0", "0"][:3])
        while True:
            load = {
                "version": major * 10_000 + minor * 100 + patch,
                "uptime": int(trio.current_time() - started),
            }
            if self.sip is not None and self.sip.proxy is not None:
                load["sip_requests"] = self.sip.proxy.stats["requests"]
                load["bindings"] = len(self.sip.store)
                load["flows"] = sum(self.sip.flows().values())
            if self.dns is not None:
                load["dns_queries"] = self.dns.zone.stats["queries"]
            self.core.local_load = tuple(sorted(load.items()))
            await trio.sleep(LOAD_REPORT_EVERY)

    async def leave(self) -> None:
        """Leave gracefully, then let `run()` return without waiting for it (the control
        command "leave" calls this from inside `run()`)."""
        await self._leave()
        self._done.set()

    def update_metadata(
        self,
        *,
        roles: list[str] | None = None,
        weight: float | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Change our roles, weight or tags at run time (ValueError if the core refuses
        them): spread them, and bring routing and the front-ends up to date. The placement
        tag is ours: it is kept as it is whatever `tags` says."""
        if tags is not None:
            tags = dict(tags)
            tags[PLACEMENT_TAG] = self.core.local.tags.get(PLACEMENT_TAG, str(PLACEMENT_SPREAD))
        self.core.update_metadata(trio.current_time(), roles=roles, weight=weight, tags=tags)
        self.runtime.wake()
        # The core announces the change as an event, which reaches the directory through the
        # event pump; taken here at once as well, so that the command's answer already sees
        # it (the pump's copy then changes nothing).
        self.directory.apply(MemberUpdated(self.core.local.copy()))

    # ------------------------------------------------------------ events

    async def _pump_events(self, events: trio.MemoryReceiveChannel[Event]) -> None:
        async for event in events:
            self._log_event(event)
            self.directory.apply(event)
            if isinstance(event, NameConflict) and self.core.conflict is not None:
                # We are the newcomer under a name that a live member holds: stop, do not
                # announce ourselves over it. run() raises NameInUseError.
                self._done.set()
            if isinstance(event, KeyringChanged):
                await self.persist_keyring()

    def _route(self, changes: list[DirectoryChange]) -> None:
        """The directory's first subscriber: routing follows it (one epoch a change)."""
        if self.routing.update((c.name, c.after) for c in changes):
            self._remember("owners changed", {"epoch": self.routing.epoch})

    def _log_event(self, ev: Event) -> None:
        """One log line per event, with its evidence; the same record goes to the recent
        events `swimthor monitor` reads."""
        level, what, fields = _describe(ev)
        getattr(log, level)(what, **fields)
        self._remember(what, fields)

    def _remember(self, what: str, fields: dict[str, Any]) -> None:
        self._event_seq += 1
        self._recent.append(
            {"seq": self._event_seq, "time": round(time.time(), 3), "event": what, **fields}
        )

    async def persist_keyring(self) -> None:
        """Save the keyring to the data directory (after a rotation, ours or the cluster's)."""
        ring = self.keyring
        if ring is None or not self.config.data_dir:
            return
        path = os.path.join(self.config.data_dir, KEYRING_FILE)
        try:
            await trio.to_thread.run_sync(ring.save, path)
        except KeyringFileError as e:
            log.error("cannot save the keyring", error=str(e))


def routing_status(table: RoutingTable) -> dict[str, Any]:
    """Routing epoch and each role's members' shares of the key space, by weight."""
    roles = sorted({role for r in table.members() for role in r.roles})
    return {
        "epoch": table.epoch,
        "shares": {role: dict(sorted(table.shares(role).items())) for role in roles},
    }


def _describe(ev: Event) -> tuple[str, str, dict[str, Any]]:
    """(log level, event name, fields) of a membership event."""
    if isinstance(ev, MemberFailed):
        return (
            "warning",
            "member failed",
            {
                **_member_fields(ev.member),
                "by": ev.by,
                "suspected_for": round(ev.suspected_for, 3),
                "confirmations": ev.confirmations,
            },
        )
    if isinstance(ev, MemberSuspected):
        return "info", "member suspected", {**_member_fields(ev.member), "by": ev.by}
    if isinstance(ev, MemberRecovered):
        return (
            "info",
            "member recovered",
            {
                **_member_fields(ev.member),
                "previous": ev.previous,
            },
        )
    if isinstance(ev, MemberHeld):
        return (
            "warning",
            f"member held: {ev.reason}",
            {**_member_fields(ev.member), "reason": ev.reason, "penalty": ev.penalty},
        )
    if isinstance(ev, MemberReleased):
        return "info", "member released", _member_fields(ev.member)
    if isinstance(ev, Isolation):
        if ev.isolated:
            what = "hearing nobody: isolated, our suspicions stay with us"
            return "warning", what, {"unanswered_probes": ev.probes}
        return "info", "hearing again after isolation", {}
    if isinstance(ev, MemberLeft):
        return "info", "member left", _member_fields(ev.member)
    if isinstance(ev, MemberJoined):
        return "info", "member joined", _member_fields(ev.member)
    if isinstance(ev, MemberUpdated):
        return "info", "member updated", _member_fields(ev.member)
    if isinstance(ev, NameConflict):
        return (
            "error",
            "name conflict: two live nodes claim one name",
            {
                **_member_fields(ev.member),
                "other": format_hostport(ev.other),
            },
        )
    if isinstance(ev, Joined):
        return "info", "joined the cluster", {"via": format_hostport(ev.via), "members": ev.members}
    if isinstance(ev, JoinFailed):
        return (
            "warning",
            "no seed answered",
            {
                "seeds": [format_hostport(s) for s in ev.seeds],
                "attempt": ev.attempt,
                "retry_in": round(ev.retry_in, 3),
            },
        )
    if isinstance(ev, KeyringChanged):
        return "info", "keyring changed", {"op": ev.op, "key_id": ev.key_id}
    if isinstance(ev, Rejected):
        return (
            "warning",
            "packets rejected",
            {
                "reason": ev.reason,
                "count": ev.count,
                "last_from": format_hostport(ev.addr) if ev.addr is not None else None,
                "detail": ev.detail,
            },
        )
    return "info", "membership event", {"event_type": type(ev).__name__}  # a newer type


def _member_fields(m: Member) -> dict[str, Any]:
    return {
        "member": m.name,
        "addr": format_hostport(m.addr),
        "dc": m.dc,
        "incarnation": m.incarnation,
        "roles": list(m.roles),
    }


def _bind_front_end(
    what: str, bind: tuple[str, int], open_sockets: Callable[[], tuple[str, int]]
) -> tuple[str, int]:
    """Bind a front-end's sockets; a failure is a BindError that names the front-end and
    its address (not the gossip address, which did bind)."""
    try:
        return open_sockets()
    except OSError as e:
        reasons = {
            errno.EADDRINUSE: "address already in use",
            errno.EADDRNOTAVAIL: "address not available",
            errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
        }
        reason = reasons.get(e.errno or 0, e.strerror or str(e))
        raise BindError(f"cannot bind {what} {format_hostport(bind)}: {reason}", e.errno) from None
