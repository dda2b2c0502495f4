"""The `swimthor` command line: run an agent, and ask a running one about its cluster.

One subcommand per operator action, the way serf does it: `join` runs an agent in the
foreground; `members`, `status`, `leave`, `keys`, `subscriber` and `location` talk to the
local agent over its control socket (or, for `members`, `status`, `route` and `location`, ask
any member over its gossip port with `--via`); `keygen` prints a new cluster key; `demo` runs
a small cluster on loopback with a live view.

Output is aligned columns for people and `--format json` for scripts. Every error is exactly
one line on stderr starting "swimthor: error: ". Exit status: 0 done, 1 the command failed,
2 the command line or config file is wrong, 130 interrupted.

The formatters (`format_members_text`, `format_status_text`, ...) are pure functions of the
JSON the agent returns, so they are tested without an agent.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import socket
import sys
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from swimthor.config import (
    DEFAULT_DNS_PORT,
    DEFAULT_GOSSIP_PORT,
    DEFAULT_METRICS_PORT,
    DEFAULT_SIP_PORT,
    DEFAULT_SIPS_PORT,
    DEFAULT_WS_PORT,
    DEFAULT_WSS_PORT,
    PROFILES,
    TLS_VERIFY_CLIENT,
    AgentConfig,
    ConfigError,
    DnsConfig,
    SipConfig,
    apply_toml,
    format_hostport,
    load_toml,
    parse_hostport,
    parse_tag,
    profile,
)
from swimthor.config import check_dns as _check_dns
from swimthor.config import check_sip as _check_sip
from swimthor.keyring import Keyring, KeyringFileError

if TYPE_CHECKING:
    from swimthor.agent import Agent

PROG = "swimthor"
KEYRING_FILE = "keyring.json"
STATES = ("alive", "suspect", "dead", "left")
LOG_FORMATS = ("auto", "console", "json")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
DEFAULT_TIMEOUT = 10.0
# A graceful leave waits for the broadcast to go out (config leave_propagate_time, 1 s on LAN).
LEAVE_TIMEOUT = 30.0


class UsageError(Exception):
    """The command line or a file it names is wrong: one line on stderr, exit status 2."""


class CommandError(Exception):
    """The command could not be carried out: one line on stderr, exit status 1."""


# ---------------------------------------------------------------------- argument parsing


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _hostport_type(default_port: int = DEFAULT_GOSSIP_PORT) -> Callable[[str], tuple[str, int]]:
    """An argparse type for HOST:PORT, `default_port` when the port is left out."""

    def parse(text: str) -> tuple[str, int]:
        try:
            return parse_hostport(text, default_port)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


_hostport_arg = _hostport_type()
_sip_hostport_arg = _hostport_type(DEFAULT_SIP_PORT)
_metrics_hostport_arg = _hostport_type(DEFAULT_METRICS_PORT)
_dns_hostport_arg = _hostport_type(DEFAULT_DNS_PORT)


def _keepalive_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value == 0 or 1 <= value <= 3600):
        raise argparse.ArgumentTypeError("a keepalive interval is 0 (off) or 1 to 3600 seconds")
    return value


def _ttl_arg(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 86_400:
        raise argparse.ArgumentTypeError(f"TTL must be whole seconds 0..86400, not {text!r}")
    return int(text)


def _rate_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 10_000_000 or value != value:
        raise argparse.ArgumentTypeError(
            f"a rate is a number of requests a second >= 0, not {text!r}"
        )
    return value


def _seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 86_400 or value != value:
        raise argparse.ArgumentTypeError(f"a time is a number of seconds > 0, not {text!r}")
    return value


def _replicas_arg(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 16:
        raise argparse.ArgumentTypeError(f"replicas must be a whole number 1..16, not {text!r}")
    return int(text)


def _tag_arg(text: str) -> tuple[str, str]:
    try:
        return parse_tag(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _weight_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad weight {text!r}: expected a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"bad weight {text!r}: must be a positive number")
    return value


def _positive_float_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad number {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def _node_count_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad node count {text!r}") from None
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"node count {value} is not between 1 and 64")
    return value


def _add_client_options(p: argparse.ArgumentParser, *, via: bool) -> None:
    """--control (and, with `via`, --via, key and label options) for the client commands."""
    target = p.add_mutually_exclusive_group()
    target.add_argument(
        "--control",
        metavar="PATH",
        help="control socket of the local agent (default: the agent's default path)",
    )
    if via:
        target.add_argument(
            "--via",
            metavar="HOST:PORT",
            type=_hostport_arg,
            help="ask the member at this gossip address instead of the local agent",
        )
        sealing = p.add_mutually_exclusive_group()
        sealing.add_argument(
            "--key-file", metavar="PATH", help="cluster keyring for --via (JSON or one key)"
        )
        sealing.add_argument(
            "--insecure", action="store_true", help="--via to a plaintext (unsealed) cluster"
        )
        p.add_argument("--label", default="", help="cluster label for --via")
        p.add_argument("--data-dir", metavar="DIR", help="where to look for keyring.json for --via")
    p.add_argument(
        "--timeout",
        type=_positive_float_arg,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up after this long (default {DEFAULT_TIMEOUT:g})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line. Every `join` flag defaults to None so that only the flags
    actually given override the config file."""
    parser = _Parser(
        prog=PROG,
        description="SWIM+Lifeguard gossip membership for a peer-to-peer SIP service.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # -- join
    j = sub.add_parser(
        "join",
        help="run an agent: start a new cluster, or join one through seed members",
        description="Run an agent in the foreground. With no SEED it starts a new cluster. "
        "SIGTERM or Ctrl-C leaves the cluster gracefully.",
    )
    j.add_argument(
        "seeds", nargs="*", metavar="SEED", type=_hostport_arg, help="HOST:PORT of a member"
    )
    j.add_argument("--name", help="node name, unique in the cluster (default: host name)")
    j.add_argument("--bind", metavar="HOST:PORT", type=_hostport_arg, help="gossip UDP+TCP")
    j.add_argument(
        "--advertise",
        metavar="HOST:PORT",
        type=_hostport_arg,
        help="address the other members use to reach this one (default: the bind address)",
    )
    j.add_argument("--dc", help="datacenter of this node (default dc1)")
    j.add_argument(
        "--role", action="append", metavar="ROLE", help="a role of this node (repeatable)"
    )
    j.add_argument("--weight", type=_weight_arg, help="routing weight, > 0 (default 1)")
    j.add_argument(
        "--tag", action="append", type=_tag_arg, metavar="K=V", help="metadata (repeatable)"
    )
    j.add_argument("--profile", choices=sorted(PROFILES), help="timing profile (default lan)")
    j.add_argument(
        "--sip",
        metavar="HOST:PORT",
        type=_sip_hostport_arg,
        help=f"SIP UDP+TCP for --role sip (default 0.0.0.0:{DEFAULT_SIP_PORT})",
    )
    j.add_argument(
        "--sip-advertise",
        metavar="HOST",
        help="the address phones and other nodes reach this node's SIP at (default: the --sip "
        "address when it is not 0.0.0.0, else the gossip advertise address)",
    )
    j.add_argument(
        "--sip-tls",
        metavar="HOST:PORT",
        type=_hostport_type(DEFAULT_SIPS_PORT),
        help=f"SIP over TLS here (port default {DEFAULT_SIPS_PORT}); needs --sip-tls-cert and "
        "--sip-tls-key",
    )
    j.add_argument(
        "--sip-ws",
        metavar="HOST:PORT",
        type=_hostport_type(DEFAULT_WS_PORT),
        help=f"SIP over WebSocket (RFC 7118) here (port default {DEFAULT_WS_PORT})",
    )
    j.add_argument(
        "--sip-wss",
        metavar="HOST:PORT",
        type=_hostport_type(DEFAULT_WSS_PORT),
        help=f"SIP over secure WebSocket here (port default {DEFAULT_WSS_PORT}); needs the "
        "TLS certificate and key",
    )
    j.add_argument(
        "--sip-ws-origin",
        action="append",
        metavar="ORIGIN",
        help="a web origin (https://app.example.com) whose pages may open a WebSocket to us "
        "(repeatable; default: any)",
    )
    j.add_argument("--sip-tls-cert", metavar="FILE", help="PEM certificate chain for TLS and WSS")
    j.add_argument("--sip-tls-key", metavar="FILE", help="PEM private key of --sip-tls-cert")
    j.add_argument(
        "--sip-tls-ca",
        metavar="FILE",
        help="PEM CA certificates that client certificates (and servers we connect to over "
        "TLS) are checked against (default: the system's)",
    )
    j.add_argument(
        "--sip-tls-verify-client",
        choices=TLS_VERIFY_CLIENT,
        help="ask phones for a TLS certificate: none, optional (checked when sent) or "
        "required (default none)",
    )
    j.add_argument(
        "--domain", action="append", metavar="DOMAIN", help="a SIP domain served (repeatable)"
    )
    j.add_argument(
        "--sip-replicas",
        type=_replicas_arg,
        metavar="R",
        help="owners that hold each address-of-record's bindings (default 2)",
    )
    j.add_argument(
        "--sip-auth",
        choices=("on", "off"),
        help="digest authentication of REGISTER and of INVITE from outside (default on; "
        "off only for demos and tests)",
    )
    j.add_argument(
        "--sip-auth-algorithms",
        metavar="LIST",
        help='digest challenges in order of preference (default "SHA-256,MD5")',
    )
    j.add_argument(
        "--sip-fork-timeout",
        type=_seconds_arg,
        metavar="SECONDS",
        help="how long devices of one q ring before those of the next lower q are tried "
        "(default 30)",
    )
    j.add_argument(
        "--sip-keepalive",
        type=_keepalive_arg,
        metavar="SECONDS",
        help="how often the edge pings each phone behind NAT on UDP with OPTIONS, 0 for never "
        "(default 30; 3 unanswered in a row remove its binding)",
    )
    j.add_argument(
        "--sip-rate-limit",
        type=_rate_arg,
        metavar="N",
        help="SIP requests/s allowed per source address, 0 for no limit (default 100)",
    )
    j.add_argument(
        "--dns",
        metavar="HOST:PORT",
        type=_dns_hostport_arg,
        help=f"serve the cluster's zone on DNS UDP+TCP here (port default {DEFAULT_DNS_PORT})",
    )
    j.add_argument("--dns-zone", metavar="ZONE", help="the zone (default: the first --domain)")
    j.add_argument(
        "--dns-ttl", type=_ttl_arg, metavar="SECONDS", help="TTL of every answer (default 5)"
    )
    j.add_argument(
        "--dns-rate-limit",
        type=_rate_arg,
        metavar="N",
        help="DNS queries/s allowed per source address, 0 for no limit (default 1000)",
    )
    j.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        type=_metrics_hostport_arg,
        help=f"serve Prometheus metrics at http://HOST:PORT/metrics (port default "
        f"{DEFAULT_METRICS_PORT})",
    )
    sealing = j.add_mutually_exclusive_group()
    sealing.add_argument("--key-file", metavar="PATH", help="cluster keyring (JSON or one key)")
    sealing.add_argument(
        "--insecure", action="store_true", default=None, help="gossip in plaintext (no keyring)"
    )
    j.add_argument("--label", help="cluster label; members with another label are rejected")
    j.add_argument("--control", metavar="PATH", help="control socket path")
    j.add_argument("--data-dir", metavar="DIR", help="state directory (holds keyring.json)")
    j.add_argument("--config", metavar="FILE", help="TOML config file; flags override it")
    j.add_argument("--log-format", choices=LOG_FORMATS, help="default auto")
    j.add_argument("--log-level", choices=LOG_LEVELS, type=str.lower, help="default info")

    # -- members
    m = sub.add_parser("members", help="list the members this agent knows")
    m.add_argument("--status", choices=STATES, help="only members in this state")
    m.add_argument("--dc", help="only members of this datacenter")
    m.add_argument("--role", help="only members with this role")
    m.add_argument("--format", choices=("text", "json"), default="text")
    _add_client_options(m, via=True)

    # -- status
    s = sub.add_parser(
        "status", help="the cluster as this node sees it: every member's health, view and load"
    )
    s.add_argument("--format", choices=("text", "json"), default="text")
    s.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        type=float,
        metavar="SECONDS",
        help="refresh in place every SECONDS (default 2) until Ctrl-C",
    )
    _add_client_options(s, via=True)

    # -- route
    r = sub.add_parser("route", help="which members own a key (rendezvous hashing), in rank order")
    r.add_argument("key", help="the key, e.g. an address-of-record: sip:alice@example.com")
    r.add_argument("--replicas", type=int, default=2, help="how many owners (default 2)")
    r.add_argument("--role", default="sip", help="among members with this role (default sip)")
    r.add_argument("--dc", help="only members of this datacenter")
    r.add_argument("--format", choices=("text", "json"), default="text")
    _add_client_options(r, via=True)

    # -- leave
    lv = sub.add_parser("leave", help="make the local agent leave the cluster gracefully")
    _add_client_options(lv, via=False)

    # -- meta
    mt = sub.add_parser(
        "meta",
        help="change this node's tags, roles or weight at run time (spreads by gossip)",
    )
    mt.add_argument("--tag", action="append", type=_tag_arg, default=[], metavar="K=V",
                    help="set a tag (repeatable)")  # fmt: skip
    mt.add_argument("--untag", action="append", default=[], metavar="K",
                    help="remove a tag (repeatable)")  # fmt: skip
    mt.add_argument("--role", action="append", default=None, metavar="ROLE",
                    help="replace the roles with these (repeatable)")  # fmt: skip
    mt.add_argument("--weight", type=_weight_arg, default=None, help="routing weight, > 0")
    _add_client_options(mt, via=False)

    # -- keygen
    sub.add_parser("keygen", help="print a new random cluster key (base64)")

    # -- keys
    mo = sub.add_parser(
        "monitor",
        help="a live stream of membership and routing events from the local agent",
        description="Prints the agent's membership and routing events (joined, suspected, "
        "failed, left, recovered, owners changed, packets rejected) as they happen, until "
        "Ctrl-C. The agent keeps the last 1000; --since shows the recent ones first.",
    )
    mo.add_argument(
        "--since", type=float, metavar="SECONDS", help="first show the events of the last SECONDS"
    )
    mo.add_argument("--once", action="store_true", help="print what is kept and exit")
    mo.add_argument("--format", choices=("text", "json"), default="text", help="json: one per line")
    _add_client_options(mo, via=False)

    sb = sub.add_parser(
        "subscriber", help="add, remove or list SIP subscribers (digest credentials)"
    )
    sbsub = sb.add_subparsers(dest="subscriber_command", metavar="ACTION", required=True)
    sa = sbsub.add_parser(
        "add", help="add a subscriber, or change its password (stored as HA1 hashes only)"
    )
    sa.add_argument("aor", metavar="AOR", help="its address-of-record, e.g. sip:alice@example.com")
    pw = sa.add_mutually_exclusive_group()
    pw.add_argument("--password", help="the password (visible to ps: prefer --password-file)")
    pw.add_argument(
        "--password-file", metavar="FILE", help="read the password from FILE's first line (- stdin)"
    )
    _add_client_options(sa, via=False)
    sr = sbsub.add_parser("remove", help="remove a subscriber")
    sr.add_argument("aor", metavar="AOR")
    _add_client_options(sr, via=False)
    sl = sbsub.add_parser("list", help="every subscriber of the cluster")
    sl.add_argument("--format", choices=("text", "json"), default="text")
    _add_client_options(sl, via=False)

    lc = sub.add_parser(
        "location",
        help="the SIP bindings of an address-of-record, as each of its owners holds them",
        description="The bindings (registered contacts) of AOR: contact, q, seconds left, "
        "Call-ID and CSeq, +sip.instance and reg-id, source, the node that applied it, the "
        "User-Agent, and which of the AOR's owners hold its newest version. Each owner is "
        "asked; one that does not answer is named.",
    )
    lc.add_argument("aor", metavar="AOR", help="an address-of-record, e.g. sip:alice@example.com")
    lc.add_argument("--format", choices=("text", "json"), default="text")
    _add_client_options(lc, via=True)

    k = sub.add_parser("keys", help="list or rotate the cluster keys through the local agent")
    ksub = k.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    kl = ksub.add_parser("list", help="key ids installed on the local agent")
    kl.add_argument("--format", choices=("text", "json"), default="text")
    _add_client_options(kl, via=False)
    for action, text in (
        ("install", "install KEY on every member (it may open, not yet seal)"),
        ("use", "make the installed KEY the primary (sealing) key on every member"),
        ("remove", "uninstall KEY from every member"),
    ):
        ka = ksub.add_parser(action, help=text)
        ka.add_argument("key", metavar="KEY", help="base64 key, or @FILE holding one")
        _add_client_options(ka, via=False)

    # -- demo
    d = sub.add_parser("demo", help="run a small cluster on loopback with a live status view")
    d.add_argument("--nodes", type=_node_count_arg, default=5, help="how many (default 5)")
    d.add_argument("--profile", choices=sorted(PROFILES), default="local")
    d.add_argument(
        "--duration",
        type=_positive_float_arg,
        metavar="SECONDS",
        help="stop after this long (default: until Ctrl-C)",
    )
    d.add_argument("--insecure", action="store_true", help="plaintext gossip (default: sealed)")
    d.add_argument(
        "--chaos",
        nargs="?",
        const=10.0,
        type=_positive_float_arg,
        metavar="SECONDS",
        help="crash a node every SECONDS (default 10) and restart it half-way; the view shows "
        "when each failure was detected and where bob's calls went",
    )

    # -- simulate (values are checked by swimthor.sim.scenario_from_args)
    sm = sub.add_parser(
        "simulate",
        help="run the real membership cores in a deterministic discrete-event simulation",
        description="Simulate N members on a virtual network with injected faults; times "
        "take s or ms (2ms, 1.5s), fractions 0.01 or 1%%. Faults (--fault, repeatable; K "
        "members picked by the seed): crash:K@T pause:K@T+D slow:K@T+D lossy:K@T+D/P "
        "flipflop:K@T+D/PERIOD partition:dc1|dc2@T+D partition:dc1>dc2@T+D (one way) "
        "partition:K@T+D restart:K@T+D[/newaddr] leave:K@T",
    )
    sm.add_argument("--nodes", default="100", help="members (default 100)")
    sm.add_argument("--dcs", default="1", help="datacenters, members round-robin (default 1)")
    sm.add_argument("--rtt-intra", default="2ms", help="round trip inside a dc (default 2ms)")
    sm.add_argument("--rtt-inter", default="40ms", help="round trip between dcs (default 40ms)")
    sm.add_argument("--jitter", default="0.1",
                    help="one-way jitter: latency fraction, or a time (default 0.1)")  # fmt: skip
    sm.add_argument("--loss", default="0", help="uniform datagram loss fraction (default 0)")
    sm.add_argument("--burst", metavar="ENTER,EXIT[,LOSS]",
                    help="Gilbert-Elliott bursty loss per node uplink")  # fmt: skip
    sm.add_argument("--dup", default="0", help="datagram duplication probability")
    sm.add_argument("--reorder", default="0", help="probability of an extra delay <= 1 RTT")
    sm.add_argument("--profile", choices=sorted(PROFILES), default="lan")
    sm.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a membership setting (repeatable)")  # fmt: skip
    sm.add_argument("--no-lifeguard", action="store_true",
                    help="plain SWIM: no health multiplier or suspect checks")  # fmt: skip
    sm.add_argument("--duration", default="60s", help="virtual time after warm-up (60s)")
    sm.add_argument("--seed", default="1", help="seed of every random choice (default 1)")
    sm.add_argument("--fault", action="append", metavar="SPEC", help="inject a fault")
    sm.add_argument("--bootstrap", action="store_true",
                    help="no warm-up: time until every member sees all alive")  # fmt: skip
    sm.add_argument("--warmup", metavar="MAX", help="longest warm-up (default 60s)")
    sm.add_argument("--slow-delay", metavar="LO,HI", help="slow-node delay (default 0.5,2.5)")
    sm.add_argument("--cprofile", type=int, metavar="N", help="print the top N functions")
    sm.add_argument("--format", choices=("text", "json"), default="text")
    return parser


