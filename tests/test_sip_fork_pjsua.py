"""Forking (issue 14) with devices nobody on this project wrote: pjsua2, PJSIP's own SIP stack.

A three-node `swimthor join` cluster on loopback (R=2, --sip-auth off). Bob has two pjsua2
devices, each registered with its own `+sip.instance`; the caller, alice, is pjsua2 too.
Everything (REGISTERs, the INVITE, the CANCEL) goes through the one node that does not own
sip:bob@example.com, so the entry node forwards to the owner and the owner forks.

Each pjsua2 phone is a subprocess (tests/pjsua_phone.py) that prints one JSON event per line;
a reader thread per phone collects them, and every wait on them is bounded. Every phone and
agent is killed by PID when its test ends, pass or fail. Nothing is sent anywhere but
127.0.0.1. Skipped when pjsua2 (PyPI pjsua2-python, in the `test` extras) is not importable.
"""

from __future__ import annotations

import contextlib
import importlib.util
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from phone_events import EventProcess
from sip_agents import DOMAIN, Node, cluster_of, fork_counts

PHONE = Path(__file__).parent / "pjsua_phone.py"
BOB = f"sip:bob@{DOMAIN}"
INSTANCE_A = "urn:uuid:6f1c8e52-0f4e-4b8a-9a51-00000000000a"
INSTANCE_B = "urn:uuid:6f1c8e52-0f4e-4b8a-9a51-00000000000b"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("pjsua2") is None,
        reason="pjsua2 not installed (pip install pjsua2-python, in the test extras)",
    ),
]


