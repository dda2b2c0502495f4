"""A WebSocket client (wss) registers and is called (issue 15), with a SIP stack nobody on this
project wrote: SIP.js 0.21, the browser SIP library, run in Node with `ws` as its WebSocket.

Two `swimthor join` agents on loopback (R=2, --sip-auth off). n0 also listens for SIP over
secure WebSocket (RFC 7118) with a certificate from a throwaway CA; bob's SIP.js device
(tests/wsphone/phone.mjs) registers over wss to n0, which becomes its edge and puts a Path
with the flow's token on the REGISTER. Alice, a pjsua2 caller (tests/pjsua_phone.py), calls
through n1 over UDP: the call goes n1 -> the owner -> n0 -> onto bob's WebSocket. Bob answers;
the call is confirmed on both sides (bob got the ACK), then one side hangs up and the other
sees the BYE and answers it. A third test has SIP.js on both ends, each on a WebSocket to its
own node.

SIP.js gets no WebRTC: phone.mjs gives it a SessionDescriptionHandlerFactory of its own with a
fixed SDP (audio on port 9), so signalling runs exactly as in a browser and no media flows.

Each phone is a subprocess printing one JSON event per line; a reader thread per phone collects
them, every wait on them is bounded, and every process is killed by PID when its test ends.
Nothing is sent anywhere but 127.0.0.1. Skipped when node or the npm packages (`npm ci
--prefix tests/wsphone`, which `make test` runs) are absent, or pjsua2 cannot be imported.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from phone_events import EventProcess
from sip_agents import DOMAIN, Node, swimthor, wait_until
from tls_certs import Pki, make_pki

from swimthor.membership import Keyring
from swimthor.ports import free_ports

WSPHONE = Path(__file__).parent / "wsphone"
PJSUA_PHONE = Path(__file__).parent / "pjsua_phone.py"
BOB = f"sip:bob@{DOMAIN}"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(NODE is None, reason="node (Node.js) not installed"),
]


@pytest.fixture(scope="module", autouse=True)
def sipjs_installed() -> None:
    """SIP.js and ws load from tests/wsphone/node_modules (what `make test` installs)."""
    assert NODE is not None
    r = subprocess.run(
        [NODE, "--input-type=module", "-e", 'await import("sip.js"); await import("ws");'],
        cwd=WSPHONE,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if r.returncode != 0:
        lines = r.stderr.strip().splitlines()
        why = next((ln for ln in lines if "Error" in ln), lines[-1] if lines else "")
        pytest.skip(
            "npm packages sip.js and ws not installed in tests/wsphone "
            f"(make test, or npm ci --prefix tests/wsphone): {why.strip()}"
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _need_pjsua2() -> None:
    if importlib.util.find_spec("pjsua2") is None:
        pytest.skip("pjsua2 not installed (pip install pjsua2-python, in the test extras)")


class Proc(EventProcess):
    """One phone process (SIP.js or pjsua2) and the JSON events it printed so far."""

    def rx(self, start: str, call_id: str, cseq_method: str | None = None) -> list[dict[str, Any]]:
        """The messages received so far whose first line starts with `start` (`BYE `,
        `SIP/2.0 200`), of `call_id` (and with a CSeq of `cseq_method`)."""
        return [
            e
            for e in self.seen("rx", call_id=call_id)
            if e["line"].startswith(start)
            and (cseq_method is None or (e["cseq"] or "").endswith(" " + cseq_method))
        ]

    def wait_rx(
        self, start: str, call_id: str, timeout: float, cseq_method: str | None = None
    ) -> dict[str, Any]:
        end = time.monotonic() + timeout
        with self.cond:
            while not self.rx(start, call_id, cseq_method):
                left = end - time.monotonic()
                if left <= 0 or self.eof:
                    what = f"{start!r}" + (f" to {cseq_method}" if cseq_method else "")
                    raise AssertionError(
                        f"{self.name} received no {what} for {call_id} within {timeout} s "
                        f"(its log: {self.log})"
                    )
                self.cond.wait(left)
            return self.rx(start, call_id, cseq_method)[0]


class WssNode(Node):
    """An agent that also serves SIP over secure WebSocket on a port of its own."""

    def __init__(self, tmp: Path, name: str, key_file: Path, seed: int | None, pki: Pki) -> None:
        self.wss_port = free_ports(1)[0]
        extra = ["--sip-wss", f"127.0.0.1:{self.wss_port}"]
        extra += ["--sip-tls-cert", str(pki.cert), "--sip-tls-key", str(pki.key)]
        super().__init__(tmp, name, key_file, seed, extra=extra)

    def _new_ports(self) -> None:
        super()._new_ports()
        self.wss_port = free_ports(1)[0]
        self.argv[self.argv.index("--sip-wss") + 1] = f"127.0.0.1:{self.wss_port}"

    @property
    def wss(self) -> str:
        return f"wss://127.0.0.1:{self.wss_port}"


class Cluster:
    """Two agents, n0 and n1, and the phones of one test (each killed by PID at the end)."""

    def __init__(self, tmp: Path, pki: Pki, n0: WssNode, n1: Node) -> None:
        self.tmp = tmp
        self.pki = pki
        self.n0 = n0
        self.n1 = n1
        self.phones: list[Proc] = []

    def sipjs(self, name: str, mode: list[str], node: WssNode, user: str) -> Proc:
        log = self.tmp / f"{name}.sipjs.log"
        assert NODE is not None
        argv = [NODE, str(WSPHONE / "phone.mjs"), *mode, "--server", node.wss]
        argv += ["--user", user, "--domain", DOMAIN, "--ca", str(self.pki.ca)]
        argv += ["--log-file", str(log)]
        phone = Proc(name, argv, self.tmp, log, WSPHONE)
        self.phones.append(phone)
        return phone

    def bob(self, *behaviour: str) -> Proc:
        """Bob's SIP.js device, registered over wss to n0."""
        bob = self.sipjs("bob", ["device", *behaviour], self.n0, "bob")
        event = bob.wait_for("registered", 20)
        assert event["code"] == 200, event
        assert "transport=ws" in event["contact"], event  # RFC 7118 §5: SIP.js's own Contact
        return bob

    def pjsua_caller(self, *options: str) -> Proc:
        """Alice on pjsua2, calling bob through n1 over UDP."""
        log = self.tmp / "alice.pjsua.log"
        argv = [sys.executable, str(PJSUA_PHONE), "call", BOB]
        argv += ["--proxy", f"127.0.0.1:{self.n1.sip_port}", "--user", "alice"]
        argv += ["--domain", DOMAIN, *options, "--log-file", str(log)]
        phone = Proc("alice", argv, self.tmp, log, Path(__file__).parent)
        self.phones.append(phone)
        return phone

    def close(self) -> None:
        for phone in self.phones:
            phone.kill()