# ---------------------------------------------------------------------- config and keys


def default_data_dir() -> Path:
    """/var/lib/swimthor for root, else $XDG_DATA_HOME/swimthor (~/.local/share/swimthor)."""
    if os.geteuid() == 0:
        return Path("/var/lib/swimthor")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "swimthor"


# `join` flags copied as they are onto the AgentConfig field of the same name, when given.
_PLAIN_FLAGS = (
    "metrics",
    "name",
    "bind",
    "advertise",
    "dc",
    "weight",
    "profile",
    "label",
    "control",
    "data_dir",
    "log_format",
    "log_level",
)


def build_agent_config(args: argparse.Namespace) -> AgentConfig:
    """Defaults, then the TOML file, then the flags that were given (a list flag such as
    --role or --tag replaces the file's list)."""
    cfg = AgentConfig()
    if args.config is not None:
        apply_toml(cfg, load_toml(args.config))
    for flag in _PLAIN_FLAGS:
        value = getattr(args, flag)
        if value is not None:
            setattr(cfg, flag, value)
    if args.seeds:
        cfg.seeds = list(args.seeds)
    if args.role is not None:
        cfg.roles = list(args.role)
    if args.tag is not None:
        cfg.tags = dict(args.tag)
    _apply_sip_flags(cfg, args)
    _apply_dns_flags(cfg, args)
    if args.insecure:
        cfg.insecure, cfg.key_file = True, None
    elif args.key_file is not None:
        cfg.insecure, cfg.key_file = False, args.key_file
    _check_agent_config(cfg)
    if not cfg.name:
        cfg.name = socket.gethostname()
    if cfg.data_dir is None:
        cfg.data_dir = str(default_data_dir())
    return cfg


