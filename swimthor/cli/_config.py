"""From the `join` command line to an AgentConfig and a keyring: defaults, then the TOML
file, then the flags given; the keyring `join` runs with (and the one a `--via` query seals
with); a KEY argument; the data directory."""

from __future__ import annotations

import argparse
import math
import os
import socket
from pathlib import Path

from swimthor.config import (
    AgentConfig,
    ConfigError,
    DnsConfig,
    SipConfig,
    apply_toml,
    load_toml,
    profile,
)
from swimthor.config import check_dns as _check_dns
from swimthor.config import check_sip as _check_sip
from swimthor.keyring import Keyring
from swimthor.routing import PLACEMENT_TAG, ZONE_TAG

from ._errors import CommandError, UsageError

KEYRING_FILE = "keyring.json"
LOG_FORMATS = ("auto", "console", "json")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


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
    "zone",
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
    if len(cfg.zone) > 64 or any(c.isspace() or not c.isprintable() for c in cfg.zone):
        raise ConfigError(f"zone must be a word of at most 64 characters, not {cfg.zone!r}")
    if PLACEMENT_TAG in cfg.tags:
        raise ConfigError(f"the tag {PLACEMENT_TAG!r} is swimthor's own")
    tagged = cfg.tags.pop(ZONE_TAG, None)
    if tagged is not None:
        if cfg.zone and tagged != cfg.zone:
            raise ConfigError(f"zone {cfg.zone!r} and tag zone={tagged!r} disagree")
        cfg.zone = tagged


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
