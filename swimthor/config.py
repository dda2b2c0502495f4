"""Every default in one place: the membership profiles, and the agent's settings.

Profile numbers are set next to hashicorp/memberlist's (`config.go`: DefaultLANConfig,
DefaultWANConfig, DefaultLocalConfig); where ours differ the comment says why.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_GOSSIP_PORT = 7946


@dataclass(frozen=True, slots=True)
class MembershipConfig:
    """Tunables of the SWIM core. All times are seconds."""

    # Time between failure probes of one member each. memberlist LAN 1 s, WAN 5 s, local 1 s.
    probe_interval: float = 1.0
    # Wait for a direct ack before asking others (ping-req). memberlist LAN 500 ms.
    probe_timeout: float = 0.5
    # How many members relay a ping-req. memberlist LAN 3.
    indirect_checks: int = 3
    # Updates are retransmitted retransmit_mult * ceil(log10(n + 1)) times. memberlist LAN 4.
    retransmit_mult: int = 4
    # Suspicion min timeout = suspicion_mult * log10(max(1, n)) * probe_interval. memberlist LAN 4.
    suspicion_mult: float = 4.0
    # Suspicion max timeout = suspicion_max_timeout_mult * min timeout. memberlist 6.
    suspicion_max_timeout_mult: float = 6.0
    # Gossip tick and fan-out. memberlist LAN 200 ms and 3.
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    # Keep gossiping to members declared dead this long so they can refute. memberlist LAN 30 s.
    gossip_to_dead_time: float = 30.0
    # Full-state TCP sync, scaled up with cluster size above 32 members. memberlist LAN 30 s.
    push_pull_interval: float = 30.0
    # TCP connect+exchange limit for push-pull and queries. memberlist LAN 10 s.
    tcp_timeout: float = 10.0
    # Lifeguard local health multiplier cap. memberlist 8.
    awareness_max_multiplier: int = 8
    # Largest datagram we send. memberlist UDPBufferSize 1400.
    max_packet_size: int = 1400
    # Dead and left members are forgotten after this. memberlist has no reaping of its own
    # (serf reaps after 24 h); we keep 1 h so a long partition heals with names remembered.
    tombstone_reap_time: float = 3600.0
    # Join: retry with exponential backoff while no seed answers.
    join_retry_initial: float = 1.0
    join_retry_max: float = 30.0
    # Not in memberlist: a member that hears a suspicion pings the suspect itself, so
    # independent confirmations arrive within a round trip instead of a protocol period.
    suspect_check: bool = True
    # Not in memberlist: how many independent confirmations shrink a suspicion to its minimum.
    # None: memberlist's rule, suspicion_mult - 2 (0 when the cluster is smaller than that + 2).
    suspicion_confirmations: int | None = None
    # Not in memberlist: the suspicion minimum is never below this many seconds, whatever the
    # cluster size. It is the time a live but slow suspect has to hear of the suspicion and
    # refute it (a member reading its packets 2.5 s late needs about 3 s).
    suspicion_min_floor: float = 0.0
    # Not in memberlist: a member whose own health score reaches this announces that it is
    # slow (an alive with its score); others then give it (1 + min(score, 3)) times longer to
    # refute a suspicion. It announces that it is healthy again after `health_dwell` seconds
    # at score 0. 0 turns the announcements off.
    health_announce_score: int = 2
    health_dwell: float = 10.0
    # Not in memberlist: how many times longer than the normal suspicion a member that said
    # it is slow, or refuted recently, gets at most (health and refutations together). A
    # deaf member looks slow to itself; left uncapped, the cluster waited 4 to 6 times the
    # suspicion for it.
    suspicion_patience_max: float = 2.0
    # Not in memberlist: a member whose last `isolation_probes` probes went wholly unanswered
    # (no ack, not one relay's nack) and that received nothing at all meanwhile, while
    # others are live, is isolated: it cannot hear, so it keeps what it concludes to itself
    # (its suspicions and declarations of others are not gossiped), does not announce
    # itself slow, and resyncs as soon as it hears again. 0 turns it off.
    isolation_probes: int = 2
    # Not in memberlist: a probe none of whose relays answered, not even with a nack, says
    # more about us (deaf, or cut off) than about the target: it raises no suspicion, only
    # our health score. memberlist suspects the target anyway (True).
    silent_relays_suspect: bool = False
    # Not in memberlist: only an alive that answers the suspicion in force (its sender heard
    # it) clears it; a newer alive that answers none (a deaf member changing its tags) is
    # taken, and the suspicion runs on. memberlist clears it on any newer alive (False).
    strict_refutation: bool = True
    # Not in memberlist (ringpop and BGP have it): flap damping. Each declaration of a member
    # adds 1 to its penalty, each suspicion it refuted `flap_suspicion_weight`, and the
    # penalty halves every `flap_half_life` seconds; at `flap_suppress` the
    # member is held out of routing and DNS (membership still tracks it, and its suspicions
    # run at least `flap_well` seconds), until the penalty is below `flap_reuse` and it has
    # been alive, unsuspected, for `flap_well` seconds. A half-life of 0 turns it off.
    flap_half_life: float = 30.0
    flap_suspicion_weight: float = 0.5
    flap_suppress: float = 1.25
    flap_reuse: float = 0.5
    flap_well: float = 30.0
    # Not in memberlist: a member that refuted a suspicion of itself in the last
    # `refutation_memory` seconds gets (1 + refutations, at most 2) more suspicion time.
    refutation_memory: float = 60.0
    # Not in memberlist: at most this many members (on average) check a suspect themselves;
    # each member checks with probability min(1, suspect_checkers / members).
    suspect_checkers: int = 8
    # Not in memberlist: "shared" probes on a schedule every member computes alike: rounds
    # aligned to the clock, and in round r each member probes the member r+1 places after it
    # on a hash ring of the live members, so every member is probed about once a round and a
    # crash is first noticed within a round or two (SWIM's independent random order leaves a
    # member unprobed for 4.6 rounds in 1% of cases). "random": SWIM's randomized round-robin.
    probe_schedule: str = "random"
    # Not in memberlist: probe timeout toward another datacenter is at least this many
    # measured round trips to it, so a far datacenter is not suspected for being far.
    remote_timeout_rtt_mult: float = 3.0
    # Not in memberlist: at least this many gossip targets per tick lie in another datacenter.
    cross_dc_gossip_nodes: int = 1
    # Not in memberlist: final check. A suspicion that runs out with fewer confirmations than
    # it asked for is one member's word alone; that member first asks the suspect itself
    # (the suspicion with a ping, answered by a direct refutation) and declares it only if
    # that goes unanswered for max(probe timeout, probe interval). An answer that is not
    # followed by the refutation is asked again. Confirmed suspicions (real crashes in any
    # cluster above a handful of members) are declared at once, as before.
    suspect_final_check: bool = True
    # Not in memberlist (serf's reconnect, every 30 s there): every `reconnect_interval`
    # seconds a full sync with one member declared failed (with probability failed / live),
    # so the two sides of a healed partition find each other. 0 turns it off.
    reconnect_interval: float = 10.0
    # Not in memberlist: repair sync. Every ack carries the responder's view summary (its
    # digest and how many live members it sees). A member that keeps hearing that others see
    # more live members than it does, for `repair_settle` seconds without its own view
    # changing, syncs (push-pull) with the one it just heard from, at most once every
    # `repair_interval` seconds. Gossip that missed a member (a crowd joining at once, a
    # lost retransmission) is then repaired within seconds instead of at the next periodic
    # push-pull (minutes in a large cluster). 0 turns it off.
    repair_settle: float = 2.0
    repair_interval: float = 5.0
    # Leave: how long to wait for the leave broadcast to go out before exiting anyway.
    leave_propagate_time: float = 1.0
    # Largest push-pull or query stream frame accepted.
    max_stream_size: int = 8 * 1024 * 1024
    # Bounded metadata: at most this many tags, each key and value at most this many bytes.
    max_tags: int = 32
    max_tag_bytes: int = 256
    # Inbound datagram queue in the runtime; further packets are dropped and counted.
    inbound_queue_size: int = 1024


PROFILES: dict[str, MembershipConfig] = {
    # memberlist DefaultLANConfig's probe interval, gossip and push-pull (so the same load at
    # steady state), with the mechanisms tuned by the simulator suite (bench/suite.py):
    # probes on the shared schedule, a 300 ms probe timeout (memberlist 500 ms; the indirect
    # phase ends when the relays' answers are due, not at the end of the interval),
    # suspicion minimum 1.5 x log10(n) x interval but at least 3.5 s (memberlist: 4 x, which
    # is 8 s at 100 members), three confirmations. At 100 members with 1% loss a crash is
    # known everywhere in about 5 s (memberlist about 10 s), with no false failure in
    # kinship's Lifeguard grid (bench/results/REPORT.md).
    "lan": MembershipConfig(
        probe_timeout=0.3,
        suspicion_mult=1.5,
        suspicion_min_floor=3.5,
        suspicion_confirmations=3,
        probe_schedule="shared",
    ),
    # hashicorp/memberlist's DefaultLANConfig as it is, for comparison runs.
    "memberlist-lan": MembershipConfig(
        suspect_check=False,
        suspect_final_check=False,
        repair_settle=0.0,
        reconnect_interval=0.0,
        health_announce_score=0,
        refutation_memory=0.0,
        remote_timeout_rtt_mult=0.0,
        cross_dc_gossip_nodes=0,
        isolation_probes=0,
        silent_relays_suspect=True,
        strict_refutation=False,
        flap_half_life=0.0,
    ),
    # memberlist DefaultWANConfig: 5 s probes, 3 s timeout, suspicion mult 6, fan-out 4.
    "wan": MembershipConfig(
        probe_interval=5.0,
        probe_timeout=3.0,
        suspicion_mult=6.0,
        gossip_interval=0.5,
        gossip_nodes=4,
        gossip_to_dead_time=60.0,
        push_pull_interval=60.0,
        tcp_timeout=30.0,
        reconnect_interval=30.0,
    ),
    # memberlist DefaultLocalConfig probes every 1 s with a 200 ms timeout and takes several
    # seconds to declare a failure. On one host or a rack, round trips are well under a
    # millisecond, so we probe every 150 ms with an 80 ms timeout and gossip every 50 ms: a
    # dead member is declared in about a second, for about 15 small datagrams a second per
    # node. Suspicion multiplier 4 (memberlist local: 3): min timeout 0.6 s and two
    # independent confirmations, which suspect checks bring within a round trip. Retransmit
    # multiplier 4 (memberlist local: 2): with 2 or 3 a join or a failure missed a member of a
    # small cluster in about 1 of 30 simulated runs until the next push-pull.
    "local": MembershipConfig(
        # The shared schedule (see `lan`): simulated 20-member clusters on one host detect a
        # crash everywhere in 1.25 s at worst instead of 1.52 s, for 2% more datagrams.
        probe_schedule="shared",
        probe_interval=0.15,
        probe_timeout=0.08,
        indirect_checks=2,
        retransmit_mult=4,
        suspicion_mult=4.0,
        gossip_interval=0.05,
        gossip_nodes=3,
        gossip_to_dead_time=15.0,
        push_pull_interval=15.0,
        tcp_timeout=2.0,
        reconnect_interval=2.0,
        join_retry_initial=0.2,
        join_retry_max=5.0,
        leave_propagate_time=0.5,
    ),
}


def profile(name: str) -> MembershipConfig:
    """The named profile, or ValueError naming the ones that exist."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown profile {name!r} (choose from {', '.join(sorted(PROFILES))})"
        ) from None