def _apply_sip_flags(cfg: AgentConfig, args: argparse.Namespace) -> None:
    """SIP runs on agents with the role sip; --sip, --domain and --sip-replicas set it up."""
    given = [
        flag
        for flag, value in (
            ("--sip", args.sip),
            ("--sip-advertise", args.sip_advertise),
            ("--sip-tls", args.sip_tls),
            ("--sip-ws", args.sip_ws),
            ("--sip-wss", args.sip_wss),
            ("--sip-ws-origin", args.sip_ws_origin),
            ("--sip-tls-cert", args.sip_tls_cert),
            ("--sip-tls-key", args.sip_tls_key),
            ("--sip-tls-ca", args.sip_tls_ca),
            ("--sip-tls-verify-client", args.sip_tls_verify_client),
            ("--domain", args.domain),
            ("--sip-replicas", args.sip_replicas),
            ("--sip-rate-limit", args.sip_rate_limit),
            ("--sip-auth", args.sip_auth),
            ("--sip-auth-algorithms", args.sip_auth_algorithms),
            ("--sip-fork-timeout", args.sip_fork_timeout),
            ("--sip-keepalive", args.sip_keepalive),
        )
        if value is not None
    ]
    if "sip" not in cfg.roles:
        if given:
            raise ConfigError(f"{', '.join(given)} need --role sip")
        cfg.sip = None
        return
    sip = cfg.sip if cfg.sip is not None else SipConfig()
    if args.sip is not None:
        sip.bind = args.sip
    if args.sip_advertise is not None:
        sip.advertise_host = args.sip_advertise.strip().strip("[]")
    for name in ("tls", "ws", "wss"):
        value = getattr(args, f"sip_{name}")
        if value is not None:
            setattr(sip, f"{name}_bind", value)
    if args.sip_ws_origin is not None:
        sip.ws_origins = list(args.sip_ws_origin)
    for name in ("tls_cert", "tls_key", "tls_ca", "tls_verify_client"):
        value = getattr(args, f"sip_{name}")
        if value is not None:
            setattr(sip, name, value)
    if args.domain is not None:
        sip.domains = [d.lower().rstrip(".") for d in args.domain]
    if args.sip_replicas is not None:
        sip.replicas = args.sip_replicas
    if args.sip_auth is not None:
        sip.auth = args.sip_auth == "on"
    if args.sip_auth_algorithms is not None:
        sip.auth_algorithms = [a.strip().upper() for a in args.sip_auth_algorithms.split(",")]
    if args.sip_rate_limit is not None:
        sip.rate_limit = args.sip_rate_limit
        sip.rate_burst = max(sip.rate_burst, 3 * args.sip_rate_limit)
    if args.sip_fork_timeout is not None:
        sip.fork_timeout = args.sip_fork_timeout
    if args.sip_keepalive is not None:
        sip.keepalive_interval = args.sip_keepalive
    _check_sip(sip)
    cfg.sip = sip