@contextlib.contextmanager
def cluster(tmp_path: Path, pki: Pki, n1_wss: bool = False) -> Iterator[Cluster]:
    """n0 (with --sip-wss) and n1 (with it too if `n1_wss`), converged; killed at the end."""
    key_file = tmp_path / "cluster.key"
    key_file.write_text(Keyring.encode_key(Keyring.generate()) + "\n")
    key_file.chmod(0o600)
    n0 = WssNode(tmp_path, "n0", key_file, None, pki)
    nodes: list[Node] = [n0]
    c: Cluster | None = None
    try:
        n0.start()
        n1 = (
            WssNode(tmp_path, "n1", key_file, n0.port, pki)
            if n1_wss
            else Node(tmp_path, "n1", key_file, n0.port)
        )
        nodes.append(n1)
        n1.start()
        wait_until(
            lambda: all(
                sum(m["state"] == "alive" and "sip" in m["tags"] for m in n.members().values()) == 2
                for n in nodes
            ),
            30,
            "2 SIP agents to converge",
        )
        assert "wss" in n0.members()["n0"]["tags"], n0.members()  # n0 announces its wss port
        c = Cluster(tmp_path, pki, n0, n1)
        yield c
    finally:
        if c is not None:
            c.close()
        for node in nodes:
            if node.p is not None and node.p.poll() is None:
                node.p.kill()
                node.p.wait()


def _wss_at_edge(c: Cluster) -> None:
    """n0 took bob's REGISTER over wss and holds his flow: the one binding's Path names n0."""
    stats = c.n0.status()["sip"]
    assert stats["transport"]["wss_accepted"] >= 1, stats["transport"]
    assert stats["proxy"]["paths_added"] >= 1, stats["proxy"]
    r = swimthor("location", BOB, "--control", c.n0.sock, "--format", "json")
    assert r.returncode == 0, r.stderr
    bindings = json.loads(r.stdout)["bindings"]
    assert len(bindings) == 1, bindings
    (binding,) = bindings
    assert "transport=ws" in binding["contact"], binding
    assert binding["edge"] == f"127.0.0.1:{c.n0.sip_port}", binding
    assert binding["user_agent"] == "SIP.js-swimthor-tests", binding
    assert binding["source"].startswith("wss:"), binding