class ConfigError(ValueError):
    """A configuration file or flag is wrong; the message says which and why."""


DEFAULT_SIP_PORT = 5060
DEFAULT_SIPS_PORT = 5061  # RFC 3261 §26.2: SIP over TLS
DEFAULT_WS_PORT = 80  # RFC 6455 §3: ws and wss URIs' defaults
DEFAULT_WSS_PORT = 443
TLS_VERIFY_CLIENT = ("none", "optional", "required")


@dataclass(slots=True)
class SipConfig:
    """The SIP front-end of an agent with the role ``sip`` (RFC 3261 registrar and proxy)."""

    # Where SIP listens (UDP and TCP on the same port); RFC 3261 §18: 5060 by default.
    bind: tuple[str, int] = ("0.0.0.0", DEFAULT_SIP_PORT)
    # The host phones and other nodes reach this node's SIP port at (default: the gossip
    # advertise host).
    advertise_host: str | None = None
    # Domains whose addresses-of-record this cluster registers and routes.
    domains: list[str] = field(default_factory=list)
    # R: how many owners hold each address-of-record's bindings (ARCHITECTURE.md).
    replicas: int = 2
    # RFC 3261 §10.2.1.1: 3600 s when the UA asks nothing. §10.3 step 7 lets the registrar
    # set a floor (423 Interval Too Brief; 60 s is Kamailio's registrar min_expires default)
    # and a ceiling (2 h, so a phone that vanished does not linger longer than that).
    default_expires: int = 3600
    min_expires: int = 60
    max_expires: int = 7200
    max_contacts: int = 10
    # Binding copies (and subscriber records) one node holds; beyond, a REGISTER that would
    # add one is 503 Registrar Full. About 700 bytes of memory each (bench/sip/scale.py).
    max_bindings: int = 2_000_000
    # How long one attempt waits for an owner (or stand-in) to confirm a REGISTER's write.
    replication_timeout: float = 0.5
    # How long a REGISTER keeps trying (the owners that did not confirm, again, and stand-ins
    # ranked afresh) before it is answered 503: past the lan profile's failure detection, so
    # a dead owner is replaced by its next in rank, and a peer stalled a few seconds (GC, a
    # starved host) is waited for; well inside the phone's 32 s timer F.
    replication_deadline: float = 8.0
    # Anti-entropy between co-owners (seconds, jittered +-50%).
    repair_interval: float = 30.0
    # TCP: connections open at once, idle close, time to finish one message (slowloris).
    max_connections: int = 1024
    tcp_idle: float = 300.0
    tcp_message_time: float = 10.0
    # Flood guard (pike-like): requests a second per source address, and the burst it may
    # reach; 0 turns it off. The cluster's own members and `rate_exempt` networks (an edge
    # proxy or SBC that carries many phones) are never limited. A phone sends a few requests
    # a minute; 100/s is a misbehaving or hostile source.
    rate_limit: float = 100.0
    rate_burst: float = 300.0
    rate_exempt: list[str] = field(default_factory=list)
    # Digest authentication (RFC 3261 §22, RFC 8760): REGISTER, and INVITE from outside the
    # cluster by one of our users, must carry a subscriber's credentials (`swimthor
    # subscriber add`). Off only for demos and tests (--sip-auth off).
    auth: bool = True
    # The challenges offered, in order of preference (RFC 8760): SHA-256 first. Clients that
    # read only the first challenge and know only MD5 (sipp 3.6, older phones) need MD5 first.
    auth_algorithms: list[str] = field(default_factory=lambda: ["SHA-256", "MD5"])
    # Forking (RFC 3261 §16.6): a call rings every device of the AOR; devices of equal q ring
    # together, lower q only after the higher group failed or rang this long with no answer
    # (Kamailio's serial forking uses fr_inv_timer for this; 30 s is about six rings). The
    # last group rings until timer C (§16.6 step 11: more than 3 minutes).
    fork_timeout: float = 30.0
    # The edge pings each phone behind NAT on UDP it holds the flow of with OPTIONS this
    # often (0: never), and after this many unanswered in a row has its binding removed.
    keepalive_interval: float = 30.0
    keepalive_misses: int = 3
    # SIP over TLS (RFC 3261 §26, `sips:`) and over WebSocket (RFC 7118: ws, and wss on
    # TLS), each on a TCP port of its own; None: not offered. TLS and WSS present `tls_cert`
    # (PEM, the chain) with `tls_key`; `tls_verify_client` asks phones for a certificate
    # ("optional": checked when sent) or demands one ("required"), checked against `tls_ca`
    # (else the system's roots), which also checks the servers we connect to over TLS.
    tls_bind: tuple[str, int] | None = None
    ws_bind: tuple[str, int] | None = None
    wss_bind: tuple[str, int] | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    tls_verify_client: str = "none"
    # Seconds a new TLS or WebSocket connection has to finish its handshakes.
    handshake_time: float = 5.0
    # The web origins ("https://app.example.com") whose pages may open a WebSocket to us;
    # empty: any. Browsers send Origin with every upgrade: with a list, another site's page
    # cannot use its visitors' browsers to talk SIP to the cluster (RFC 6455 §10.2).
    ws_origins: list[str] = field(default_factory=list)