def _apply_dns_flags(cfg: AgentConfig, args: argparse.Namespace) -> None:
    """DNS runs on agents given --dns (or a [dns] table); --dns-zone and --dns-ttl need it."""
    if args.dns is None and cfg.dns is None:
        given = [
            flag
            for flag, value in (
                ("--dns-zone", args.dns_zone),
                ("--dns-ttl", args.dns_ttl),
                ("--dns-rate-limit", args.dns_rate_limit),
            )
            if value is not None
        ]
        if given:
            raise ConfigError(f"{', '.join(given)} need --dns")
        return
    dns = cfg.dns if cfg.dns is not None else DnsConfig()
    if args.dns is not None:
        dns.bind = args.dns
    if args.dns_zone is not None:
        dns.zone = args.dns_zone
    if args.dns_ttl is not None:
        dns.ttl = args.dns_ttl
    if args.dns_rate_limit is not None:
        dns.rate_limit = args.dns_rate_limit
        dns.rate_burst = max(dns.rate_burst, 2 * args.dns_rate_limit)
    _check_dns(dns, cfg.sip)
    cfg.dns = dns


def _check_agent_config(cfg: AgentConfig) -> None:
    """What the TOML checks cannot see: values that must come from a fixed set or range."""
    try:
        profile(cfg.profile)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.insecure and cfg.key_file:
        raise ConfigError("key_file and insecure exclude each other")
    if not math.isfinite(cfg.weight) or cfg.weight <= 0:
        raise ConfigError(f"weight must be a positive number, not {cfg.weight!r}")
    if cfg.log_format not in LOG_FORMATS:
        raise ConfigError(f"log_format must be one of {', '.join(LOG_FORMATS)}")
    if cfg.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
    cfg.log_level = cfg.log_level.lower()
    if any(not r or any(c.isspace() for c in r) for r in cfg.roles):
        raise ConfigError("a role is a non-empty word without spaces")


def resolve_keyring(cfg: AgentConfig) -> tuple[Keyring | None, Path | None]:
    """The keyring `join` runs with, and the path of a key it just created (else None).

    --insecure: none. Otherwise the data dir's keyring.json is the node's keyring once it
    exists (key rotations are saved there, so a restart keeps them); keys from --key-file are
    added to it. The first start with --key-file copies that file there. With neither, a new
    cluster (no seeds) gets a fresh key saved there; joining one without a key is an error."""
    if cfg.insecure:
        return None, None
    assert cfg.data_dir is not None
    stored = Path(cfg.data_dir) / KEYRING_FILE
    given = Keyring.load(cfg.key_file) if cfg.key_file else None
    if stored.exists():
        keyring = Keyring.load(stored)
        if given is not None and not set(given.keys) <= set(keyring.keys):
            for key in given.keys:
                keyring.install(key)
            keyring.save(stored)
        cfg.key_file = str(stored)
        return keyring, None
    if given is not None:
        _make_private_dir(Path(cfg.data_dir))
        given.save(stored)
        return given, None
    if cfg.seeds:
        raise UsageError(
            "joining a sealed cluster needs --key-file (or --insecure for a plaintext cluster)"
        )
    keyring = Keyring([Keyring.generate()])
    _make_private_dir(Path(cfg.data_dir))
    keyring.save(stored)
    cfg.key_file = str(stored)
    return keyring, stored


def _make_private_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise CommandError(f"cannot create data directory {path}: {e.strerror or e}") from None


def client_keyring(args: argparse.Namespace) -> Keyring | None:
    """The keyring a `--via` query seals with: --insecure, --key-file, or the data dir's."""
    if args.insecure:
        return None
    if args.key_file:
        return Keyring.load(args.key_file)
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    stored = data_dir / KEYRING_FILE
    if stored.exists():
        return Keyring.load(stored)
    raise UsageError("--via needs --key-file (or --insecure for a plaintext cluster)")


def read_key_arg(text: str) -> bytes:
    """KEY on the command line: base64, or @FILE naming a key or keyring file (its primary)."""
    if text.startswith("@"):
        return Keyring.load(text[1:]).primary
    try:
        return Keyring.decode_key(text)
    except ValueError as e:
        raise UsageError(f"bad KEY: {e}") from None


