"""`swimthor demo`: a small cluster of real agents on loopback, with a live status table.

N agents run in one trio process on free 127.0.0.1 ports, sealed with one freshly generated
in-memory key (or in plaintext with --insecure), each with a control socket in a temporary
directory, so `swimthor members --control <path>` works against them from another terminal.
Once a second the table is redrawn in place on a terminal, or appended when output is not one.
Ctrl-C, SIGTERM or the end of --duration makes every agent leave gracefully.

Everything read from the agents is read defensively: a field that is missing shows as "?",
so the demo keeps running while the agent and core grow.
"""

from __future__ import annotations

import inspect
import random
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import trio

from swimthor.config import AgentConfig, DnsConfig, SipConfig, format_hostport
from swimthor.keyring import Keyring
from swimthor.ports import free_ports

HOST = "127.0.0.1"
CHAOS_LINES = 8  # chaos lines shown under the table
DOMAIN = "example.com"
# The sipp scenarios shipped with the package (the same ones the interop tests run).
SCENARIOS = Path(__file__).parent / "sip" / "scenarios"
REFRESH = 1.0
# How long every agent together gets to leave before the rest is cancelled.
STOP_GRACE = 5.0
CLEAR = "\x1b[H\x1b[2J"


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One line of the table; strings so that anything unknown is simply "?"."""

    name: str
    addr: str
    dc: str
    state: str  # as node1 sees it
    incarnation: str
    health: str
    alive: str  # members alive in this node's own view
    digest: str
    converged: str
    sip: str = "-"
    bindings: str = "-"
    dns: str = "-"


def node_configs(
    nodes: int,
    ports: Sequence[int],
    profile: str,
    tmpdir: Path,
    insecure: bool,
    sip_ports: Sequence[int] | None = None,
    dns_ports: Sequence[int] | None = None,
) -> list[AgentConfig]:
    """node1..nodeN; dcs alternate dc1/dc2 from 4 nodes up; everyone joins through node1.
    With `sip_ports`, every node serves SIP for DOMAIN on its port; with `dns_ports`, every
    node answers DNS for the zone DOMAIN on its port."""
    seed = (HOST, ports[0])
    configs = []
    for i in range(nodes):
        name = f"node{i + 1}"
        addr = (HOST, ports[i])
        configs.append(
            AgentConfig(
                name=name,
                bind=addr,
                advertise=addr,
                seeds=[] if i == 0 else [seed],
                dc=("dc1" if i % 2 == 0 else "dc2") if nodes >= 4 else "dc1",
                roles=["sip"],
                profile=profile,
                insecure=insecure,
                control=str(tmpdir / f"{name}.sock"),
                data_dir=str(tmpdir / name),
                log_format="console",
                log_level="warning",
                sip=None
                if sip_ports is None
                else SipConfig(bind=(HOST, sip_ports[i]), domains=[DOMAIN], auth=False),
                dns=None
                if dns_ports is None
                else DnsConfig(bind=(HOST, dns_ports[i]), zone=DOMAIN),
            )
        )
    return configs


def _s(value: Any) -> str:
    return "?" if value is None or value == "" else str(value)


def _call(obj: Any, name: str, *args: Any) -> Any:
    """obj.name(*args), or None when it is missing or fails (the demo must not crash)."""
    fn = getattr(obj, name, None)
    if not callable(fn):
        return None
    try:
        return fn(*args)
    except Exception:
        return None


def _status_of(agent: Any) -> Mapping[str, Any]:
    status = _call(agent, "status")
    if not isinstance(status, Mapping):
        try:
            now = trio.current_time()
        except RuntimeError:  # outside trio.run (tests): the core's clock is unknown
            return {}
        status = _call(getattr(agent, "core", None), "status", now)
    return status if isinstance(status, Mapping) else {}


def _converged_text(converged: Any) -> str:
    if not isinstance(converged, Mapping):
        return "?"
    agree = int(converged.get("agree", 0))
    total = agree + int(converged.get("disagree", 0)) + int(converged.get("unknown", 0))
    if total == 0:
        return "-"
    return f"{agree}/{total}" + (" yes" if agree == total else "")


def snapshot(agents: Sequence[Any], configs: Sequence[AgentConfig]) -> list[NodeRow]:
    """One row per node, read from the running agents."""
    seen_by_first: dict[str, str] = {}
    members = _call(getattr(agents[0], "core", None), "members_json") if agents else None
    if isinstance(members, list):
        for m in members:
            if isinstance(m, Mapping):
                seen_by_first[str(m.get("name"))] = _s(m.get("state"))
    rows = []
    for agent, cfg in zip(agents, configs, strict=False):
        status = _status_of(agent)
        counts = status.get("counts")
        digest = status.get("view_digest")
        rows.append(
            NodeRow(
                name=cfg.name,
                addr=format_hostport(cfg.advertise or cfg.bind),
                dc=cfg.dc,
                state=seen_by_first.get(cfg.name, "?"),
                incarnation=_s(status.get("incarnation")),
                health=_s(status.get("health")),
                alive=_s(counts.get("alive")) if isinstance(counts, Mapping) else "?",
                digest=str(digest)[:8] if digest else "?",
                converged=_converged_text(status.get("converged")),
                sip=format_hostport(cfg.sip.bind) if cfg.sip is not None else "-",
                bindings=_bindings_text(agent),
                dns=format_hostport(cfg.dns.bind) if cfg.dns is not None else "-",
            )
        )
    return rows


def _bindings_text(agent: Any) -> str:
    sip = getattr(agent, "sip", None)
    store = getattr(sip, "store", None)
    try:
        return str(len(store)) if store is not None else "-"
    except TypeError:
        return "?"


def format_table(rows: Sequence[NodeRow]) -> str:
    """The rows as aligned columns with a header."""
    header = (
        "NAME", "ADDR", "DC", "STATE@node1", "INC", "HEALTH", "ALIVE", "VIEW", "CONVERGED",
        "SIP", "BINDINGS", "DNS",
    )  # fmt: skip
    table = [header] + [
        (
            r.name,
            r.addr,
            r.dc,
            r.state,
            r.incarnation,
            r.health,
            r.alive,
            r.digest,
            r.converged,
            r.sip,
            r.bindings,
            r.dns,
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in table]  # fmt: skip
    return "\n".join(lines) + "\n"


def sipp_hint(tmpdir: Path, sip_ports: Sequence[int], phone_ports: Sequence[int]) -> str:
    """Ready sipp command lines: register bob through the last node, answer as bob, and call
    bob through the first node (the cluster routes each call to bob's owner in one hop)."""
    bob = tmpdir / "bob.csv"
    callers = tmpdir / "callers.csv"
    bob.write_text("SEQUENTIAL\nbob\n")
    callers.write_text("SEQUENTIAL\n" + "".join(f"caller{i}\n" for i in range(100)))
    last, first = sip_ports[-1], sip_ports[0]
    uas, uac = phone_ports[0], phone_ports[1]
    common = f"-key domain {DOMAIN} -i {HOST}"
    return (
        "SIP (Debian sip-tester), in another terminal:\n"
        f"  register bob: sipp {HOST}:{last} -sf {SCENARIOS / 'register.xml'} -inf {bob} "
        f"{common} -p {uas} -m 1\n"
        f"  answer as bob: sipp -sf {SCENARIOS / 'uas.xml'} -i {HOST} -p {uas}\n"
        f"  call bob: sipp {HOST}:{first} -sf {SCENARIOS / 'uac.xml'} -inf {callers} {common} "
        f"-s bob -p {uac} -m 10 -r 2\n"
    )


def dig_hint(dns_ports: Sequence[int]) -> str:
    """Ready dig command lines (Debian bind9-dnsutils): the SRV lookup a phone does, and the
    per-user lookup of bob's home nodes; any node answers."""
    port = dns_ports[0]
    return (
        "DNS (Debian bind9-dnsutils):\n"
        f"  SIP servers: dig @{HOST} -p {port} _sip._udp.{DOMAIN} SRV\n"
        f"  bob's owners: dig @{HOST} -p {port} _sip._udp.bob.{DOMAIN}.aor.{DOMAIN} SRV +short\n"
    )


def _start_kwargs(agent_cls: Any) -> dict[str, Any]:
    """Ask the agent not to install its own SIGINT/SIGTERM handling when it can be asked:
    the demo owns the signals and stops every agent itself."""
    try:
        params = inspect.signature(agent_cls).parameters
    except (TypeError, ValueError):
        return {}
    for name in ("handle_signals", "signals"):
        if name in params:
            return {name: False}
    return {}


class _Demo:
    def __init__(
        self,
        nodes: int,
        profile: str,
        duration: float | None,
        insecure: bool,
        out: TextIO,
        chaos_every: float | None = None,
    ) -> None:
        self.chaos_every = chaos_every
        # What chaos did and saw, newest last (the live view shows the tail).
        self.chaos_log: list[str] = []
        self.scopes: list[trio.CancelScope] = []
        self.keyrings: list[Any] = []
        self.nodes = nodes
        self.profile = profile
        self.duration = duration
        self.insecure = insecure
        self.out = out
        self.tty = out.isatty()
        self.agents: list[Any] = []
        self.configs: list[AgentConfig] = []
        self.started = time.monotonic()
        self.hinted = False
        self.sip_hint = ""
        self.dns_hint = ""
        self.out_broken = False
        # Cancelled by a signal, the end of --duration, or a closed output.
        self.waiting = trio.CancelScope()

    async def _run_agent(
        self,
        i: int,
        agent_cls: Any,
        extra: dict[str, Any],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Agent i, in a cancel scope of its own: cancelling it is a crash (no leave)."""
        keyring = self.keyrings[i]
        if keyring is not None:
            keyring = Keyring(keyring.keys, keyring.primary)
        agent = agent_cls(self.configs[i], keyring=keyring, **extra)
        self.agents[i] = agent
        with self.scopes[i]:
            await agent.run(task_status=task_status)

    def _say(self, text: str) -> None:
        self.chaos_log.append(f"{time.strftime('%H:%M:%S')}  {text}")
        del self.chaos_log[:-100]

    def _owners(self, aor: str) -> list[str]:
        first = self.agents[0]
        try:
            return [r.name for r in first.routing.owners(aor, 2, "sip")]
        except Exception:
            return []

    def _state_at_first(self, name: str) -> str | None:
        for m in _call(getattr(self.agents[0], "core", None), "members_json") or []:
            if isinstance(m, Mapping) and m.get("name") == name:
                return str(m.get("state"))
        return None

    async def _chaos(self, nursery: trio.Nursery, agent_cls: Any, extra: dict[str, Any]) -> None:
        """Every `chaos_every` seconds: crash a node (never node1, whose view is shown),
        time its detection, restart it half-way, and time its return; and say where bob's
        calls went meanwhile."""
        assert self.chaos_every is not None
        rng = random.Random()
        aor = f"sip:bob@{DOMAIN}"
        while True:
            await trio.sleep(self.chaos_every / 2)
            victim = rng.randrange(1, len(self.configs))
            name = self.configs[victim].name
            before = self._owners(aor)
            self.scopes[victim].cancel()
            killed = trio.current_time()
            role = " (bob's first owner)" if before[:1] == [name] else ""
            self._say(f"killed {name}{role}")
            while self._state_at_first(name) != "dead":
                if trio.current_time() - killed > self.chaos_every * 4:
                    break
                await trio.sleep(0.05)
            else:
                after = self._owners(aor)
                moved = f"; bob's calls now go to {after[0]}" if after[:1] != before[:1] else ""
                self._say(
                    f"node1 declared {name} dead after {trio.current_time() - killed:.1f} s{moved}"
                )
            await trio.sleep(max(0.0, self.chaos_every / 2 - (trio.current_time() - killed)))
            self.scopes[victim] = trio.CancelScope()
            await nursery.start(self._run_agent, victim, agent_cls, extra)
            restarted = trio.current_time()
            self._say(f"restarted {name}")
            while self._state_at_first(name) != "alive":
                if trio.current_time() - restarted > self.chaos_every * 4:
                    break
                await trio.sleep(0.05)
            else:
                back = self._owners(aor)
                self._say(
                    f"{name} took its place back after {trio.current_time() - restarted:.1f} s"
                    + (f"; bob's first owner: {back[0]}" if back else "")
                )

    def _draw(self, final: bool = False) -> None:
        elapsed = time.monotonic() - self.started
        sealing = "plaintext" if self.insecure else "sealed"
        head = (
            f"swimthor demo: {len(self.agents)}/{self.nodes} nodes, profile {self.profile}, "
            f"{sealing}, {elapsed:.0f}s" + (" (stopped)" if final else "")
        )
        body = format_table(snapshot(self.agents, self.configs)) if self.agents else ""
        hint = ""
        if self.configs and not final and (self.tty or not self.hinted):
            self.hinted = True
            hint = (
                f"try: swimthor members --control {self.configs[0].control}\n"
                + self.sip_hint
                + self.dns_hint
                + "Ctrl-C stops every node gracefully\n"
            )
        chaos = ""
        if self.chaos_every is not None:
            recent = "".join(f"  {line}\n" for line in self.chaos_log[-CHAOS_LINES:])
            chaos = f"chaos (a node killed every {self.chaos_every:g} s, restarted half-way):\n"
            chaos += recent
        text = f"{head}\n{body}{chaos}{hint}"
        if self.tty and not final:
            text = CLEAR + text
        elif not self.tty:
            text += "\n"
        self._write(text)

    def _write(self, text: str) -> None:
        """Write to the output; if it is gone (a closed pipe), stop the demo gracefully."""
        if self.out_broken:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            self.out_broken = True
            self.waiting.cancel()

    async def _refresh(self) -> None:
        while True:
            self._draw()
            await trio.sleep(REFRESH)

    async def _stop_all(self) -> None:
        with trio.move_on_after(STOP_GRACE):
            async with trio.open_nursery() as nursery:
                for agent, scope in zip(self.agents, self.scopes, strict=False):
                    if agent is not None and not scope.cancel_called:
                        nursery.start_soon(agent.stop)

    async def main(self) -> None:
        from swimthor.agent import Agent

        master = None if self.insecure else Keyring([Keyring.generate()])
        every = free_ports(3 * self.nodes + 2)
        ports, sip_ports = every[: self.nodes], every[self.nodes : 2 * self.nodes]
        dns_ports = every[2 * self.nodes : 3 * self.nodes]
        phone_ports = every[3 * self.nodes :]
        extra = _start_kwargs(Agent)
        # The demo owns SIGINT/SIGTERM (the agents are asked not to watch them): a Ctrl-C
        # while the nodes start is kept and acted on as soon as they all run.
        with (
            tempfile.TemporaryDirectory(prefix="swimthor-demo-") as tmp,
            trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
        ):
            self.configs = node_configs(
                self.nodes, ports, self.profile, Path(tmp), self.insecure, sip_ports, dns_ports
            )
            self.sip_hint = sipp_hint(Path(tmp), sip_ports, phone_ports)
            self.dns_hint = dig_hint(dns_ports)
            async with trio.open_nursery() as nursery:
                for i in range(len(self.configs)):
                    # Each agent gets its own Keyring object: rotation mutates it.
                    keyring = None if master is None else Keyring(master.keys, master.primary)
                    self.keyrings.append(keyring)
                    self.agents.append(None)
                    self.scopes.append(trio.CancelScope())
                    await nursery.start(self._run_agent, i, Agent, extra)
                if self.chaos_every is not None:
                    nursery.start_soon(self._chaos, nursery, Agent, extra)
                refresh = trio.CancelScope()

                async def refresh_until_stopped() -> None:
                    with refresh:
                        await self._refresh()

                nursery.start_soon(refresh_until_stopped)
                if self.duration is not None:
                    self.waiting.deadline = trio.current_time() + self.duration
                with self.waiting:
                    async for _ in signals:
                        break
                refresh.cancel()
                self._write("stopping: every node leaves the cluster...\n")
                await self._stop_all()
                nursery.cancel_scope.cancel()
            self._draw(final=True)


def run_demo(
    *,
    nodes: int = 5,
    profile: str = "local",
    duration: float | None = None,
    insecure: bool = False,
    out: TextIO | None = None,
    chaos_every: float | None = None,
) -> int:
    """Run the demo until Ctrl-C/SIGTERM or `duration` seconds; 0 after a graceful stop.
    With `chaos_every`, a node is crashed and restarted on that period."""
    demo = _Demo(nodes, profile, duration, insecure, out or sys.stdout, chaos_every)
    from swimthor import log

    log.configure("console", "warning")
    trio.run(demo.main)
    return 0