_SIP_KEYS: dict[str, type | tuple[type, ...]] = {
    "bind": str,
    "advertise_host": str,
    "domains": list,
    "replicas": int,
    "default_expires": int,
    "min_expires": int,
    "max_expires": int,
    "max_contacts": int,
    "max_bindings": int,
    "replication_timeout": (int, float),
    "replication_deadline": (int, float),
    "repair_interval": (int, float),
    "max_connections": int,
    "tcp_idle": (int, float),
    "tcp_message_time": (int, float),
    "rate_limit": (int, float),
    "rate_burst": (int, float),
    "rate_exempt": list,
    "auth": bool,
    "fork_timeout": (int, float),
    "auth_algorithms": list,
    "keepalive_interval": (int, float),
    "keepalive_misses": int,
    "tls_bind": str,
    "ws_bind": str,
    "wss_bind": str,
    "tls_cert": str,
    "tls_key": str,
    "tls_ca": str,
    "tls_verify_client": str,
    "handshake_time": (int, float),
    "ws_origins": list,
}


def check_sip(cfg: SipConfig) -> None:
    """ConfigError naming the setting when SIP settings cannot work together."""
    if not cfg.domains:
        raise ConfigError("sip: at least one --domain is needed")
    for d in cfg.domains:
        if not d or any(c.isspace() or c in "@;:/<>" for c in d):
            raise ConfigError(f"sip: bad domain {d!r}")
    if not 1 <= cfg.replicas <= 16:
        raise ConfigError("sip: replicas must be within 1..16")
    if not 1 <= cfg.min_expires <= cfg.default_expires <= cfg.max_expires:
        raise ConfigError("sip: need 1 <= min_expires <= default_expires <= max_expires")
    if cfg.max_contacts < 1:
        raise ConfigError("sip: max_contacts must be >= 1")
    if cfg.advertise_host is not None:
        host = cfg.advertise_host
        if (
            not host
            or host in ("0.0.0.0", "::")
            or any(c.isspace() or c in "@;/<>[]," for c in host)
            or (host.count(":") == 1)
        ):
            raise ConfigError(
                f"sip: bad advertise host {host!r} (a host name or an IP address that "
                "phones and other nodes can reach, without a port)"
            )
    for name in (
        "replication_timeout",
        "replication_deadline",
        "repair_interval",
        "tcp_idle",
        "tcp_message_time",
        "fork_timeout",
        "handshake_time",
    ):
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"sip: {name} must be > 0")
    if not cfg.replication_timeout <= cfg.replication_deadline <= 30:
        raise ConfigError(
            "sip: replication_deadline must be from replication_timeout to 30 seconds "
            "(a phone gives up on a REGISTER after 32 s)"
        )
    if cfg.max_connections < 1:
        raise ConfigError("sip: max_connections must be >= 1")
    if not 1 <= cfg.max_bindings <= 100_000_000:
        raise ConfigError("sip: max_bindings must be from 1 to 100,000,000")
    interval = cfg.keepalive_interval
    if not (interval == 0 or 1 <= interval <= 3600) or interval != interval:
        raise ConfigError("sip: keepalive_interval must be 0 (off) or 1 to 3600 seconds")
    if not 1 <= cfg.keepalive_misses <= 100:
        raise ConfigError("sip: keepalive_misses must be within 1..100")
    _check_rate("sip", cfg.rate_limit, cfg.rate_burst, cfg.rate_exempt)
    _check_sip_streams(cfg)
    algorithms = cfg.auth_algorithms
    if (
        not algorithms
        or len(set(algorithms)) != len(algorithms)
        or not all(a in ("SHA-256", "MD5") for a in algorithms)
    ):
        raise ConfigError('sip: auth_algorithms is a list of "SHA-256" and/or "MD5", no repeats')