# ---------------------------------------------------------------------- formatting


def _age(seconds: float) -> str:
    """A short age: 42s, 3m07s, 2h05m, 3d04h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _columns(rows: Sequence[Sequence[str]]) -> str:
    """Rows as left-aligned columns two spaces apart; the last column is not padded."""
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _member_sort_key(m: Mapping[str, Any]) -> tuple[str, str]:
    return (str(m.get("name", "")), str(m.get("addr", "")))


def filter_members(
    members: Sequence[Mapping[str, Any]],
    *,
    status: str | None = None,
    dc: str | None = None,
    role: str | None = None,
) -> list[Mapping[str, Any]]:
    """Members matching every filter given (state, datacenter, role)."""
    return [
        m
        for m in members
        if (status is None or m.get("state") == status)
        and (dc is None or m.get("dc") == dc)
        and (role is None or role in (m.get("roles") or ()))
    ]


def format_members_text(members: Sequence[Mapping[str, Any]], now: float) -> str:
    """serf-style columns: NAME ADDR DC ROLES STATE INC SINCE TAGS (SINCE is an age)."""
    rows = [["NAME", "ADDR", "DC", "ROLES", "STATE", "INC", "SINCE", "TAGS"]]
    for m in sorted(members, key=_member_sort_key):
        since = m.get("since")
        tags = m.get("tags") or {}
        rows.append(
            [
                _text(m.get("name")),
                _text(m.get("addr")),
                _text(m.get("dc")),
                ",".join(str(r) for r in m.get("roles") or ()) or "-",
                _text(m.get("state")),
                _text(m.get("incarnation")),
                _age(now - since) if isinstance(since, int | float) else "-",
                ",".join(f"{k}={v}" for k, v in sorted(tags.items())) or "-",
            ]
        )
    return _columns(rows)


def format_members_json(members: Sequence[Mapping[str, Any]]) -> str:
    """The members as a JSON array, sorted by name, one trailing newline."""
    return json.dumps(sorted(members, key=_member_sort_key), indent=2) + "\n"


def _state_counts(counts: Mapping[str, Any]) -> str:
    """'3 alive, 1 dead': known states in protocol order first, zeros left out."""
    order = [s for s in STATES if s in counts] + sorted(k for k in counts if k not in STATES)
    parts = [f"{counts[s]} {s}" for s in order if counts[s]]
    return ", ".join(parts) or "none"


def _names(value: Any) -> str:
    if isinstance(value, list | tuple) and value:
        return ", ".join(str(v) for v in value)
    return ""


def format_convergence(converged: Mapping[str, Any] | None) -> str:
    """'converged: 5/5 members report the same view', or who does not and why."""
    if not isinstance(converged, Mapping):
        return "converged: unknown"
    agree = int(converged.get("agree", 0))
    disagree = int(converged.get("disagree", 0))
    unknown = int(converged.get("unknown", 0))
    total = agree + disagree + unknown
    if disagree == 0 and unknown == 0:
        return f"converged: {agree}/{total} members report the same view"
    text = f"not converged: {agree}/{total} members report the same view"
    if disagree:
        names = _names(converged.get("members_disagreeing"))
        text += f"; {disagree} disagree" + (f" ({names})" if names else "")
    if unknown:
        names = _names(converged.get("members_unknown"))
        text += f"; {unknown} not heard from yet" + (f" ({names})" if names else "")
    return text


def _health(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"health {value}" + (" (healthy)" if value == 0 else " (degraded, 0 is healthy)")
    if isinstance(value, Mapping):
        return "health " + " ".join(f"{k}={v}" for k, v in value.items())
    return f"health {_text(value)}"


def format_status_text(status: Mapping[str, Any]) -> str:
    """This node, its incarnation and health; counts by state and datacenter; convergence;
    the protocol counters."""
    node = [_text(status.get("name"))]
    for key in ("addr", "dc"):
        if status.get(key):
            node.append(str(status[key]))
    lines = [
        f"node:       {'  '.join(node)}",
        f"            incarnation {_text(status.get('incarnation'))}, "
        f"{_health(status.get('health'))}",
    ]
    counts = status.get("counts")
    if isinstance(counts, Mapping):
        lines.append(f"members:    {_state_counts(counts)}")
    by_dc = status.get("by_dc")
    if isinstance(by_dc, Mapping) and by_dc:
        width = max(9, *(len(str(dc)) + 1 for dc in by_dc))
        for dc in sorted(by_dc):
            per = by_dc[dc]
            text = _state_counts(per) if isinstance(per, Mapping) else _text(per)
            lines.append(f"  {str(dc) + ':':<{width}} {text}")
    cluster = status.get("cluster")
    if isinstance(cluster, list) and cluster:
        lines.extend(format_cluster_table(cluster))
    digest = status.get("view_digest")
    if digest:
        lines.append(f"view:       digest {str(digest)[:16]}")
    lines.append(format_convergence(status.get("converged")))
    routing = status.get("routing")
    if isinstance(routing, Mapping):
        lines.append(f"routing:    epoch {_text(routing.get('epoch'))}")
        shares = routing.get("shares")
        if isinstance(shares, Mapping):
            for role in sorted(shares):
                per = shares[role]
                if isinstance(per, Mapping) and per:
                    text = "  ".join(f"{n} {float(v):.1%}" for n, v in sorted(per.items()))
                    lines.append(f"  key space ({role}): {text}")
    sip = status.get("sip")
    if isinstance(sip, Mapping):
        domains = sip.get("domains")
        domain_text = ", ".join(str(d) for d in domains) if isinstance(domains, list) else "?"
        lines.append(
            f"sip:        {_text(sip.get('address'))}  domains {domain_text}  "
            f"R={_text(sip.get('replicas'))}"
        )
        held = (
            f"            {_text(sip.get('bindings'))} bindings of "
            f"{_text(sip.get('aors'))} addresses-of-record"
        )
        if sip.get("subscribers") is not None:
            held += f", {_text(sip.get('subscribers'))} subscribers"
        lines.append(held + " held here")
        flows = sip.get("flows")
        if isinstance(flows, Mapping):
            lines.append(
                "            flows: "
                + "  ".join(
                    f"{t} {_text(flows.get(t))}" for t in ("udp", "tcp", "tls", "ws", "wss")
                )
            )
        kept = sip.get("keepalive")
        if isinstance(kept, Mapping):
            lines.append(
                f"            keepalives: udp pings {_text(kept.get('udp_pings'))} answered "
                f"{_text(kept.get('udp_answers'))} lost {_text(kept.get('udp_lost'))}, stun "
                f"{_text(kept.get('udp_stun'))}; pongs "
                + "  ".join(
                    f"{t} {_text(kept.get(f'{t}_pongs'))}" for t in ("tcp", "tls", "ws", "wss")
                )
            )
    dns = status.get("dns")
    if isinstance(dns, Mapping):
        servers = dns.get("servers")
        targets = dns.get("sip_targets")
        lines.append(
            f"dns:        {_text(dns.get('address'))}  zone {_text(dns.get('zone'))}  "
            f"ttl {_text(dns.get('ttl'))}s"
        )
        lines.append(
            f"            name servers: {', '.join(map(str, servers)) if servers else 'none'}; "
            f"SRV targets: {', '.join(map(str, targets)) if targets else 'none'}"
        )
    for section in ("stats", "runtime"):
        counters = status.get(section)
        if isinstance(counters, Mapping) and counters:
            lines.append(f"{section}:")
            lines.extend(_wrapped_counters(counters))
    if isinstance(sip, Mapping):
        for section in ("proxy", "transport", "replication"):
            counters = sip.get(section)
            if isinstance(counters, Mapping) and counters:
                lines.append(f"sip {section}:")
                lines.extend(_wrapped_counters(counters))
    if isinstance(dns, Mapping):
        for section in ("answers", "transport"):
            counters = dns.get(section)
            if isinstance(counters, Mapping) and counters:
                lines.append(f"dns {section}:")
                lines.extend(_wrapped_counters(counters))
    return "\n".join(lines) + "\n"


def _wrapped_counters(counters: Mapping[str, Any]) -> list[str]:
    items = "  ".join(f"{k}={v}" for k, v in sorted(counters.items()))
    wrapped = textwrap.wrap(items, width=96, break_on_hyphens=False, break_long_words=False)
    return [f"  {line}" for line in wrapped]


def format_cluster_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every member on one line: where it is, its state, health, whether its view matches
    ours, and the load it reports (from its gossiped summary)."""
    table = [["MEMBER", "DC", "STATE", "ROLES", "HEALTH", "VIEW", "SIP REQ", "BINDINGS",
              "FLOWS", "DNS Q", "UP"]]  # fmt: skip
    for row in rows:
        load = row.get("load") if isinstance(row.get("load"), Mapping) else None
        up = load.get("uptime") if load else None

        def n(key: str, load: Mapping[str, Any] | None = load) -> str:
            return "-" if not load or load.get(key) is None else str(load[key])

        table.append(
            [
                str(row.get("name")),
                str(row.get("dc")),
                str(row.get("state")),
                ",".join(map(str, row.get("roles") or [])) or "-",
                str(row.get("health", "?")),
                str(row.get("view", "?")),
                n("sip_requests"),
                n("bindings"),
                n("flows"),
                n("dns_queries"),
                _age(up) if isinstance(up, int) else "-",
            ]
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    out = ["cluster:"]
    out += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in table]  # fmt: skip
    return out


