"""The `swimthor` command line, called as `main([...])` (hypercorn style).

Rules for these tests:
- every failure is exactly one stderr line starting "swimthor: error: ", exit 2 for a wrong
  command line or config file, 1 for a command that failed, never a traceback;
- the formatters are pure functions and are tested on canned agent replies;
- anything talking to a socket runs inside `trio.fail_after`, with the blocking CLI call in a
  worker thread (`trio.to_thread.run_sync`) and the server in the test's nursery.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
from agent_helpers import agent_config, cli_in_thread

from swimthor import cli, control
from swimthor.agent import Agent
from swimthor.cli import (
    UsageError,
    build_agent_config,
    build_parser,
    filter_members,
    format_convergence,
    format_keys_text,
    format_members_json,
    format_members_text,
    format_status_text,
    main,
    read_key_arg,
    resolve_keyring,
)
from swimthor.config import AgentConfig, ConfigError
from swimthor.keyring import Keyring
from swimthor.ports import free_ports

NOW = 1_700_000_000.0

MEMBERS: list[dict[str, Any]] = [
    {
        "name": "node2",
        "addr": "10.0.0.2:7946",
        "dc": "dc2",
        "roles": ["sip", "dns"],
        "weight": 1.0,
        "state": "suspect",
        "incarnation": 3,
        "tags": {"rack": "r2", "az": "b"},
        "since": NOW - 75,
    },
    {
        "name": "node1",
        "addr": "10.0.0.1:7946",
        "dc": "dc1",
        "roles": ["sip"],
        "weight": 2.0,
        "state": "alive",
        "incarnation": 12,
        "tags": {},
        "since": NOW - 7300,
    },
    {
        "name": "node3",
        "addr": "10.0.0.3:7946",
        "dc": "dc1",
        "roles": [],
        "weight": 1.0,
        "state": "dead",
        "incarnation": 0,
        "tags": {},
        "since": NOW - 5,
    },
]

STATUS: dict[str, Any] = {
    "name": "node1",
    "addr": "10.0.0.1:7946",
    "dc": "dc1",
    "incarnation": 12,
    "health": 0,
    "counts": {"alive": 4, "suspect": 1, "dead": 0, "left": 0},
    "by_dc": {"dc2": {"alive": 2, "suspect": 1}, "dc1": {"alive": 2, "dead": 0}},
    "view_digest": "3f2a9c1bdeadbeef0011223344556677",
    "converged": {"agree": 5, "disagree": 0, "unknown": 0, "members_agreeing": ["node1"]},
    "stats": {"probes_sent": 120, "acks_received": 118, "suspicions": 1},
}


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str, *, contains: str = "") -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("swimthor: error: "), err
    assert "Traceback" not in err
    assert contains in lines[0]


# ---------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("argv", "contains"),
    [
        (["join", "--bind", "1.2.3.4:http"], "--bind"),
        (["join", "--bind", "1.2.3.4:70000"], "port out of range"),
        (["join", "--advertise", "[::1"], "missing ']'"),
        (["join", "seed:nope"], "bad port"),
        (["join", "--tag", "novalue"], "key=value"),
        (["join", "--profile", "moon"], "invalid choice"),
        (["join", "--key-file", "k.json", "--insecure"], "not allowed with"),
        (["join", "--weight", "-1"], "positive"),
        (["join", "--weight", "heavy"], "bad weight"),
        (["join", "--weight", "nan"], "positive"),
        (["join", "--log-format", "xml"], "invalid choice"),
        (["members", "--format", "xml"], "invalid choice"),
        (["members", "--control", "a", "--via", "1.2.3.4:7946"], "not allowed with"),
        (["members", "--status", "sleepy"], "invalid choice"),
        (["status", "--timeout", "0"], "positive"),
        (["demo", "--nodes", "0"], "between"),
        (["keys"], "required"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], contains: str
) -> None:
    code, out, err = run(capsys, argv)
    assert code == 2
    assert out == ""
    assert_one_error_line(err, contains=contains)


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, ["--help"])
    assert code == 0
    assert "join" in out and "members" in out and "keygen" in out
    code, out, _ = run(capsys, ["join", "--help"])
    assert code == 0
    assert "--key-file" in out


def test_join_seeds_without_key_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, ["join", "--data-dir", str(tmp_path), "10.0.0.1:7946"])
    assert code == 2
    assert_one_error_line(err, contains="joining a sealed cluster needs --key-file")
    assert not (tmp_path / "keyring.json").exists()


def test_join_unreadable_key_file_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nope.json"
    code, _, err = run(capsys, ["join", "--key-file", str(missing), "10.0.0.1:7946"])
    assert code == 1
    assert_one_error_line(err, contains=str(missing))
    bad = tmp_path / "bad.key"
    bad.write_text("not base64 at all!\n")
    code, _, err = run(capsys, ["join", "--key-file", str(bad), "10.0.0.1:7946"])
    assert code == 1
    assert_one_error_line(err, contains="base64")


# ---------------------------------------------------------------- no agent on the socket


@pytest.mark.parametrize("command", ["members", "status", "leave", "keys list"])
def test_missing_control_socket_is_one_line_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    path = str(tmp_path / "nobody.sock")
    code, out, err = run(capsys, [*command.split(), "--control", path])
    assert code == 1
    assert out == ""
    assert_one_error_line(err, contains=path)


# ---------------------------------------------------------------- keys


def test_keygen_prints_one_32_byte_base64_key(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, ["keygen"])
    assert code == 0
    assert err == ""
    assert out.endswith("\n") and out.count("\n") == 1
    assert len(base64.b64decode(out.strip(), validate=True)) == 32
    _, again, _ = run(capsys, ["keygen"])
    assert again != out


def test_read_key_arg_base64_file_and_errors(tmp_path: Path) -> None:
    key = Keyring.generate()
    text = Keyring.encode_key(key)
    assert read_key_arg(text) == key
    one = tmp_path / "one.key"
    one.write_text(text + "\n")
    assert read_key_arg(f"@{one}") == key
    ring = tmp_path / "ring.json"
    other = Keyring.generate()
    Keyring([other, key], primary=other).save(ring)
    assert read_key_arg(f"@{ring}") == other
    with pytest.raises(UsageError, match="base64"):
        read_key_arg("%%%")
    with pytest.raises(UsageError, match="32"):
        read_key_arg(base64.b64encode(b"short").decode())


def test_keys_install_bad_key_is_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, ["keys", "install", "xyz!", "--control", str(tmp_path / "s")])
    assert code == 2
    assert_one_error_line(err, contains="bad KEY")


def test_new_cluster_generates_and_saves_a_private_keyring(tmp_path: Path) -> None:
    data = tmp_path / "state" / "swimthor"
    cfg = AgentConfig(data_dir=str(data))
    keyring, created = resolve_keyring(cfg)
    assert keyring is not None
    assert created == data / "keyring.json"
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(created).st_mode) == 0o600
    assert Keyring.load(created).primary == keyring.primary
    assert cfg.key_file == str(created)
    # The next start (now with seeds, e.g. a restart) finds the same key.
    again = AgentConfig(data_dir=str(data), seeds=[("10.0.0.1", 7946)])
    keyring2, created2 = resolve_keyring(again)
    assert created2 is None
    assert keyring2 is not None and keyring2.primary == keyring.primary


def test_insecure_and_key_file_resolution(tmp_path: Path) -> None:
    assert resolve_keyring(AgentConfig(insecure=True, data_dir=str(tmp_path))) == (None, None)
    path = tmp_path / "k"
    ring = Keyring([Keyring.generate()])
    ring.save(path)
    data = tmp_path / "data"
    got, created = resolve_keyring(
        AgentConfig(key_file=str(path), seeds=[("a", 1)], data_dir=str(data))
    )
    assert created is None and got is not None and got.primary == ring.primary
    # The first start copies the key file into the data dir, where rotations are saved.
    assert Keyring.load(data / "keyring.json").primary == ring.primary


def test_rotated_keyring_survives_a_restart_with_the_old_key_file(tmp_path: Path) -> None:
    old = Keyring([Keyring.generate()])
    old.save(tmp_path / "cluster.key")
    data = tmp_path / "data"
    cfg = AgentConfig(key_file=str(tmp_path / "cluster.key"), data_dir=str(data))
    ring, _ = resolve_keyring(cfg)
    assert ring is not None
    # A rotation while running: a new primary is installed and used, then saved.
    new = Keyring.generate()
    ring.install(new)
    ring.use(new)
    ring.save(data / "keyring.json")
    again, _ = resolve_keyring(
        AgentConfig(key_file=str(tmp_path / "cluster.key"), data_dir=str(data))
    )
    assert again is not None and again.primary == new
    assert old.primary in again.keys


def test_join_hint_names_the_file_and_the_join_command() -> None:
    ring = Keyring([Keyring.generate()])
    cfg = AgentConfig(label="prod", profile="wan")
    hint = cli.join_hint(Path("/var/lib/swimthor/keyring.json"), ("10.0.0.5", 7946), ring, cfg)
    assert (
        "swimthor join --key-file /var/lib/swimthor/keyring.json --label prod --profile wan "
        "10.0.0.5:7946" in hint
    )
    assert Keyring.key_id(ring.primary) in hint
    assert Keyring.encode_key(ring.primary) not in hint  # the secret never goes to logs
    assert all(line.startswith("swimthor: ") for line in hint.splitlines())


# ---------------------------------------------------------------- config merge


def parse_join(argv: list[str]) -> AgentConfig:
    return build_agent_config(build_parser().parse_args(["join", *argv]))


def test_toml_values_apply_and_flags_win(tmp_path: Path) -> None:
    conf = tmp_path / "swimthor.toml"
    conf.write_text(
        'name = "from-file"\n'
        'bind = "10.0.0.1:8000"\n'
        'seeds = ["10.0.0.2:8000", "10.0.0.3"]\n'
        'dc = "fra"\n'
        'roles = ["sip", "dns"]\n'
        "weight = 3\n"
        'tags = { rack = "r1" }\n'
        'profile = "wan"\n'
        'label = "prod"\n'
        'key_file = "/etc/swimthor/keyring.json"\n'
        f'data_dir = "{tmp_path}"\n'
        "[sip]\n"
        'domains = ["Example.com."]\n'
        'bind = "127.0.0.1:5070"\n'
    )
    cfg = parse_join(["--config", str(conf)])
    assert cfg.sip is not None and cfg.sip.domains == ["example.com"]
    assert cfg.sip.bind == ("127.0.0.1", 5070) and cfg.sip.replicas == 2
    assert cfg.name == "from-file"
    assert cfg.bind == ("10.0.0.1", 8000)
    assert cfg.seeds == [("10.0.0.2", 8000), ("10.0.0.3", 7946)]
    assert (cfg.dc, cfg.roles, cfg.weight, cfg.tags) == ("fra", ["sip", "dns"], 3.0, {"rack": "r1"})
    assert (cfg.profile, cfg.label, cfg.key_file) == ("wan", "prod", "/etc/swimthor/keyring.json")

    cfg = parse_join(
        [
            "--config",
            str(conf),
            "--name",
            "from-flag",
            "--bind",
            "127.0.0.1:9000",
            "--role",
            "proxy",
            "--tag",
            "az=b",
            "--profile",
            "local",
            "--insecure",
            "10.9.9.9:1",
        ]
    )
    assert cfg.name == "from-flag"
    assert cfg.bind == ("127.0.0.1", 9000)
    assert cfg.seeds == [("10.9.9.9", 1)]
    assert cfg.roles == ["proxy"]
    assert cfg.tags == {"az": "b"}
    assert cfg.profile == "local"
    assert cfg.insecure and cfg.key_file is None  # --insecure overrides the file's key_file
    assert cfg.dc == "fra" and cfg.label == "prod"  # not given as flags: the file's values


def test_zone_from_flag_file_or_tag(tmp_path: Path) -> None:
    assert parse_join(["--data-dir", str(tmp_path)]).zone == ""
    assert parse_join(["--zone", "rack7"]).zone == "rack7"
    conf = tmp_path / "z.toml"
    conf.write_text('zone = "rack1"\n')
    assert parse_join(["--config", str(conf)]).zone == "rack1"
    assert parse_join(["--config", str(conf), "--zone", "rack2"]).zone == "rack2"
    # A `zone` tag is the zone too (what `swimthor meta --tag zone=...` sets at run time).
    cfg = parse_join(["--tag", "zone=r3", "--tag", "az=b"])
    assert (cfg.zone, cfg.tags) == ("r3", {"az": "b"})
    assert parse_join(["--tag", "zone=r3", "--zone", "r3"]).zone == "r3"
    for argv, contains in [
        (["--tag", "zone=r3", "--zone", "r4"], "disagree"),
        (["--tag", "placement=1"], "swimthor's own"),
        (["--zone", "rack 1"], "zone must be a word"),
        (["--zone", "r" * 65], "zone must be a word"),
    ]:
        with pytest.raises(ConfigError, match=contains):
            parse_join(argv)


def test_defaults_without_config(tmp_path: Path) -> None:
    cfg = parse_join(["--data-dir", str(tmp_path)])
    assert cfg.name  # the host name
    assert cfg.bind == ("0.0.0.0", 7946)
    assert cfg.profile == "lan" and cfg.seeds == [] and not cfg.insecure


@pytest.mark.parametrize(
    ("toml", "contains"),
    [
        ('colour = "blue"\n', "unknown key 'colour'"),
        ("weight = true\n", "wrong type"),
        ('profile = "moon"\n', "unknown profile"),
        ('bind = "1.2.3.4:x"\n', "bad port"),
        ("weight = -2\n", "positive"),
        ('insecure = true\nkey_file = "k"\n', "exclude each other"),
        ("name = \n", "bad TOML"),
    ],
)
def test_bad_config_file_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, toml: str, contains: str
) -> None:
    # Every case fails while the configuration is checked, before any socket is bound.
    conf = tmp_path / "bad.toml"
    conf.write_text(toml)
    code, _, err = run(capsys, ["join", "--config", str(conf), "--data-dir", str(tmp_path)])
    assert code == 2
    assert_one_error_line(err, contains=contains)


def test_missing_config_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, ["join", "--config", str(tmp_path / "none.toml")])
    assert code == 2
    assert_one_error_line(err, contains="cannot read config")


# ---------------------------------------------------------------- formatters


def test_members_text_is_aligned_sorted_columns() -> None:
    text = format_members_text(MEMBERS, NOW)
    lines = text.splitlines()
    assert lines[0].split() == ["NAME", "ADDR", "DC", "ROLES", "STATE", "INC", "SINCE", "TAGS"]
    assert [line.split()[0] for line in lines[1:]] == ["node1", "node2", "node3"]
    assert lines[1].split() == [
        "node1", "10.0.0.1:7946", "dc1", "sip", "alive", "12", "2h01m", "-",
    ]  # fmt: skip
    assert lines[2].split() == [
        "node2", "10.0.0.2:7946", "dc2", "sip,dns", "suspect", "3", "1m15s", "az=b,rack=r2",
    ]  # fmt: skip
    assert lines[3].split()[3] == "-" and lines[3].split()[6] == "5s"
    # Every column starts at the same offset on every line.
    for header in ("ADDR", "STATE", "SINCE", "TAGS"):
        col = lines[0].index(header)
        assert all(line[col - 2 : col] == "  " and line[col] != " " for line in lines)


def test_members_text_tolerates_missing_fields() -> None:
    text = format_members_text([{"name": "x"}], NOW)
    assert text.splitlines()[1].split() == ["x", "-", "-", "-", "-", "-", "-", "-"]


def test_members_json_round_trips() -> None:
    doc = json.loads(format_members_json(MEMBERS))
    assert [m["name"] for m in doc] == ["node1", "node2", "node3"]
    assert doc[1] == MEMBERS[0]


def test_filter_members() -> None:
    assert [m["name"] for m in filter_members(MEMBERS, status="alive")] == ["node1"]
    assert [m["name"] for m in filter_members(MEMBERS, dc="dc1")] == ["node1", "node3"]
    assert [m["name"] for m in filter_members(MEMBERS, role="dns")] == ["node2"]
    assert filter_members(MEMBERS, dc="dc1", role="dns") == []
    assert len(filter_members(MEMBERS)) == 3


def test_status_text() -> None:
    text = format_status_text(STATUS)
    assert "node1" in text and "10.0.0.1:7946" in text
    assert "incarnation 12" in text and "health 0 (healthy)" in text
    assert "4 alive, 1 suspect" in text and "0 dead" not in text
    lines = text.splitlines()
    dc1 = next(line for line in lines if line.strip().startswith("dc1:"))
    dc2 = next(line for line in lines if line.strip().startswith("dc2:"))
    assert lines.index(dc1) < lines.index(dc2)
    assert dc2.split(":", 1)[1].strip() == "2 alive, 1 suspect"
    assert "converged: 5/5 members report the same view" in text
    assert "probes_sent=120" in text and "suspicions=1" in text
    assert "3f2a9c1bdeadbeef" in text


def test_status_text_shows_the_sip_front_end() -> None:
    status = dict(STATUS)
    status["sip"] = {
        "address": "10.0.0.1:5060",
        "domains": ["example.com"],
        "replicas": 2,
        "bindings": 1204,
        "aors": 1200,
        "subscribers": 900,
        "proxy": {"registers": 1300, "forwarded": 77},
        "transport": {"udp_received": 1500},
        "replication": {"puts_sent": 40},
        "flows": {"udp": 30, "tcp": 4, "tls": 12, "ws": 0, "wss": 7},
        "keepalive": {
            "udp_pings": 90,
            "udp_answers": 88,
            "udp_lost": 1,
            "udp_stun": 5,
            "tcp_pongs": 2,
            "tls_pongs": 9,
            "ws_pongs": 0,
            "wss_pongs": 3,
        },
    }
    text = format_status_text(status)
    assert "flows: udp 30  tcp 4  tls 12  ws 0  wss 7" in text
    assert "keepalives: udp pings 90 answered 88 lost 1, stun 5; pongs tcp 2  tls 9" in text
    assert "sip:        10.0.0.1:5060  domains example.com  R=2" in text
    assert "1204 bindings of 1200 addresses-of-record, 900 subscribers held here" in text
    assert "sip proxy:" in text and "registers=1300" in text and "puts_sent=40" in text
    assert "sip:" not in format_status_text(STATUS)


def test_status_text_shows_the_dns_front_end() -> None:
    status = dict(STATUS)
    status["dns"] = {
        "address": "10.0.0.1:8053",
        "zone": "example.com",
        "ttl": 5,
        "servers": ["node1", "node2"],
        "sip_targets": ["node1"],
        "answers": {"queries": 900, "cache_hits": 880},
        "transport": {"udp_received": 900},
    }
    text = format_status_text(status)
    assert "dns:        10.0.0.1:8053  zone example.com  ttl 5s" in text
    assert "name servers: node1, node2; SRV targets: node1" in text
    assert "dns answers:" in text and "cache_hits=880" in text and "udp_received=900" in text
    assert "dns:" not in format_status_text(STATUS)


def test_status_text_tolerates_a_sparse_reply() -> None:
    text = format_status_text({"name": "n"})
    assert "n" in text and "converged: unknown" in text


def test_convergence_lines() -> None:
    assert format_convergence({"agree": 3, "disagree": 0, "unknown": 0}) == (
        "converged: 3/3 members report the same view"
    )
    line = format_convergence(
        {"agree": 3, "disagree": 1, "unknown": 1, "members_disagreeing": ["node4"]}
    )
    assert line.startswith("not converged: 3/5 members report the same view")
    assert "1 disagree (node4)" in line and "1 not heard from yet" in line


def test_keys_text() -> None:
    text = format_keys_text({"primary": "aaaa", "keys": ["bbbb", "aaaa"]})
    assert text.splitlines()[0].split() == ["aaaa", "primary"]
    assert text.splitlines()[1].strip() == "bbbb"


async def test_demo_table_formatting() -> None:
    from swimthor import demo

    class FakeCore:
        def members_json(self) -> list[dict[str, Any]]:
            return [{"name": "node1", "state": "alive"}, {"name": "node2", "state": "suspect"}]

        def status(self, now: float) -> dict[str, Any]:
            return dict(STATUS)

    class FakeAgent:
        core = FakeCore()

    class BrokenAgent:
        core = None

    cfgs = demo.node_configs(2, [7001, 7002], "local", Path("/tmp/x"), insecure=False)
    assert [c.name for c in cfgs] == ["node1", "node2"]
    assert cfgs[1].seeds == [("127.0.0.1", 7001)] and cfgs[0].seeds == []
    rows = demo.snapshot([FakeAgent(), BrokenAgent()], cfgs)
    assert rows[0].state == "alive" and rows[0].converged == "5/5 yes"
    assert rows[1].state == "suspect" and rows[1].incarnation == "?"
    table = demo.format_table(rows).splitlines()
    assert table[0].split()[:4] == ["NAME", "ADDR", "DC", "STATE@node1"]
    assert table[1].split()[:4] == ["node1", "127.0.0.1:7001", "dc1", "alive"]
    four = demo.node_configs(4, [1, 2, 3, 4], "local", Path("/tmp/x"), insecure=True)
    assert [c.dc for c in four] == ["dc1", "dc2", "dc1", "dc2"]
    assert all(c.roles == ["sip"] for c in four)
    ports = free_ports(3)
    assert len(set(ports)) == 3
    served = demo.node_configs(2, [1, 2], "local", Path("/tmp/x"), True, [5061, 5062], [8061, 8062])
    assert [c.dns.bind if c.dns else None for c in served] == [
        ("127.0.0.1", 8061),
        ("127.0.0.1", 8062),
    ]
    assert all(c.dns is not None and c.dns.zone == demo.DOMAIN for c in served)
    assert "-p 8061 _sip._udp.example.com SRV" in demo.dig_hint([8061, 8062])


# ---------------------------------------------------------------- against a control server


async def test_keys_and_members_through_a_control_server(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    async def handler(cmd: str, args: dict[str, Any]) -> Any:
        seen.append((cmd, args))
        if cmd == "members":
            return MEMBERS
        if cmd == "status":
            return STATUS
        if cmd == "keys.list":
            return {"primary": "aaaa", "keys": ["aaaa", "bbbb"]}
        if cmd == "keys.install":
            return {"ok": ["node1", "node2"], "failed": {"node3": "timeout"}}
        if cmd == "keys.use":
            return {"ok": ["node1", "node2", "node3"], "failed": {}}
        raise control.ControlError(f"unknown command {cmd!r}")

    path = str(tmp_path / "c.sock")
    key = Keyring.encode_key(Keyring.generate())
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(control.serve_control, path, handler)

            async def cli(*argv: str) -> tuple[int, str, str]:
                code = await trio.to_thread.run_sync(main, [*argv, "--control", path])
                out, err = capsys.readouterr()
                return code, out, err

            code, out, err = await cli("members", "--format", "json", "--dc", "dc1")
            assert code == 0 and err == ""
            assert [m["name"] for m in json.loads(out)] == ["node1", "node3"]
            assert seen[-1] == ("members", {"dc": "dc1"})

            code, out, _ = await cli("members", "--status", "alive")
            assert code == 0 and out.splitlines()[1].startswith("node1")
            assert len(out.splitlines()) == 2

            code, out, _ = await cli("status")
            assert code == 0 and "converged: 5/5" in out

            code, out, _ = await cli("keys", "list")
            assert code == 0 and out.splitlines()[0].split() == ["aaaa", "primary"]

            code, out, err = await cli("keys", "install", key)
            assert code == 1
            assert "installed key" in out and "on 2 member(s)" in out
            assert_one_error_line(err, contains="node3: timeout")
            assert seen[-1] == ("keys.install", {"key": key})

            code, out, err = await cli("keys", "use", key)
            assert code == 0 and err == "" and "primary on 3 member(s)" in out

            code, _, err = await cli("leave")
            assert code == 1
            assert_one_error_line(err, contains="unknown command 'leave'")
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- against a real agent


async def test_members_status_via_and_leave_against_an_agent(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    agent = Agent(agent_config(tmp_path, "solo"), keyring=None, handle_signals=False)
    path = str(tmp_path / "solo.sock")

    cli = cli_in_thread(capsys)

    # capture_logs keeps the agent's log lines out of the stdout under test, and restores
    # structlog's configuration afterwards.
    with trio.fail_after(30), structlog.testing.capture_logs():
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            assert agent.bound_addr is not None
            host, port = agent.bound_addr
            code, out, err = await cli("members", "--control", path, "--format", "json")
            assert (code, err) == (0, "")
            doc = json.loads(out)
            assert [m["name"] for m in doc] == ["solo"]
            me = doc[0]
            assert me["state"] == "alive" and me["roles"] == ["sip"] and me["dc"] == "dc1"
            assert me["addr"] == f"{host}:{port}"

            code, out, _ = await cli("members", "--control", path, "--role", "dns")
            assert code == 0 and len(out.splitlines()) == 1  # nothing matches: the header
            assert out.startswith("NAME")

            code, out, _ = await cli("status", "--control", path)
            assert code == 0
            assert "solo" in out and "converged: 1/1 members report the same view" in out

            via = f"{host}:{port}"
            code, out, err = await cli("members", "--via", via, "--insecure", "--format", "json")
            assert (code, err) == (0, "")
            assert [m["name"] for m in json.loads(out)] == ["solo"]
            code, out, _ = await cli("status", "--via", via, "--insecure", "--format", "json")
            assert code == 0 and json.loads(out)["name"] == "solo"

            # A sealed query to a plaintext agent gets no answer: one line, exit 1.
            key = tmp_path / "k"
            Keyring([Keyring.generate()]).save(key)
            code, _, err = await cli("members", "--via", via, "--key-file", str(key))
            assert code == 1
            assert_one_error_line(err, contains=via)

            # Metadata changes at run time, merged on the agent, with a higher incarnation.
            code, out, err = await cli("meta", "--control", path, "--tag", "zone=a", "--tag",
                                       "rack=7", "--weight", "2")  # fmt: skip
            assert (code, err) == (0, "") and "zone=a" in out
            code, out, err = await cli("meta", "--control", path, "--untag", "rack")
            assert code == 0
            me = agent.core.local
            assert me.tags == {"zone": "a", "placement": "2"}
            assert me.weight == 2.0 and me.incarnation == 2
            # The placement tag is the agent's (swimthor.routing): a change of it is ignored.
            code, out, err = await cli("meta", "--control", path, "--tag", "placement=1")
            assert code == 0 and agent.core.local.tags["placement"] == "2"
            code, _, err = await cli("meta", "--control", path, "--untag", "nope")
            assert code == 1
            assert_one_error_line(err, contains="no such tag")
            code, _, err = await cli("meta", "--control", path)
            assert code == 2
            assert_one_error_line(err, contains="nothing to change")

            code, out, _ = await cli("leave", "--control", path)
            assert code == 0 and "left" in out
        # run() returned by itself after the leave: the nursery closed without a cancel.


def test_join_on_a_port_in_use_is_one_line_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    monkeypatch.setattr(cli._join, "_configure_logging", lambda cfg: None)  # keep structlog global
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code, out, err = run(
            capsys,
            [
                "join",
                "--bind",
                f"127.0.0.1:{port}",
                "--insecure",
                "--data-dir",
                str(tmp_path),
                "--control",
                str(tmp_path / "c.sock"),
            ],
        )
    assert code == 1
    assert out == ""
    assert_one_error_line(err, contains="in use")


def test_toml_membership_table_overrides_the_profile(tmp_path: Path) -> None:
    from swimthor.config import apply_toml, load_toml

    path = tmp_path / "c.toml"
    path.write_text(
        'profile = "lan"\n[membership]\ntombstone_reap_time = 600\nindirect_checks = 2\n'
        "suspect_check = false\n"
    )
    cfg = AgentConfig()
    apply_toml(cfg, load_toml(path))
    m = cfg.membership()
    assert m.tombstone_reap_time == 600.0 and m.indirect_checks == 2 and not m.suspect_check
    assert m.probe_interval == 1.0  # the rest is still the lan profile
    for bad, message in [
        ("nope = 1", "unknown setting"),
        ("indirect_checks = 0", "whole number"),
        ("probe_interval = -1", "number > 0"),
        ('suspect_check = "yes"', "true or false"),
    ]:
        path.write_text(f"[membership]\n{bad}\n")
        with pytest.raises(ConfigError, match=message):
            apply_toml(AgentConfig(), load_toml(path))


def test_sip_replication_deadline_is_checked(tmp_path: Path) -> None:
    from swimthor.config import SipConfig, check_sip, sip_from_toml

    assert sip_from_toml({"replication_deadline": 4}, None).replication_deadline == 4
    assert SipConfig().replication_deadline > SipConfig().replication_timeout
    for bad in (0.1, 31, float("nan"), float("inf")):
        cfg = SipConfig(domains=["example.com"], replication_timeout=0.5)
        cfg.replication_deadline = bad
        with pytest.raises(ConfigError, match="replication_deadline"):
            check_sip(cfg)


def test_sip_max_bindings_is_the_store_bound() -> None:
    from swimthor.config import SipConfig, check_sip, sip_from_toml

    assert sip_from_toml({"max_bindings": 3_000_000}, None).max_bindings == 3_000_000
    for bad in (0, 10**9):
        cfg = SipConfig(domains=["example.com"], max_bindings=bad)
        with pytest.raises(ConfigError, match="max_bindings"):
            check_sip(cfg)
    with pytest.raises(ConfigError, match="max_bindings"):
        sip_from_toml({"max_bindings": "lots"}, None)