def _answered_call(c: Cluster, bob: Proc, alice: Proc) -> str:
    """Alice's call reached bob's WebSocket, bob answered, and both sides confirmed it (bob
    got the ACK). The Call-ID."""
    call_id: str = alice.wait_for("calling", 10)["call_id"]
    assert bob.wait_for("incoming", 10)["call_id"] == call_id
    bob.wait_for("answered", 10, call_id=call_id)
    assert alice.wait_for("confirmed", 10, call_id=call_id)["code"] == 200
    bob.wait_for("confirmed", 10, call_id=call_id)  # the ACK, through the Record-Route
    bob.wait_rx("ACK ", call_id, 1)
    stats = c.n0.status()["sip"]["proxy"]
    assert stats["to_flows"] >= 1, stats  # the INVITE went out on bob's WebSocket flow
    return call_id


def test_wss_device_called_caller_hangs_up(tmp_path: Path, pki: Pki) -> None:
    """SIP.js registers over wss to n0; pjsua2 calls through n1; bob answers; alice hangs up:
    bob gets the BYE and answers it, and alice gets that 200."""
    _need_pjsua2()
    with cluster(tmp_path, pki) as c:
        bob = c.bob("--answer-after", "300")
        _wss_at_edge(c)

        alice = c.pjsua_caller("--hangup-after", "500")
        call_id = _answered_call(c, bob, alice)

        bob.wait_for("bye_received", 10, call_id=call_id)
        bob.wait_rx("BYE ", call_id, 1)
        ended = bob.wait_for("disconnected", 5, call_id=call_id)
        assert ended["confirmed"] is True and ended["by"] == "remote", ended
        alice.wait_rx("SIP/2.0 200", call_id, 5, "BYE")  # bob's answer to the BYE came back
        result = alice.wait_for("result", 10)
        assert result["code"] == 200 and result["confirmed"] is True, result
        assert bob.seen("hanging_up") == []


def test_wss_device_called_and_hangs_up(tmp_path: Path, pki: Pki) -> None:
    """The same call, but bob (SIP.js, on the WebSocket) hangs up: his BYE goes out through
    n0 and reaches alice, and her 200 comes back onto his WebSocket."""
    _need_pjsua2()
    with cluster(tmp_path, pki) as c:
        bob = c.bob("--answer-after", "300", "--hangup-after", "500")
        _wss_at_edge(c)

        alice = c.pjsua_caller("--hangup-after", "60000")  # alice never hangs up first
        call_id = _answered_call(c, bob, alice)

        bob.wait_for("hanging_up", 10, call_id=call_id)
        alice.wait_rx("BYE ", call_id, 10)
        assert bob.wait_for("bye_answered", 10, call_id=call_id)["code"] == 200
        bob.wait_rx("SIP/2.0 200", call_id, 1, "BYE")
        ended = bob.wait_for("disconnected", 5, call_id=call_id)
        assert ended["confirmed"] is True and ended["by"] == "local", ended
        result = alice.wait_for("result", 10)
        assert result["code"] == 200 and result["confirmed"] is True, result
        assert bob.seen("bye_received") == []


def test_wss_to_wss(tmp_path: Path, pki: Pki) -> None:
    """SIP.js on both ends: alice on a WebSocket to n1 calls bob on a WebSocket to n0; bob
    answers, alice hangs up, bob gets the BYE."""
    with cluster(tmp_path, pki, n1_wss=True) as c:
        assert isinstance(c.n1, WssNode)
        bob = c.bob("--answer-after", "300")
        alice = c.sipjs("alice", ["call", BOB, "--hangup-after", "500"], c.n1, "alice")

        call_id = _answered_call(c, bob, alice)
        bob.wait_for("bye_received", 10, call_id=call_id)
        assert alice.wait_for("bye_answered", 10, call_id=call_id)["code"] == 200
        result = alice.wait_for("result", 10)
        assert result["code"] == 200 and result["confirmed"] is True, result
        assert c.n1.status()["sip"]["transport"]["wss_accepted"] >= 1