def format_status_json(status: Mapping[str, Any]) -> str:
    return json.dumps(status, indent=2) + "\n"


def format_location_text(reply: Mapping[str, Any]) -> str:
    """`swimthor location`: a line naming the AOR and its owners (and those that did not
    answer), then one line per binding. ON lists the owners holding its newest version, and
    marks one holding an older copy `:older`, one holding none `:missing`."""
    owners = [str(o) for o in reply.get("owners") or ()]
    head = f"{_text(reply.get('aor'))}  owners: {', '.join(owners) or 'none'}"
    unanswered = [str(o) for o in reply.get("unanswered") or ()]
    if unanswered:
        head += f"  (no answer from {', '.join(unanswered)})"
    bindings = [b for b in reply.get("bindings") or () if isinstance(b, Mapping)]
    if not bindings:
        return head + "\nno bindings\n"
    rows = [["CONTACT", "Q", "EXPIRES", "CALL-ID", "CSEQ", "INSTANCE", "REG-ID", "SOURCE",
             "EDGE", "FLOW", "ORIGIN", "ON", "USER-AGENT"]]  # fmt: skip
    for b in bindings:
        q = b.get("q")
        on = [str(n) for n in b.get("on") or ()]
        on += [f"{n}:older" for n in b.get("older") or ()]
        on += [f"{n}:missing" for n in b.get("missing") or ()]
        rows.append(
            [
                _text(b.get("contact")),
                f"{q:g}" if isinstance(q, int | float) else _text(q),
                _text(b.get("expires")),
                _text(b.get("call_id")),
                _text(b.get("cseq")),
                _text(str(b.get("instance") or "").strip('"')),
                _text(b.get("reg_id") or None),
                _text(b.get("source")),
                _text(b.get("edge") or None),
                _text(b.get("flow") or b.get("transport") or None),
                _text(b.get("origin")),
                ",".join(on) or "-",
                _text(b.get("user_agent")),
            ]
        )
    return head + "\n" + _columns(rows)


def format_keys_text(reply: Mapping[str, Any]) -> str:
    """One key id a line, the primary first and marked."""
    primary = reply.get("primary")
    keys = [k for k in reply.get("keys") or () if k != primary]
    rows = [[str(primary), "primary"]] if primary else []
    rows += [[str(k), ""] for k in keys]
    return _columns(rows) if rows else "no keys (plaintext cluster)\n"


# ---------------------------------------------------------------------- talking to agents


def _control_call(args: argparse.Namespace, cmd: str, params: dict[str, Any] | None) -> Any:
    try:
        from swimthor import control
    except ImportError:
        raise CommandError("the control client (swimthor.control) is not installed") from None
    path = args.control or control.default_control_path()
    return control.call(path, cmd, params, timeout=args.timeout)


def _query_via(args: argparse.Namespace, what: str) -> Any:
    import trio

    try:
        from swimthor.membership.runtime import query
    except ImportError:
        raise CommandError("--via needs swimthor.membership.runtime, not installed") from None
    keyring = client_keyring(args)
    return trio.run(query, args.via, what, keyring, args.label, args.timeout)


def _fetch(args: argparse.Namespace, what: str, params: dict[str, Any] | None) -> Any:
    if getattr(args, "via", None) is not None:
        return _query_via(args, what)
    return _control_call(args, what, params)


def _cmd_members(args: argparse.Namespace) -> int:
    params = {k: v for k in ("status", "dc", "role") if (v := getattr(args, k)) is not None}
    reply = _fetch(args, "members", params or None)
    if not isinstance(reply, list) or not all(isinstance(m, dict) for m in reply):
        raise CommandError("the agent sent an unexpected members reply")
    members = filter_members(reply, status=args.status, dc=args.dc, role=args.role)
    if args.format == "json":
        sys.stdout.write(format_members_json(members))
    else:
        sys.stdout.write(format_members_text(members, time.time()))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    import time as _time

    if args.watch is not None and not 0.2 <= args.watch <= 3600:
        raise CommandError("--watch needs 0.2 to 3600 seconds")
    try:
        while True:
            reply = _fetch(args, "status", None)
            if not isinstance(reply, dict):
                raise CommandError("the agent sent an unexpected status reply")
            text = format_status_json(reply) if args.format == "json" else format_status_text(reply)
            if args.watch is not None and sys.stdout.isatty():
                text = "\x1b[H\x1b[2J" + text  # in place: home, clear
            sys.stdout.write(text)
            sys.stdout.flush()
            if args.watch is None:
                return 0
            _time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def _route_via(args: argparse.Namespace) -> dict[str, Any]:
    """--via: the contract is the same on every node, so rank the live members that the
    remote agent reports here. No epoch: that is the remote table's own counter."""
    from swimthor.agent import route_reply
    from swimthor.membership import Member, State
    from swimthor.routing import RoutingTable

    reply = _query_via(args, "members")
    if not isinstance(reply, list) or not all(isinstance(m, dict) for m in reply):
        raise CommandError("the agent sent an unexpected members reply")
    members = []
    try:
        for m in reply:
            state = State[str(m["state"]).upper()]
            members.append(
                Member(
                    name=str(m["name"]),
                    addr=parse_hostport(str(m["addr"])),
                    dc=str(m["dc"]),
                    roles=tuple(str(x) for x in m.get("roles") or ()),
                    weight=float(m["weight"]),
                    tags={},
                    incarnation=int(m.get("incarnation", 0)),
                    state=state,
                    since=0.0,
                )
            )
    except (KeyError, ValueError, TypeError, ConfigError) as e:
        raise CommandError(f"the agent sent an unexpected member record ({e})") from None
    table = RoutingTable(roles=None)
    table.sync(members)
    out = route_reply(table, args.key, args.replicas, args.role, args.dc)
    out["epoch"] = None
    return out


