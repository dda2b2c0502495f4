"""DNS settings: flags, the [dns] TOML table, and the errors for what cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest

from swimthor.cli import build_agent_config, build_parser, main
from swimthor.config import AgentConfig, ConfigError, DnsConfig, apply_toml, load_toml

SIP = ["--role", "sip", "--domain", "Example.COM"]


def parse_join(argv: list[str]) -> AgentConfig:
    return build_agent_config(build_parser().parse_args(["join", *argv]))


def test_no_dns_unless_asked() -> None:
    assert parse_join(SIP).dns is None


def test_zone_defaults_to_the_first_domain_and_flags_set_the_rest() -> None:
    cfg = parse_join([*SIP, "--dns", "127.0.0.1:8054"])
    assert cfg.dns is not None
    assert cfg.dns.bind == ("127.0.0.1", 8054) and cfg.dns.zone == "example.com"
    assert cfg.dns.ttl == 5
    cfg = parse_join(
        [*SIP, "--dns", "127.0.0.1", "--dns-zone", "Sip.Example.NET.", "--dns-ttl", "30"]
    )
    assert cfg.dns is not None
    assert cfg.dns.bind == ("127.0.0.1", 8053)
    assert (cfg.dns.zone, cfg.dns.ttl) == ("sip.example.net", 30)


def test_a_dns_only_agent_needs_a_zone() -> None:
    with pytest.raises(ConfigError, match="--dns-zone is needed"):
        parse_join(["--dns", "127.0.0.1:8054"])
    cfg = parse_join(["--dns", "127.0.0.1:8054", "--dns-zone", "example.com"])
    assert cfg.dns is not None and cfg.sip is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dns-zone", "example.com"], "--dns-zone need --dns"),
        (["--dns-ttl", "5"], "--dns-ttl need --dns"),
        (["--dns", "127.0.0.1", "--dns-zone", "bad zone"], "bad zone"),
        (["--dns", "127.0.0.1", "--dns-zone", "a..b"], "bad zone"),
        (["--dns", "127.0.0.1", "--dns-zone", "x" * 64 + ".com"], "bad zone"),
    ],
)
def test_bad_dns_settings_are_named(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_join([*SIP, *argv])


@pytest.mark.parametrize("ttl", ["-1", "x", "86401", "1.5"])
def test_bad_ttl_flag_is_one_error_line(ttl: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["join", "--dns", "127.0.0.1", "--dns-ttl", ttl])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("swimthor: error: ") and len(err.splitlines()) == 1
    assert "TTL must be whole seconds" in err


def test_toml_dns_table(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'roles = ["sip"]\n[sip]\ndomains = ["example.com"]\n'
        '[dns]\nbind = "127.0.0.1:9053"\nttl = 10\nmax_connections = 16\ntcp_idle = 3\n'
    )
    cfg = parse_join(["--config", str(path)])
    assert cfg.dns is not None
    assert cfg.dns.bind == ("127.0.0.1", 9053) and cfg.dns.ttl == 10
    assert cfg.dns.max_connections == 16 and cfg.dns.tcp_idle == 3.0
    assert cfg.dns.zone == "example.com"
    # A flag wins over the file.
    cfg = parse_join(["--config", str(path), "--dns-ttl", "2"])
    assert cfg.dns is not None and cfg.dns.ttl == 2
    for bad, message in [
        ("nope = 1", "unknown setting"),
        ('ttl = "5"', "wrong type"),
        ("ttl = true", "wrong type"),
        ('bind = "127.0.0.1:99999"', "port"),
    ]:
        path.write_text(f"[dns]\n{bad}\n")
        with pytest.raises(ConfigError, match=message):
            apply_toml(AgentConfig(), load_toml(path))


def test_dns_config_defaults() -> None:
    d = DnsConfig()
    assert d.bind == ("0.0.0.0", 8053) and d.ttl == 5 and d.zone is None


@pytest.mark.parametrize("flag", ["--dns", "--sip"])
def test_a_front_end_port_in_use_is_one_error_line_naming_it(flag: str, tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        argv = [
            sys.executable, "-m", "swimthor", "join", "--insecure", "--bind", "127.0.0.1:0",
            *SIP, "--sip", "127.0.0.1:0", "--dns", "127.0.0.1:0",
            "--control", str(tmp_path / "c.sock"), "--data-dir", str(tmp_path / "d"),
        ]  # fmt: skip
        argv[argv.index(flag) + 1] = f"127.0.0.1:{port}"
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert r.stderr.strip() == (
        f"swimthor: error: cannot bind {flag[2:].upper()} 127.0.0.1:{port}: address already in use"
    )


def test_rate_limit_flags_and_tables() -> None:
    cfg = parse_join(
        [*SIP, "--dns", "127.0.0.1", "--dns-rate-limit", "50", "--sip-rate-limit", "0"]
    )
    assert cfg.dns is not None and cfg.sip is not None
    assert (cfg.dns.rate_limit, cfg.dns.rate_burst) == (50.0, 2000.0)
    assert cfg.sip.rate_limit == 0.0
    cfg = parse_join([*SIP, "--sip-rate-limit", "2000"])
    assert cfg.sip is not None and (cfg.sip.rate_limit, cfg.sip.rate_burst) == (2000.0, 6000.0)
    cfg = parse_join(SIP)
    assert cfg.sip is not None and cfg.sip.rate_limit == 100.0
    with pytest.raises(ConfigError, match="--sip-rate-limit need --role sip"):
        parse_join(["--sip-rate-limit", "5"])


def test_rate_limit_settings_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    for table, bad, message in [
        ("sip", 'rate_exempt = ["nope"]', "bad network"),
        ("sip", "rate_limit = -3", "must be >= 0"),
        ("dns", "rate_limit = 10\nrate_burst = 0", "rate_burst must be >= 1"),
    ]:
        zone = '\nzone = "example.com"' if table == "dns" else ""
        path.write_text(
            'roles = ["sip"]\n[sip]\ndomains = ["example.com"]\n'
            + (f"[dns]{zone}\n{bad}\n" if table == "dns" else f"{bad}\n")
        )
        argv = ["--config", str(path)] + (["--dns", "127.0.0.1"] if table == "dns" else [])
        with pytest.raises(ConfigError, match=message):
            parse_join(argv)