def _check_sip_streams(cfg: SipConfig) -> None:
    """TLS and WebSocket: distinct ports, and for TLS and WSS a certificate and key that
    load together (read here, so a bad file stops the agent at start with its name)."""
    binds = [("--sip", cfg.bind)] + [
        (flag, bind)
        for flag, bind in (
            ("--sip-tls", cfg.tls_bind),
            ("--sip-ws", cfg.ws_bind),
            ("--sip-wss", cfg.wss_bind),
        )
        if bind is not None
    ]
    ports = [bind[1] for _flag, bind in binds if bind[1] != 0]
    if len(ports) != len(set(ports)):
        raise ConfigError(
            "sip: "
            + ", ".join(f"{flag} {format_hostport(b)}" for flag, b in binds)
            + ": each transport needs a port of its own"
        )
    for origin in cfg.ws_origins:
        if (
            not isinstance(origin, str)
            or "://" not in origin
            or any(c.isspace() or c in ',<>"' for c in origin)
        ):
            raise ConfigError(
                f"sip: bad WebSocket origin {origin!r} (scheme://host[:port], as browsers "
                "send it, e.g. https://app.example.com)"
            )
    if cfg.tls_verify_client not in TLS_VERIFY_CLIENT:
        raise ConfigError(
            f"sip: tls_verify_client is one of {', '.join(TLS_VERIFY_CLIENT)}, "
            f"not {cfg.tls_verify_client!r}"
        )
    if cfg.tls_bind is None and cfg.wss_bind is None:
        return
    if not cfg.tls_cert or not cfg.tls_key:
        raise ConfigError(
            "sip: TLS and WSS need a certificate and its key (--sip-tls-cert, --sip-tls-key)"
        )
    import ssl

    try:
        tls_context(cfg)
    except (OSError, ssl.SSLError, ValueError) as e:
        detail = getattr(e, "strerror", None) or getattr(e, "reason", None) or str(e)
        raise ConfigError(
            f"sip: cannot use certificate {cfg.tls_cert} with key {cfg.tls_key}"
            + (f" and CA {cfg.tls_ca}" if cfg.tls_ca else "")
            + f": {detail}"
        ) from None