def format_route_text(reply: Mapping[str, Any]) -> str:
    owners = reply.get("owners") or []
    epoch = reply.get("epoch")
    head = f"key {reply.get('key')}" + (f"  (routing epoch {epoch})" if epoch is not None else "")
    if not owners:
        return head + "\nno live member of that role owns it\n"
    rows = [["RANK", "NAME", "ADDRESS", "DC", "WEIGHT"]]
    for i, o in enumerate(owners, 1):
        rows.append(
            [
                str(i),
                _text(o.get("name")),
                _text(o.get("addr")),
                _text(o.get("dc")),
                _text(o.get("weight")),
            ]
        )
    return head + "\n" + _columns(rows)


def _cmd_route(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "via", None) is not None:
            reply = _route_via(args)
        else:
            params: dict[str, Any] = {"key": args.key, "replicas": args.replicas, "role": args.role}
            if args.dc is not None:
                params["dc"] = args.dc
            reply = _control_call(args, "route", params)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if not isinstance(reply, dict):
        raise CommandError("the agent sent an unexpected route reply")
    if args.format == "json":
        sys.stdout.write(json.dumps(reply, indent=2) + "\n")
    else:
        sys.stdout.write(format_route_text(reply))
    return 0


def _cmd_leave(args: argparse.Namespace) -> int:
    args.timeout = max(args.timeout, LEAVE_TIMEOUT)
    _control_call(args, "leave", None)
    print("left the cluster")
    return 0


def _cmd_meta(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"set": dict(args.tag), "unset": list(args.untag)}
    if args.role is not None:
        params["roles"] = list(args.role)
    if args.weight is not None:
        params["weight"] = args.weight
    if not (args.tag or args.untag or args.role is not None or args.weight is not None):
        raise UsageError("nothing to change: give --tag, --untag, --role or --weight")
    me = _control_call(args, "meta", params)
    print(format_members_text([me], time.time()))
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    print(Keyring.encode_key(Keyring.generate()))
    return 0


_KEY_DONE = {
    "install": "installed key {id} on {n} member(s)",
    "use": "key {id} is now the primary on {n} member(s)",
    "remove": "removed key {id} from {n} member(s)",
}


def _cmd_keys(args: argparse.Namespace) -> int:
    action = args.keys_command
    if action == "list":
        reply = _control_call(args, "keys.list", None)
        if not isinstance(reply, dict):
            raise CommandError("the agent sent an unexpected keys reply")
        text = format_keys_text(reply) if args.format == "text" else json.dumps(reply) + "\n"
        sys.stdout.write(text)
        return 0
    key = read_key_arg(args.key)
    reply = _control_call(args, f"keys.{action}", {"key": Keyring.encode_key(key)})
    if not isinstance(reply, dict):
        raise CommandError("the agent sent an unexpected keys reply")
    ok = list(reply.get("ok") or ())
    failed = dict(reply.get("failed") or {})
    print(_KEY_DONE[action].format(id=Keyring.key_id(key), n=len(ok)))
    if failed:
        detail = "; ".join(f"{name}: {err}" for name, err in sorted(failed.items()))
        raise CommandError(
            f"key {action} failed on {len(failed)} of {len(ok) + len(failed)} member(s): {detail}"
        )
    return 0


def _read_password(args: argparse.Namespace) -> str:
    if args.password is not None:
        return str(args.password)
    if args.password_file is not None:
        try:
            if args.password_file == "-":
                text = sys.stdin.readline()
            else:
                with open(args.password_file, encoding="utf-8") as f:
                    text = f.readline()
        except OSError as e:
            raise CommandError(f"cannot read {args.password_file}: {e.strerror or e}") from None
        password = text.rstrip("\r\n")
    else:
        import getpass

        try:
            password = getpass.getpass("password: ")
        except (EOFError, OSError):
            raise CommandError("no password given (--password-file FILE, or a terminal)") from None
    if not password:
        raise CommandError("the password is empty")
    return password


def format_event(event: Mapping[str, Any]) -> str:
    """One event as a line: time, what, then its fields."""
    import datetime

    when = datetime.datetime.fromtimestamp(float(event.get("time") or 0)).strftime("%H:%M:%S.%f")
    fields = "  ".join(
        f"{k}={v}" for k, v in event.items() if k not in ("seq", "time", "event") and v is not None
    )
    return f"{when[:-3]}  {event.get('event')}  {fields}".rstrip()


def _cmd_monitor(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {}
    if args.since is not None:
        if args.since < 0:
            raise CommandError("--since needs a number of seconds >= 0")
        params["since"] = args.since
    elif not args.once:
        params["since"] = 0  # from now on
    try:
        return _follow_events(args, params)
    except KeyboardInterrupt:
        return 0


def _follow_events(args: argparse.Namespace, params: dict[str, Any]) -> int:
    import time as _time

    last: int | None = None
    while True:
        query = dict(params) if last is None else {"after": last}
        reply = _control_call(args, "events", query)
        if not isinstance(reply, dict) or not isinstance(reply.get("events"), list):
            raise CommandError("the agent sent an unexpected events reply")
        for event in reply["events"]:
            if args.format == "json":
                sys.stdout.write(json.dumps(event) + "\n")
            else:
                sys.stdout.write(format_event(event) + "\n")
        sys.stdout.flush()
        last = int(reply.get("last") or 0)
        if args.once:
            return 0
        _time.sleep(0.5)


def _cmd_subscriber(args: argparse.Namespace) -> int:
    action = args.subscriber_command
    if action == "list":
        reply = _control_call(args, "subscriber.list", None)
        if not isinstance(reply, dict) or not isinstance(reply.get("subscribers"), list):
            raise CommandError("the agent sent an unexpected subscriber reply")
        if args.format == "json":
            sys.stdout.write(json.dumps(reply) + "\n")
        else:
            for aor in reply["subscribers"]:
                print(aor)
            if reply.get("unanswered"):
                print(
                    f"(no answer from {', '.join(map(str, reply['unanswered']))})", file=sys.stderr
                )
        return 0
    password = _read_password(args) if action == "add" else None
    reply = _control_call(args, "subscriber.set", {"aor": args.aor, "password": password})
    if not isinstance(reply, dict):
        raise CommandError("the agent sent an unexpected subscriber reply")
    verb = "removed" if reply.get("removed") else "stored"
    on = ", ".join(map(str, reply.get("on") or ()))
    print(f"{reply.get('aor')}: {verb} on {on}")
    return 0


def _check_aor_arg(text: str) -> None:
    """UsageError unless `text` is a SIP or SIPS URI with a user part (the agent then checks
    that its domain is one it serves)."""
    from swimthor.sip._grammar import parse_uri
    from swimthor.sip._registrar import aor_of

    try:
        uri = parse_uri(text.strip())
    except ValueError:
        raise UsageError(f"not a SIP address-of-record: {text!r}") from None
    if aor_of(uri) is None:
        raise UsageError(f"an address-of-record needs a user part, e.g. sip:alice@{uri.host}")


def _cmd_location(args: argparse.Namespace) -> int:
    _check_aor_arg(args.aor)
    if getattr(args, "via", None) is not None:
        import trio

        from swimthor.sip._replication import LocateError, locate_via

        keyring = client_keyring(args)
        try:
            reply = trio.run(locate_via, args.via, args.aor, keyring, args.label, args.timeout)
        except LocateError as e:
            raise CommandError(str(e)) from None
    else:
        reply = _control_call(args, "location", {"aor": args.aor})
    if not isinstance(reply, dict) or not isinstance(reply.get("bindings"), list):
        raise CommandError("the agent sent an unexpected location reply")
    if args.format == "json":
        sys.stdout.write(json.dumps(reply, indent=2) + "\n")
    else:
        sys.stdout.write(format_location_text(reply))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from swimthor.demo import run_demo

    return run_demo(
        nodes=args.nodes,
        profile=args.profile,
        duration=args.duration,
        insecure=args.insecure,
        chaos_every=args.chaos,
    )


def _cmd_simulate(args: argparse.Namespace) -> int:
    from swimthor.sim import run
    from swimthor.sim._cli import run_profiled, scenario_from_args

    try:
        scenario = scenario_from_args(args)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.cprofile:
        result, report = run_profiled(scenario, args.cprofile)
        sys.stderr.write(report)
    else:
        result = run(scenario)
    if args.format == "json":
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.to_text())
    return 0


