"""The argparse side of the command line: the parser with every subcommand and flag, and the
argument types that check a value as it is parsed (HOST:PORT with its default port, TTL,
rates, weights ...). A wrong command line raises UsageError instead of exiting."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn

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
    ConfigError,
    parse_hostport,
    parse_tag,
)

from ._config import LOG_FORMATS, LOG_LEVELS
from ._errors import PROG, UsageError
from ._format import STATES

DEFAULT_TIMEOUT = 10.0


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
        "--zone",
        help="failure domain below the datacenter (a rack, a host): a key's owners are spread"
        " over datacenters, then zones (default none)",
    )
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
    sm.add_argument("--sealed", action="store_true",
                    help="seal every packet with a cluster key, as a cluster without "
                         "--insecure does (nonces from the seed)")  # fmt: skip
    sm.add_argument("--warmup", metavar="MAX", help="longest warm-up (default 60s)")
    sm.add_argument("--slow-delay", metavar="LO,HI", help="slow-node delay (default 0.5,2.5)")
    sm.add_argument("--cprofile", type=int, metavar="N", help="print the top N functions")
    sm.add_argument("--format", choices=("text", "json"), default="text")
    return parser