def tls_context(cfg: SipConfig) -> Any:
    """The server's TLS context for `cfg` (an ssl.SSLContext), from its files."""
    from .sip import TlsFiles, server_tls_context

    assert cfg.tls_cert is not None and cfg.tls_key is not None
    return server_tls_context(
        TlsFiles(cfg.tls_cert, cfg.tls_key, cfg.tls_ca, cfg.tls_verify_client)
    )


def _check_rate(what: str, rate: float, burst: float, exempt: list[str]) -> None:
    from .ratelimit import RateLimit

    if not all(isinstance(n, str) for n in exempt):
        raise ConfigError(f"{what}: rate_exempt must be a list of networks (CIDR strings)")
    try:
        RateLimit(rate, burst, tuple(exempt)).check(what)
    except ValueError as e:
        raise ConfigError(str(e)) from None


DEFAULT_METRICS_PORT = 9464  # Prometheus' default port for exporters of this kind
DEFAULT_DNS_PORT = 8053  # not 53, so no root is needed (docs/dns.md: how to serve on 53)


@dataclass(slots=True)
class DnsConfig:
    """The DNS front-end: an authoritative server for the cluster's zone (RFC 3263)."""

    # Where DNS listens (UDP and TCP on the same port).
    bind: tuple[str, int] = ("0.0.0.0", DEFAULT_DNS_PORT)
    # The host clients reach this name server at (default: the gossip advertise host).
    advertise_host: str | None = None
    # The zone; None: the first SIP domain.
    zone: str | None = None
    # TTL of every record, and the SOA minimum (how long NXDOMAIN is cached). Short, so a
    # failed node leaves resolvers' caches soon after it leaves the answers.
    ttl: int = 5
    # TCP (RFC 7766): connections open at once, and seconds a connection may idle.
    max_connections: int = 256
    tcp_idle: float = 10.0
    # Flood guard: queries a second per source address (0: off), and the burst. A resolver
    # asks once per TTL per name; 1000/s from one address is a flood (or a resolver farm to
    # put in `rate_exempt`).
    rate_limit: float = 1000.0
    rate_burst: float = 2000.0
    rate_exempt: list[str] = field(default_factory=list)