@pytest.fixture(scope="module", autouse=True)
def pjsua2_loads() -> None:
    """The binding is a native library: check it loads in a process of its own (pytest's own
    process never loads pjsua2)."""
    r = subprocess.run(
        [sys.executable, "-c", "import pjsua2; pjsua2.Endpoint"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if r.returncode != 0:
        pytest.skip(f"pjsua2 cannot be imported: {r.stderr.strip().splitlines()[-1:]}")


class Phone(EventProcess):
    """One pjsua_phone.py process and the events it printed so far."""

    what_log = "pjsua log"

    def __init__(self, name: str, argv: list[str], tmp: Path, prefix: Sequence[str] = ()) -> None:
        """`prefix`: what to run it under (`ip netns exec NS` for a phone behind a NAT)."""
        log = tmp / f"{name}.pjsua.log"
        super().__init__(
            name, [*prefix, sys.executable, str(PHONE), *argv, "--log-file", str(log)], tmp, log
        )

    def received(self, method: str, call_id: str | None = None) -> list[dict[str, Any]]:
        """The `method` requests (of `call_id`) this phone received so far."""
        return [
            e
            for e in self.seen("rx")
            if e["line"].startswith(method + " ") and call_id in (None, e["call_id"])
        ]

    def wait_received(self, method: str, timeout: float, call_id: str | None = None) -> None:
        """Wait at most `timeout` seconds for a `method` request (pjsua logs a message after
        the callbacks it caused, so its `rx` line may follow their events)."""
        end = time.monotonic() + timeout
        with self.cond:
            while not self.received(method, call_id):
                left = end - time.monotonic()
                if left <= 0 or self.eof:
                    raise AssertionError(f"{self.name} got no {method} within {timeout} s")
                self.cond.wait(left)


class Phones:
    """The pjsua2 processes of one test, each killed by PID at the end."""

    def __init__(self, tmp: Path, entry: Node, nodes: list[Node]) -> None:
        self.tmp = tmp
        self.entry = f"127.0.0.1:{entry.sip_port}"
        self.nodes = nodes
        self.all: list[Phone] = []

    def forks(self) -> Counter[str]:
        """Why the cluster's forks cancelled or gave up branches so far (`fork_counts`)."""
        return fork_counts(self.nodes)

    def device(self, name: str, instance: str, q: str, *behaviour: str) -> Phone:
        argv = ["device", "--registrar", self.entry, "--user", "bob", "--domain", DOMAIN]
        argv += ["--instance", instance, "--q", q, *behaviour]
        phone = Phone(name, argv, self.tmp)
        self.all.append(phone)
        return phone

    def registered(self, *devices: Phone) -> None:
        for d in devices:
            event = d.wait_for("registered", 20)
            assert event["code"] == 200, event

    def call(self, *options: str) -> Phone:
        argv = ["call", BOB, "--proxy", self.entry, "--user", "alice", "--domain", DOMAIN]
        phone = Phone("caller", [*argv, *options], self.tmp)
        self.all.append(phone)
        return phone

    def close(self) -> None:
        for phone in self.all:
            phone.kill()


@contextlib.contextmanager
def bob_cluster(tmp_path: Path, extra: list[str] | None = None) -> Iterator[Phones]:
    """Three agents; yields the phones of a test, all talking to the node that does not own
    Bob's address-of-record."""
    with cluster_of(tmp_path, 3, extra=extra) as nodes:
        owners = nodes["n0"].owners(BOB)
        assert len(owners) == 2, owners
        entry = next(n for n in nodes.values() if n.name not in owners)
        phones = Phones(tmp_path, entry, list(nodes.values()))
        try:
            yield phones
        finally:
            phones.close()


def _never(phone: Phone, event: str) -> None:
    assert not phone.seen(event), f"{phone.name} printed {phone.seen(event)}"


def _cancelled(phone: Phone, timeout: float) -> dict[str, Any]:
    """The phone's call ended by a CANCEL it received: 487, never confirmed."""
    event = phone.wait_for("cancelled", timeout)
    assert event["code"] == 487, event
    phone.wait_received("CANCEL", 5, event["call_id"])
    _never(phone, "confirmed")
    return event


def _answered(caller: Phone, timeout: float = 20) -> dict[str, Any]:
    """The caller's call was answered once, with 200, confirmed and with media."""
    result = caller.wait_for("result", timeout)
    assert result["code"] == 200, result
    assert result["confirmed"] is True, result
    assert result["answers_2xx"] == 1, result  # one dialog: no second 2xx reached alice
    assert len(caller.seen("confirmed")) == 1
    caller.wait_for("media", 1)
    return result


def test_one_device_register_call_and_cancel(tmp_path: Path) -> None:
    """No forking needed (passes on a stateless proxy too): one pjsua2 device of bob
    registers through the non-owner node, a pjsua2 caller reaches it with a record-routed
    dialog (ACK and BYE arrive), and a second call cancelled while ringing ends 487."""
    with bob_cluster(tmp_path) as phones:
        bob = phones.device("bob-a", INSTANCE_A, "1.0", "--answer-after", "1500")
        phones.registered(bob)

        caller = phones.call()
        call_id = caller.wait_for("calling", 10)["call_id"]
        assert bob.wait_for("incoming", 10)["call_id"] == call_id
        _answered(caller)
        bob.wait_for("confirmed", 5, call_id=call_id)
        bob.wait_for("media", 5, call_id=call_id)
        assert bob.wait_for("disconnected", 10, call_id=call_id)["confirmed"] is True
        bob.wait_received("ACK", 5, call_id)  # through the entry node's Record-Route
        bob.wait_received("BYE", 5, call_id)

        caller = phones.call("--cancel-after", "700")
        call_id = caller.wait_for("calling", 10)["call_id"]
        bob.wait_for("incoming", 10, call_id=call_id)
        result = caller.wait_for("result", 20)
        assert result["code"] == 487, result
        assert result["confirmed"] is False, result
        event = bob.wait_for("cancelled", 10, call_id=call_id)
        assert event["code"] == 487, event
        bob.wait_received("CANCEL", 5, call_id)
        assert bob.seen("confirmed", call_id=call_id) == []


def test_parallel_fork_first_answer_wins(tmp_path: Path) -> None:
    """(a) Two devices of bob, equal q, distinct instances: both ring; the one that answers
    after 1 s gets the call, the other gets a CANCEL (487) and is never confirmed; alice gets
    exactly one answer, 200, and the call is confirmed with media."""
    with bob_cluster(tmp_path) as phones:
        # The ringer registers last, so a proxy that does not fork (it takes the binding
        # refreshed last) rings only the device that never answers.
        answers = phones.device("bob-a", INSTANCE_A, "1.0", "--answer-after", "1000")
        phones.registered(answers)
        rings = phones.device("bob-b", INSTANCE_B, "1.0", "--ring-forever")
        phones.registered(rings)
        assert rings.seen("registered")[0]["bindings"] == 2  # the 200 lists both contacts

        before = phones.forks()
        caller = phones.call()
        call_id = caller.wait_for("calling", 10)["call_id"]
        assert answers.wait_for("incoming", 10)["call_id"] == call_id
        assert rings.wait_for("incoming", 10)["call_id"] == call_id
        answers.wait_for("answered", 10)

        _answered(caller)
        answers.wait_for("confirmed", 5)
        _cancelled(rings, 10)
        # Cancelled because the other answered: one CANCEL from the owner, and no timeout
        # or CANCEL from alice that could have caused it.
        assert phones.forks() - before == Counter({"cancels_sent": 1})
        assert len(rings.seen("incoming")) == 1  # one branch per instance
        assert len(answers.seen("incoming")) == 1


def test_caller_cancel_reaches_every_branch(tmp_path: Path) -> None:
    """(b) Both devices ring; alice cancels: each device gets a CANCEL and ends 487, alice's
    final answer is 487 and nothing was confirmed."""
    with bob_cluster(tmp_path) as phones:
        a = phones.device("bob-a", INSTANCE_A, "1.0", "--ring-forever")
        b = phones.device("bob-b", INSTANCE_B, "1.0", "--ring-forever")
        phones.registered(a, b)

        before = phones.forks()
        caller = phones.call("--cancel-after", "1500")
        call_id = caller.wait_for("calling", 10)["call_id"]
        ring_a = a.wait_for("incoming", 10)
        ring_b = b.wait_for("incoming", 10)
        assert ring_a["call_id"] == ring_b["call_id"] == call_id
        caller.wait_for("cancelling", 10)

        result = caller.wait_for("result", 20)
        assert result["code"] == 487, result
        assert result["confirmed"] is False, result
        assert result["answers_2xx"] == 0, result
        for device in (a, b):
            _cancelled(device, 10)
        _never(caller, "confirmed")
        # Alice's CANCEL taken, one sent on to each device, nothing timed out.
        assert phones.forks() - before == Counter({"cancels_received": 1, "cancels_sent": 2})


def test_q_groups_in_sequence(tmp_path: Path) -> None:
    """(c) q=1.0 rings forever, q=0.5 answers: with --sip-fork-timeout 2 the first group is
    cancelled after about 2 s, only then is the q=0.5 device rung, and it gets the call."""
    with bob_cluster(tmp_path, extra=["--sip-fork-timeout", "2"]) as phones:
        high = phones.device("bob-high", INSTANCE_A, "1.0", "--ring-forever")
        low = phones.device("bob-low", INSTANCE_B, "0.5", "--answer-after", "500")
        phones.registered(high, low)

        before = phones.forks()
        caller = phones.call()
        call_id = caller.wait_for("calling", 10)["call_id"]
        first = high.wait_for("incoming", 10)
        assert first["call_id"] == call_id
        _cancelled(high, 15)
        second = low.wait_for("incoming", 15)
        assert second["call_id"] == call_id
        # The owner rings the q=0.5 group only once the q=1.0 group has rung (a fork timeout,
        # 2 s, lies between the two; the virtual-time tests in test_sip_fork.py hold the timeout
        # itself to the millisecond) ...
        assert second["t"] > first["t"], (first, second)

        _answered(caller)
        low.wait_for("confirmed", 5)
        assert len(high.seen("incoming")) == len(low.seen("incoming")) == 1
        # ... and the q=1.0 device was cancelled by that timeout: nobody answered it or
        # cancelled the call, and no transaction timed out.
        assert phones.forks() - before == Counter({"cancels_sent": 1})


def test_dead_contact_does_not_stop_the_call(tmp_path: Path) -> None:
    """(d) One device registers and is then killed (nothing listens on its port any more);
    the other answers: the call completes, with one answer."""
    with bob_cluster(tmp_path) as phones:
        # The dead one registers last: a proxy that does not fork would pick it alone.
        live = phones.device("bob-live", INSTANCE_A, "1.0", "--answer-after", "500")
        phones.registered(live)
        dead = phones.device("bob-dead", INSTANCE_B, "1.0", "--ring-forever")
        phones.registered(dead)
        assert dead.seen("registered")[0]["bindings"] == 2
        dead.kill()  # SIGKILL: no un-REGISTER, the binding stays

        caller = phones.call()
        call_id = caller.wait_for("calling", 10)["call_id"]
        assert live.wait_for("incoming", 10)["call_id"] == call_id
        _answered(caller)
        live.wait_for("confirmed", 5)


def test_dead_contact_fails_at_once(tmp_path: Path) -> None:
    """(d, stricter) The dead contact is alone in the first q group: its branch fails (503)
    at once, so the q=0.5 device rings well before the 10 s fork timeout and answers."""
    with bob_cluster(tmp_path, extra=["--sip-fork-timeout", "10"]) as phones:
        live = phones.device("bob-live", INSTANCE_A, "0.5", "--answer-after", "200")
        dead = phones.device("bob-dead", INSTANCE_B, "1.0", "--ring-forever")
        phones.registered(live, dead)
        dead.kill()

        before = phones.forks()
        caller = phones.call()
        calling = caller.wait_for("calling", 10)
        ring = live.wait_for("incoming", 8)
        assert ring["call_id"] == calling["call_id"]
        _answered(caller)
        # The dead branch failed on its transport error (port unreachable), not by the 10 s
        # fork timeout: nothing was cancelled and nothing timed out.
        assert phones.forks() - before == Counter({"branch_transport_errors": 1})
