"""Real `swimthor join` processes on loopback, driven and read through the CLI.

Rules: every process is started by the `cluster` fixture and killed by PID when the test ends,
pass or fail; every wait is bounded; nothing is sent anywhere but 127.0.0.1.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sip_agents import _free_port, swimthor, wait_until

from bench._procs import READY_TIMEOUT, AgentProcess
from swimthor.membership import Keyring

pytestmark = pytest.mark.slow

N = 5


class Proc:
    def __init__(self, tmp: Path, name: str, port: int, key_file: Path, seed: int | None) -> None:
        self.name = name
        self.port = port
        self.sock = str(tmp / f"{name}.sock")
        self.log = tmp / f"{name}.log"
        self.argv = [
            sys.executable,
            "-m",
            "swimthor",
            "join",
            "--name",
            name,
            "--bind",
            f"127.0.0.1:{port}",
            "--profile",
            "local",
            "--key-file",
            str(key_file),
            "--control",
            self.sock,
            "--data-dir",
            str(tmp / name),
            "--log-format",
            "json",
            "--role",
            "sip",
            "--sip",
            "127.0.0.1:0",
            "--domain",
            "example.com",
        ]
        if seed is not None:
            self.argv.append(f"127.0.0.1:{seed}")
        self.agent = AgentProcess(self.argv, self.log, on_address_in_use=self._new_port)

    @property
    def p(self) -> subprocess.Popen[bytes] | None:
        return self.agent.proc

    def start(self, ready: bool = True) -> None:
        """Start the agent; with `ready`, return once its control socket answers (started
        again on a new gossip port if its own was taken meanwhile)."""
        self.agent.control = self.sock
        self.agent.start(READY_TIMEOUT if ready else None)

    def _new_port(self) -> None:
        self.port = _free_port()
        self.argv[self.argv.index("--bind") + 1] = f"127.0.0.1:{self.port}"

    def members(self) -> dict[str, dict[str, Any]]:
        r = swimthor("members", "--control", self.sock, "--format", "json")
        assert r.returncode == 0, r.stderr
        return {m["name"]: m for m in json.loads(r.stdout)}

    def kill(self, sig: int = signal.SIGKILL) -> int | None:
        """`sig` by PID, then SIGKILL if it has not ended in 10 s; the exit status."""
        return self.agent.stop(sig, grace=10)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.key"
    path.write_text(Keyring.encode_key(Keyring.generate()) + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def cluster(tmp_path: Path, key_file: Path) -> Iterator[list[Proc]]:
    procs = [Proc(tmp_path, "n0", _free_port(), key_file, None)]
    try:
        procs[0].start()  # first: the others join through the port it really got
        seed = procs[0].port
        procs += [Proc(tmp_path, f"n{i}", _free_port(), key_file, seed) for i in range(1, N)]
        for p in procs[1:]:
            p.start()
        wait_until(
            lambda: all(
                sum(m["state"] == "alive" for m in p.members().values()) == N for p in procs
            ),
            30,
            "five agents to converge",
        )
        yield procs
    finally:
        for p in procs:
            p.agent.kill()


def test_five_processes_converge_and_report_consistently(cluster: list[Proc]) -> None:
    views = [p.members() for p in cluster]
    names = {f"n{i}" for i in range(N)}
    for v in views:
        assert set(v) == names
        for m in v.values():
            assert set(m) >= {
                "name",
                "addr",
                "dc",
                "roles",
                "weight",
                "state",
                "incarnation",
                "tags",
                "since",
            }
            assert isinstance(m["incarnation"], int) and isinstance(m["since"], float)
            assert m["addr"] == f"127.0.0.1:{next(p.port for p in cluster if p.name == m['name'])}"

    def statuses_agree() -> bool:
        digests = set()
        for p in cluster:
            r = swimthor("status", "--control", p.sock, "--format", "json")
            assert r.returncode == 0, r.stderr
            st = json.loads(r.stdout)
            assert st["counts"]["alive"] == N
            assert st["converged"]["disagree"] == 0, st["converged"]
            digests.add(st["view_digest"])
        return len(digests) == 1

    wait_until(statuses_agree, 15, "status to agree on every node")
    text = swimthor("status", "--control", cluster[0].sock)
    assert text.returncode == 0 and "n0" in text.stdout


def test_kill_dash_nine_is_dead_everywhere_and_restart_comes_back(cluster: list[Proc]) -> None:
    victim = cluster[2]
    victim.kill(signal.SIGKILL)
    survivors = [p for p in cluster if p is not victim]
    wait_until(lambda: all(p.members()["n2"]["state"] == "dead" for p in survivors), 20, "n2 dead")
    victim.start()
    wait_until(lambda: all(p.members()["n2"]["state"] == "alive" for p in cluster), 20, "n2 back")


def test_sigterm_leaves_gracefully(cluster: list[Proc]) -> None:
    victim = cluster[3]
    assert victim.kill(signal.SIGTERM) == 0
    survivors = [p for p in cluster if p is not victim]
    wait_until(lambda: all(p.members()["n3"]["state"] == "left" for p in survivors), 10, "left")


def test_via_reads_any_member_over_gossip(cluster: list[Proc], key_file: Path) -> None:
    r = swimthor(
        "members",
        "--via",
        f"127.0.0.1:{cluster[1].port}",
        "--key-file",
        str(key_file),
        "--format",
        "json",
    )
    assert r.returncode == 0, r.stderr
    assert {m["name"] for m in json.loads(r.stdout)} == {f"n{i}" for i in range(N)}
    r = swimthor(
        "status",
        "--via",
        f"127.0.0.1:{cluster[1].port}",
        "--key-file",
        str(key_file),
        "--format",
        "json",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["name"] == "n1"
    # The wrong key gets a clear error, not a view.
    other = key_file.parent / "other.key"
    other.write_text(Keyring.encode_key(Keyring.generate()) + "\n")
    r = swimthor("members", "--via", f"127.0.0.1:{cluster[1].port}", "--key-file", str(other))
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and "error" in r.stderr


def test_node_with_another_key_never_appears(cluster: list[Proc], tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    other.write_text(Keyring.encode_key(Keyring.generate()) + "\n")
    stranger = Proc(tmp_path, "intruder", _free_port(), other, cluster[0].port)
    stranger.start()

    def join_refused(times: int) -> bool:
        """Whether the intruder logged its join through the seed failing `times` times."""
        lines = stranger.log.read_text().splitlines()
        attempts = [json.loads(line)["attempt"] for line in lines if "no seed answered" in line]
        return max(attempts, default=0) >= times

    try:
        # Not "nothing happened for a while": the seed turned three join attempts away (the
        # intruder's backoff is 0.2, 0.4, 0.8 s on the local profile), and still nobody
        # lists it.
        wait_until(lambda: join_refused(3), 20, "the intruder's third join to be refused")
        for p in cluster:
            assert "intruder" not in p.members()
        r = swimthor("status", "--control", cluster[0].sock, "--format", "json")
        assert json.loads(r.stdout)["stats"]["rejected_seal"] > 0
    finally:
        stranger.kill()


def test_second_agent_with_a_taken_name_refuses_to_run(
    cluster: list[Proc], tmp_path: Path, key_file: Path
) -> None:
    twin = Proc(tmp_path, "n1", _free_port(), key_file, cluster[0].port)
    twin.sock = str(tmp_path / "twin.sock")
    twin.argv[twin.argv.index("--control") + 1] = twin.sock
    twin.argv[twin.argv.index("--data-dir") + 1] = str(tmp_path / "twin")
    twin.start(ready=False)  # it must not become ready: it refuses to run
    assert twin.p is not None
    assert twin.p.wait(20) == 1
    assert "in use by a live member" in twin.log.read_text()
    # The original keeps its name and address everywhere.
    for p in cluster:
        m = p.members()["n1"]
        assert m["state"] == "alive" and m["addr"] == f"127.0.0.1:{cluster[1].port}"


def _route(p: Proc, key: str) -> dict[str, Any]:
    r = swimthor("route", key, "--control", p.sock, "--format", "json")
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def test_every_agent_routes_a_key_alike_and_the_replica_takes_over(
    cluster: list[Proc], key_file: Path
) -> None:
    key = "sip:alice@example.com"
    answers = [_route(p, key) for p in cluster]
    owners = [[o["name"] for o in a["owners"]] for a in answers]
    assert all(o == owners[0] for o in owners) and len(owners[0]) == 2, owners
    assert all(a["key"] == key and isinstance(a["epoch"], int) for a in answers)
    # --via any member gives the same ranking (computed from its member list, no epoch).
    via = swimthor(
        "route",
        key,
        "--via",
        f"127.0.0.1:{cluster[0].port}",
        "--key-file",
        str(key_file),
        "--format",
        "json",
    )
    assert via.returncode == 0, via.stderr
    assert [o["name"] for o in json.loads(via.stdout)["owners"]] == owners[0]
    # status shows each member's share of the key space.
    st = swimthor("status", "--control", cluster[0].sock, "--format", "json")
    shares = json.loads(st.stdout)["routing"]["shares"]["sip"]
    assert set(shares) == {p.name for p in cluster} and abs(sum(shares.values()) - 1) < 1e-9
    # Kill the owner: once detected, the former second owner is first everywhere.
    first, second = owners[0]
    victim = next(p for p in cluster if p.name == first)
    victim.kill()
    survivors = [p for p in cluster if p is not victim]
    wait_until(
        lambda: all(_route(p, key)["owners"][0]["name"] == second for p in survivors),
        15,
        "the replica to own the key everywhere",
    )
    assert all(first not in [o["name"] for o in _route(p, key)["owners"]] for p in survivors)
    # Bad input is a one-line error, not a crash.
    bad = swimthor("route", key, "--replicas", "0", "--control", survivors[0].sock)
    assert bad.returncode != 0 and "replicas" in bad.stderr