_DNS_KEYS: dict[str, type | tuple[type, ...]] = {
    "bind": str,
    "advertise_host": str,
    "zone": str,
    "ttl": int,
    "max_connections": int,
    "tcp_idle": (int, float),
    "rate_limit": (int, float),
    "rate_burst": (int, float),
    "rate_exempt": list,
}


def check_dns(cfg: DnsConfig, sip: SipConfig | None) -> None:
    """Fill in the zone (the first SIP domain) and check the settings; ConfigError naming the
    setting otherwise."""
    if cfg.zone is None:
        if sip is None or not sip.domains:
            raise ConfigError("dns: --dns-zone is needed when this agent serves no --domain")
        cfg.zone = sip.domains[0]
    zone = cfg.zone.strip().rstrip(".").lower()
    labels = zone.split(".")
    if (
        not zone
        or len(zone) > 200
        or not all(0 < len(label) < 64 for label in labels)
        or not all(c.isascii() and (c.isalnum() or c in "-_") for c in zone.replace(".", ""))
    ):
        raise ConfigError(f"dns: bad zone {cfg.zone!r} (a domain name, e.g. example.com)")
    cfg.zone = zone
    if not 0 <= cfg.ttl <= 86_400:
        raise ConfigError("dns: ttl must be within 0..86400 seconds")
    if cfg.max_connections < 1:
        raise ConfigError("dns: max_connections must be >= 1")
    if not cfg.tcp_idle > 0:
        raise ConfigError("dns: tcp_idle must be > 0")
    _check_rate("dns", cfg.rate_limit, cfg.rate_burst, cfg.rate_exempt)


