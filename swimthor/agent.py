"""One agent: a membership core, its trio runtime and the control socket in one nursery.

`Agent.run()` binds the gossip sockets, builds the core with the address others reach us at,
starts the runtime and the control server, joins through the seeds, logs every membership
event with its evidence, keeps the keyring file current, and on SIGTERM/SIGINT (or the
control command "leave", or `stop()`) leaves the cluster gracefully within a bounded grace
period before everything is cancelled. Logging is configured by the entry point, not here.
"""

from __future__ import annotations

import binascii
import errno
import gc
import ipaddress
import math
import os
import random
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import structlog
import trio

from . import __version__
from . import log as swimlog
from .config import AgentConfig, format_hostport
from .control import ControlError, default_control_path, open_control_socket, serve_control
from .dns._service import DNS_TAG, DnsService
from .keyring import Keyring, KeyringFileError
from .membership._core import Membership
from .membership._events import (
    Event,
    Joined,
    JoinFailed,
    KeyringChanged,
    MemberEvent,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberRecovered,
    MemberSuspected,
    MemberUpdated,
    NameConflict,
    Rejected,
)
from .membership._member import Addr, Member
from .membership.runtime import MembershipRuntime
from .metrics import MetricsServer
from .routing import RoutingTable
from .sip._service import SIP_TAG, SipService
from .sockets import BindError, bind_sockets

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
_STATES = ("alive", "suspect", "dead", "left")


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