# ---------------------------------------------------------------------- join


def _configure_logging(cfg: AgentConfig) -> None:
    try:
        from swimthor import log
    except ImportError:
        return
    log.configure(cfg.log_format, cfg.log_level)


def _unspecified(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")


def _guess_local_ip() -> str:
    """The address this host would send from (no packet is sent), for the join hint."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: routing lookup only
        return str(s.getsockname()[0])
    return "THIS-HOST"


def _advertised(agent: Agent, cfg: AgentConfig) -> tuple[str, int]:
    addr: Any = None
    core = getattr(agent, "core", None)
    local = getattr(core, "local", None)
    addr = getattr(local, "addr", None) or cfg.advertise or getattr(agent, "bound_addr", None)
    if not (isinstance(addr, tuple) and len(addr) == 2):
        addr = cfg.bind
    host, port = str(addr[0]), int(addr[1])
    return (_guess_local_ip() if _unspecified(host) else host), port


def join_hint(
    key_path: Path, advertise: tuple[str, int], keyring: Keyring, cfg: AgentConfig
) -> str:
    """How another host joins the cluster this agent just created (printed to stderr)."""
    extra = ""
    if cfg.label:
        extra += f" --label {cfg.label}"
    if cfg.profile != "lan":
        extra += f" --profile {cfg.profile}"
    return (
        f"{PROG}: started a new sealed cluster; its key (id {Keyring.key_id(keyring.primary)}) "
        f"is in {key_path}\n"
        f"{PROG}: to add a host, copy that file to it (keep it mode 0600) and run there:\n"
        f"{PROG}:   {PROG} join --key-file {key_path}{extra} {format_hostport(advertise)}\n"
        f"{PROG}: (a file holding just the base64 key works too, e.g. one written by "
        f"'{PROG} keygen'; the key is the \"primary\" value in {KEYRING_FILE})\n"
    )


def _cmd_join(args: argparse.Namespace) -> int:
    import trio

    cfg = build_agent_config(args)
    keyring, created = resolve_keyring(cfg)
    assert cfg.data_dir is not None
    _make_private_dir(Path(cfg.data_dir))
    _configure_logging(cfg)
    try:
        from swimthor.agent import Agent
    except ImportError:
        raise CommandError("the agent (swimthor.agent) is not installed") from None
    agent = Agent(cfg, keyring=keyring)

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            if created is not None and keyring is not None:
                sys.stderr.write(join_hint(created, _advertised(agent, cfg), keyring, cfg))
                sys.stderr.flush()

    try:
        trio.run(serve)
    except OSError as e:
        raise _bind_error(e, cfg) from None
    except BaseExceptionGroup as group:
        leaf = _first_leaf(group)
        if isinstance(leaf, OSError):
            raise _bind_error(leaf, cfg) from None
        raise
    return 0


def _bind_error(e: OSError, cfg: AgentConfig) -> Exception:
    """A one-line error for a failed bind (the runtime's BindError already is one)."""
    if e.strerror is None:
        return e
    if e.errno == errno.EADDRINUSE:
        return CommandError(f"cannot bind {format_hostport(cfg.bind)}: address already in use")
    if e.errno == errno.EADDRNOTAVAIL:
        return CommandError(f"cannot bind {format_hostport(cfg.bind)}: address not available")
    return e


# ---------------------------------------------------------------------- main


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "join": _cmd_join,
    "members": _cmd_members,
    "route": _cmd_route,
    "status": _cmd_status,
    "leave": _cmd_leave,
    "meta": _cmd_meta,
    "keygen": _cmd_keygen,
    "keys": _cmd_keys,
    "subscriber": _cmd_subscriber,
    "location": _cmd_location,
    "monitor": _cmd_monitor,
    "demo": _cmd_demo,
    "simulate": _cmd_simulate,
}


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception in a (nested) group that is not a cancellation."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for leaf in leaves:
        if isinstance(leaf, KeyboardInterrupt):
            return leaf
    for leaf in leaves:
        if type(leaf).__name__ != "Cancelled":
            return leaf
    return leaves[0] if leaves else group


def _runtime_errors() -> tuple[type[BaseException], ...]:
    """Errors reported as one line with exit status 1 (the ones whose modules exist)."""
    kinds: list[type[BaseException]] = [CommandError, KeyringFileError, OSError, ValueError]
    with contextlib.suppress(ImportError):
        from swimthor.control import ControlError

        kinds.append(ControlError)
    with contextlib.suppress(ImportError):
        from swimthor.membership.runtime import QueryError

        kinds.append(QueryError)
    with contextlib.suppress(ImportError):
        from swimthor.membership import QueryError as CoreQueryError

        kinds.append(CoreQueryError)
    return tuple(kinds)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        text = f"{where}{exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def _report(exc: BaseException) -> int:
    """Exit status for `exc` after writing its one line to stderr; re-raise what is a bug."""
    if isinstance(exc, BaseExceptionGroup):
        exc = _first_leaf(exc)
    if isinstance(exc, SystemExit):  # --help
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, BrokenPipeError):  # `swimthor members | head`: the reader is gone
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 1
    if isinstance(exc, UsageError | ConfigError):
        status = 2
    elif isinstance(exc, _runtime_errors()):
        status = 1
    else:
        raise exc
    sys.stderr.write(f"{PROG}: error: {_one_line(exc)}\n")
    return status


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default sys.argv[1:]); returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        return _COMMANDS[args.command](args)
    except BaseException as exc:
        return _report(exc)