def dns_from_toml(table: dict[str, object], base: DnsConfig | None) -> DnsConfig:
    dns = dataclasses.replace(base) if base is not None else DnsConfig()
    for key, value in _checked_table(table, _DNS_KEYS, "dns"):
        if key == "bind" and isinstance(value, str):
            dns.bind = parse_hostport(value, DEFAULT_DNS_PORT)
        else:
            _set_number_or_value(dns, key, value)
    return dns


def _checked_table(
    table: dict[str, object], keys: dict[str, type | tuple[type, ...]], name: str
) -> list[tuple[str, object]]:
    """The (key, value) pairs of a front-end's TOML table ([sip], [dns]) once every key is
    known and every value has its type; ConfigError naming the first that does not."""
    for key, value in table.items():
        want = keys.get(key)
        if want is None:
            raise ConfigError(
                f"[{name}]: unknown setting {key!r} (known: {', '.join(sorted(keys))})"
            )
        if not isinstance(value, want) or (isinstance(value, bool) and want is not bool):
            raise ConfigError(f"[{name}]: {key!r} has the wrong type")
    return list(table.items())


def _set_number_or_value(cfg: object, key: str, value: object) -> None:
    """A float setting keeps its type when the file gives a whole number."""
    if isinstance(getattr(cfg, key), float) and isinstance(value, int | float):
        setattr(cfg, key, float(value))
    else:
        setattr(cfg, key, value)


@dataclass(slots=True)
class AgentConfig:
    """Everything `swimthor join` needs. Built from defaults, then a TOML file, then flags."""

    name: str = ""
    bind: tuple[str, int] = ("0.0.0.0", DEFAULT_GOSSIP_PORT)
    advertise: tuple[str, int] | None = None
    seeds: list[tuple[str, int]] = field(default_factory=list)
    dc: str = "dc1"
    # The failure domain below the datacenter (a rack, a host; "" none): owners of a key are
    # spread over datacenters, then zones (swimthor.routing). Gossiped as the `zone` tag.
    zone: str = ""
    roles: list[str] = field(default_factory=list)
    weight: float = 1.0
    tags: dict[str, str] = field(default_factory=dict)
    profile: str = "lan"
    key_file: str | None = None
    insecure: bool = False
    label: str = ""
    control: str | None = None
    data_dir: str | None = None
    log_format: str = "auto"
    log_level: str = "info"
    # Per-setting overrides of the profile, from the TOML file's [membership] table.
    membership_overrides: dict[str, Any] = field(default_factory=dict)
    # The SIP front-end; None: this agent serves no SIP (it still gossips and routes).
    sip: SipConfig | None = None
    # The DNS front-end; None: this agent answers no DNS.
    dns: DnsConfig | None = None
    # Prometheus metrics (GET /metrics); None: not served.
    metrics: tuple[str, int] | None = None

    def membership(self) -> MembershipConfig:
        return dataclasses.replace(profile(self.profile), **self.membership_overrides)