def _key_arg(args: dict[str, Any]) -> bytes:
    text = args.get("key")
    if not isinstance(text, str):
        raise ControlError('"key" (a base64 key) is required')
    try:
        return Keyring.decode_key(text)
    except (ValueError, binascii.Error) as e:
        raise ControlError(str(e)) from None


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
        # Who owns which key (routing/), kept current from the membership events.
        # A SIP node looks up the owners of every address-of-record it sees; a re-registering
        # phone hits the cache (64k answers per epoch, about 13 MB).
        self.routing = RoutingTable(roles=None, cache_size=65_536)
        # The SIP front-end, on agents with the role sip (config.sip set).
        self.sip: SipService | None = None
        # The DNS front-end, on agents with --dns (config.dns set).
        self.dns: DnsService | None = None
        # Prometheus metrics, on agents with --metrics.
        self.metrics: MetricsServer | None = None
        # The last RECENT_EVENTS membership and routing events, for `swimthor monitor`.
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self._event_seq = 0
        self._commands: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "members": self._cmd_members,
            "status": self._cmd_status,
            "leave": self._cmd_leave,
            "keys.list": self._cmd_keys_list,
            "keys.install": self._cmd_keys_install,
            "keys.use": self._cmd_keys_use,
            "keys.remove": self._cmd_keys_remove,
            "tags.set": self._cmd_tags_set,
            "meta": self._cmd_meta,
            "route": self._cmd_route,
            "events": self._cmd_events,
            "subscriber.set": self._cmd_subscriber_set,
            "subscriber.list": self._cmd_subscriber_list,
            "location": self._cmd_location,
        }

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

    def status(self) -> dict[str, Any]:
        return self.core.status(trio.current_time())

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
            if cfg.sip is not None:
                self.sip = SipService(
                    cfg.sip,
                    name=name,
                    advertise_host=advertise[0],
                    routing=self.routing,
                    keyring=lambda: self._core.keyring if self._core is not None else None,
                    label=cfg.label,
                    data_dir=cfg.data_dir,
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
        self.routing.sync(core.members())
        if self.sip is not None:
            self.sip.sync_members(core.members())
            assert self.sip.replicator is not None
            runtime.add_stream_service(self.sip.replicator.claim)
        if self.dns is not None:
            self.dns.sync_members(core.members())
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
                        self._handle_control,
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
                    nursery.start_soon(self._leave_then_finish)

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

    async def _leave_then_finish(self) -> None:
        await self._leave()
        self._done.set()

    # ------------------------------------------------------------ events

    async def _pump_events(self, events: trio.MemoryReceiveChannel[Event]) -> None:
        async for event in events:
            self._log_event(event)
            moved = self.routing.handle_event(event)
            if moved:
                self._remember("owners changed", {"epoch": self.routing.epoch})
            if self.sip is not None and isinstance(event, MemberEvent):
                live = not isinstance(event, MemberFailed | MemberLeft)
                self.sip.member_changed(event.member, live and event.member.state.is_live)
                if moved:
                    self.sip.routing_changed()
            if self.dns is not None and isinstance(event, MemberEvent):
                live = not isinstance(event, MemberFailed | MemberLeft)
                self.dns.member_changed(event.member, live)
            if isinstance(event, NameConflict) and self.core.conflict is not None:
                # We are the newcomer under a name that a live member holds: stop, do not
                # announce ourselves over it. run() raises NameInUseError.
                self._done.set()
            if isinstance(event, KeyringChanged):
                await self._persist_keyring()

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

    async def _persist_keyring(self) -> None:
        ring = self.keyring
        if ring is None or not self.config.data_dir:
            return
        path = os.path.join(self.config.data_dir, KEYRING_FILE)
        try:
            await trio.to_thread.run_sync(ring.save, path)
        except KeyringFileError as e:
            log.error("cannot save the keyring", error=str(e))

    # ------------------------------------------------------------ control commands

    async def _handle_control(self, cmd: str, args: dict[str, Any]) -> Any:
        fn = self._commands.get(cmd)
        if fn is None:
            known = ", ".join(sorted(self._commands))
            raise ControlError(f"unknown command {cmd!r} (known: {known})")
        return await fn(args)

    async def _cmd_members(self, args: dict[str, Any]) -> Any:
        filters: dict[str, str] = {}
        for key in ("status", "dc", "role"):
            value = args.get(key)
            if value is None:
                continue
            if not isinstance(value, str):
                raise ControlError(f'"{key}" must be a string')
            filters[key] = value
        if "status" in filters and filters["status"] not in _STATES:
            raise ControlError(
                f"unknown status {filters['status']!r} (one of {', '.join(_STATES)})"
            )
        return [
            m
            for m in self.core.members_json()
            if ("status" not in filters or m.get("state") == filters["status"])
            and ("dc" not in filters or m.get("dc") == filters["dc"])
            and ("role" not in filters or filters["role"] in (m.get("roles") or ()))
        ]

    async def _cmd_status(self, args: dict[str, Any]) -> Any:
        return self.full_status()

    def full_status(self) -> dict[str, Any]:
        """What `swimthor status` shows, and what the metrics are read from."""
        status = self.core.status(trio.current_time())
        status["runtime"] = dict(self.runtime.stats)
        status["routing"] = routing_status(self.routing)
        if self.sip is not None:
            status["sip"] = self.sip.status()
        if self.dns is not None:
            status["dns"] = self.dns.status()
        return status

    async def _cmd_route(self, args: dict[str, Any]) -> Any:
        """The owners of a key, in rank order: {"key", "epoch", "owners": [...]}."""
        unknown = set(args) - {"key", "replicas", "role", "dc"}
        if unknown:
            raise ControlError(f"unknown argument(s) for route: {', '.join(sorted(unknown))}")
        try:
            return route_reply(
                self.routing,
                args.get("key"),
                args.get("replicas", 2),
                args.get("role", "sip"),
                args.get("dc"),
            )
        except ValueError as e:
            raise ControlError(str(e)) from None

    async def _cmd_events(self, args: dict[str, Any]) -> Any:
        """Recent events: {"after": seq} those after it, {"since": seconds} those of the last
        seconds, neither: all kept (the last RECENT_EVENTS). {"events": [...], "last": seq}."""
        unknown = set(args) - {"after", "since"}
        if unknown:
            raise ControlError(f"unknown argument(s): {', '.join(sorted(unknown))}")
        after, since = args.get("after"), args.get("since")
        if after is not None and (isinstance(after, bool) or not isinstance(after, int)):
            raise ControlError('"after" must be an event sequence number')
        if since is not None and (
            isinstance(since, bool) or not isinstance(since, int | float) or since < 0
        ):
            raise ControlError('"since" must be a number of seconds >= 0')
        cutoff = time.time() - since if since is not None else None
        events = [
            e
            for e in self._recent
            if (after is None or e["seq"] > after) and (cutoff is None or e["time"] >= cutoff)
        ]
        return {"events": events, "last": self._event_seq}

    def _sip_or_error(self) -> SipService:
        if self.sip is None or self.sip.proxy is None:
            raise ControlError("this agent serves no SIP (start it with --role sip)")
        return self.sip

    async def _cmd_subscriber_set(self, args: dict[str, Any]) -> Any:
        """Add, change or remove a subscriber: {"aor", "password"} (password null: remove)."""
        unknown = set(args) - {"aor", "password"}
        if unknown:
            raise ControlError(f"unknown argument(s): {', '.join(sorted(unknown))}")
        aor, password = args.get("aor"), args.get("password")
        if not isinstance(aor, str) or not (password is None or isinstance(password, str)):
            raise ControlError('"aor" must be a string and "password" a string or null')
        try:
            return await self._sip_or_error().set_subscriber(aor, password)
        except (ValueError, RuntimeError) as e:
            raise ControlError(str(e)) from None

    async def _cmd_subscriber_list(self, args: dict[str, Any]) -> Any:
        if args:
            raise ControlError("subscriber.list takes no arguments")
        return await self._sip_or_error().list_subscribers()

    async def _cmd_location(self, args: dict[str, Any]) -> Any:
        """The bindings of an AOR as its owners hold them: {"aor"} (`swimthor location`)."""
        unknown = set(args) - {"aor"}
        if unknown:
            raise ControlError(f"unknown argument(s): {', '.join(sorted(unknown))}")
        aor = args.get("aor")
        if not isinstance(aor, str):
            raise ControlError('"aor" must be a string')
        try:
            return await self._sip_or_error().location(aor)
        except ValueError as e:
            raise ControlError(str(e)) from None

    async def _cmd_leave(self, args: dict[str, Any]) -> Any:
        await self._leave()
        self._done.set()  # run() returns once this reply is written
        return {"left": True}

    async def _cmd_keys_list(self, args: dict[str, Any]) -> Any:
        ring = self.core.keyring
        if ring is None:
            raise ControlError("this agent runs without a keyring (--insecure)")
        return {
            "primary": Keyring.key_id(ring.primary),
            "keys": [Keyring.key_id(k) for k in ring.keys],
        }

    async def _key_op(self, op: str, args: dict[str, Any]) -> Any:
        ring = self.core.keyring
        if ring is None:
            raise ControlError("this agent runs without a keyring (--insecure)")
        key = _key_arg(args)
        try:
            getattr(ring, op)(key)
        except ValueError as e:
            raise ControlError(str(e)) from None
        log.info("keyring changed", op=op, key_id=Keyring.key_id(key), origin="local")
        await self._persist_keyring()
        results = await self.runtime.key_op_all(op, key)
        ok = sorted([self.core.local.name, *(n for n, err in results.items() if err is None)])
        failed = {n: err for n, err in sorted(results.items()) if err is not None}
        return {"ok": ok, "failed": failed}

    async def _cmd_keys_install(self, args: dict[str, Any]) -> Any:
        return await self._key_op("install", args)

    async def _cmd_keys_use(self, args: dict[str, Any]) -> Any:
        return await self._key_op("use", args)

    async def _cmd_keys_remove(self, args: dict[str, Any]) -> Any:
        return await self._key_op("remove", args)

    async def _cmd_tags_set(self, args: dict[str, Any]) -> Any:
        unknown = set(args) - {"tags", "roles", "weight"}
        if unknown:
            raise ControlError(f"unknown argument(s) for tags.set: {', '.join(sorted(unknown))}")
        tags = args.get("tags")
        roles = args.get("roles")
        weight = args.get("weight")
        if tags is not None and not (
            isinstance(tags, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items())
        ):
            raise ControlError('"tags" must map strings to strings')
        if roles is not None and not (
            isinstance(roles, list) and all(isinstance(r, str) for r in roles)
        ):
            raise ControlError('"roles" must be a list of strings')
        if weight is not None and (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not math.isfinite(weight)
        ):
            raise ControlError('"weight" must be a number')
        try:
            self.core.update_metadata(trio.current_time(), roles=roles, weight=weight, tags=tags)
        except ValueError as e:
            raise ControlError(str(e)) from None
        self.runtime.wake()
        if self.routing.sync(self.core.members()) and self.sip is not None:  # our record changed
            self.sip.routing_changed()
        if self.sip is not None:
            self.sip.sync_members(self.core.members())
        if self.dns is not None:
            self.dns.sync_members(self.core.members())
        return _member_json_of(self.core.local, self.core)

    async def _cmd_meta(self, args: dict[str, Any]) -> Any:
        """Change this node's metadata in place: "set" tags merge into the current ones,
        "unset" removes tag keys, "roles" (a list) and "weight" replace. Spreads with a
        higher incarnation."""
        unknown = set(args) - {"set", "unset", "roles", "weight"}
        if unknown:
            raise ControlError(f"unknown argument(s) for meta: {', '.join(sorted(unknown))}")
        set_ = args.get("set", {})
        unset = args.get("unset", [])
        if not (
            isinstance(set_, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in set_.items())
        ):
            raise ControlError('"set" must map strings to strings')
        if not (isinstance(unset, list) and all(isinstance(k, str) for k in unset)):
            raise ControlError('"unset" must be a list of tag names')
        tags = dict(self.core.local.tags)
        missing = [k for k in unset if k not in tags]
        if missing:
            raise ControlError(f"no such tag: {', '.join(missing)}")
        for k in unset:
            del tags[k]
        tags.update(set_)
        update: dict[str, Any] = {"tags": tags}
        if "roles" in args:
            update["roles"] = args["roles"]
        if "weight" in args:
            update["weight"] = args["weight"]
        return await self._cmd_tags_set(update)


MAX_REPLICAS = 16


def route_reply(
    table: RoutingTable, key: object, replicas: object, role: object, dc: object
) -> dict[str, Any]:
    """The `route` answer, checked: a key of 1..1024 characters, 1..16 replicas."""
    if not isinstance(key, str) or not key or len(key) > 1024:
        raise ValueError('"key" must be a string of 1 to 1024 characters')
    if isinstance(replicas, bool) or not isinstance(replicas, int):
        raise ValueError('"replicas" must be an integer')
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ValueError(f'"replicas" must be between 1 and {MAX_REPLICAS}')
    if not isinstance(role, str) or not role:
        raise ValueError('"role" must be a non-empty string')
    if dc is not None and not isinstance(dc, str):
        raise ValueError('"dc" must be a string')
    owners = table.owners(key, replicas, role, dc)
    return {
        "key": key,
        "epoch": table.epoch,
        "owners": [
            {"name": r.name, "addr": format_hostport(r.addr), "dc": r.dc, "weight": r.weight}
            for r in owners
        ],
    }


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


def _member_json_of(m: Member, core: Membership) -> dict[str, Any]:
    for item in core.members_json():
        if item.get("name") == m.name:
            return item
    return {"name": m.name}


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