def check_membership_overrides(table: Any, where: str = "[membership]") -> dict[str, Any]:
    """Validate a table of MembershipConfig overrides: known names, the field's type, and
    positive values (booleans excepted); ConfigError naming the setting otherwise."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    fields = {f.name: f for f in dataclasses.fields(MembershipConfig)}
    defaults = MembershipConfig()
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(
                f"{where}: unknown setting {key!r} (known: {', '.join(sorted(fields))})"
            )
        default = getattr(defaults, key)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: {key!r} must be true or false")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}: {key!r} must be a whole number >= 1")
        else:
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"{where}: {key!r} must be a number > 0")
            value = float(value)
        out[key] = value
    return out


# Keys accepted in a TOML file, with the type each must have.
_TOML_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "bind": str,
    "advertise": str,
    "seeds": list,
    "dc": str,
    "zone": str,
    "roles": list,
    "weight": (int, float),
    "tags": dict,
    "profile": str,
    "key_file": str,
    "insecure": bool,
    "label": str,
    "control": str,
    "data_dir": str,
    "log_format": str,
    "log_level": str,
    "membership": dict,
    "sip": dict,
    "dns": dict,
    "metrics": str,
}


def parse_hostport(text: str, default_port: int = DEFAULT_GOSSIP_PORT) -> tuple[str, int]:
    """ "host:port", "host", "[v6]:port" or ":port" to (host, port); ConfigError if malformed."""
    text = text.strip()
    if not text:
        raise ConfigError("empty address")
    host: str
    port_text: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(f"bad address {text!r}: missing ']'")
        host = text[1:end]
        rest = text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ConfigError(f"bad address {text!r}")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        host, port_text = text, None  # bare IPv6
    else:
        host, port_text = text, None
    if not host:
        host = "0.0.0.0"
    if port_text is None or port_text == "":
        port = default_port
    else:
        if not port_text.isdigit():
            raise ConfigError(f"bad port in {text!r}")
        port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"port out of range in {text!r}")
    if any(c.isspace() for c in host):
        raise ConfigError(f"bad host in {text!r}")
    return host, port


def format_hostport(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"bad tag {text!r}: expected key=value")
    return key, value


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read and check a TOML config file; ConfigError with the file and key on any problem."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"bad TOML in {path}: {e}") from None
    for key, value in data.items():
        want = _TOML_KEYS.get(key)
        if want is None:
            raise ConfigError(f"{path}: unknown key {key!r}")
        if not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
            raise ConfigError(f"{path}: {key!r} has the wrong type")
    return data


def apply_toml(cfg: AgentConfig, data: dict[str, Any]) -> None:
    """Apply checked TOML values to cfg (flags are applied afterwards and win)."""
    for key, value in data.items():
        if key in ("bind", "advertise"):
            setattr(cfg, key, parse_hostport(value))
        elif key == "seeds":
            if not all(isinstance(s, str) for s in value):
                raise ConfigError("'seeds' must be a list of host:port strings")
            cfg.seeds = [parse_hostport(s) for s in value]
        elif key == "roles":
            if not all(isinstance(s, str) for s in value):
                raise ConfigError("'roles' must be a list of strings")
            cfg.roles = list(value)
        elif key == "tags":
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                raise ConfigError("'tags' must map strings to strings")
            cfg.tags = dict(value)
        elif key == "weight":
            cfg.weight = float(value)
        elif key == "membership":
            cfg.membership_overrides = check_membership_overrides(value)
        elif key == "sip":
            cfg.sip = sip_from_toml(value, cfg.sip)
        elif key == "dns":
            cfg.dns = dns_from_toml(value, cfg.dns)
        elif key == "metrics" and isinstance(value, str):
            cfg.metrics = parse_hostport(value, DEFAULT_METRICS_PORT)
        else:
            setattr(cfg, key, value)


_STREAM_BIND_PORTS = {
    "tls_bind": DEFAULT_SIPS_PORT,
    "ws_bind": DEFAULT_WS_PORT,
    "wss_bind": DEFAULT_WSS_PORT,
}


def sip_from_toml(table: dict[str, object], base: SipConfig | None) -> SipConfig:
    sip = dataclasses.replace(base) if base is not None else SipConfig()
    for key, value in _checked_table(table, _SIP_KEYS, "sip"):
        if key == "bind" and isinstance(value, str):
            sip.bind = parse_hostport(value, DEFAULT_SIP_PORT)
        elif key in _STREAM_BIND_PORTS and isinstance(value, str):
            setattr(sip, key, parse_hostport(value, _STREAM_BIND_PORTS[key]))
        elif key == "domains" and isinstance(value, list):
            if not all(isinstance(d, str) for d in value):
                raise ConfigError("[sip]: 'domains' must be a list of strings")
            sip.domains = [d.lower().rstrip(".") for d in value]
        else:
            _set_number_or_value(sip, key, value)
    return sip


def replace(cfg: MembershipConfig, **changes: Any) -> MembershipConfig:
    return dataclasses.replace(cfg, **changes)
