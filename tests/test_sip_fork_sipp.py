"""Forking at the address-of-record's owner (issue 14; RFC 3261 16.5-16.10), seen by real
clients: sipp devices of one user, each registered with its own +sip.instance and q, and a sipp
caller that comes in through the node owning nothing of that user, so every call is entry node
(stateless, record-routes) -> owner (forks) -> devices.

Two parts:
- The scenarios themselves, sipp to sipp with no swimthor in between (`test_scenarios_*`):
  each swimthor/sip/scenarios/ file used below against a sipp peer, and against the peers in
  tests/sipp_adversaries/ that it must catch.
- The acceptance cases of issue 14 through a three-node cluster (R = 2), with the fork timeout
  at FORK_TIMEOUT s (`--sip-fork-timeout`).

Rules as in test_sip_sipp: every process is started here and killed by PID when the test ends,
pass or fail; every sipp run and every wait is bounded; nothing is sent anywhere but 127.0.0.1;
no sleeps. Times (from sipp's message traces) are compared for order, and otherwise only with
the fork timeout (q groups in turn: at least half of it; a dead contact given up: in less than
it) and, sipp to sipp, with uas_answer_after.xml's own pause (at least half of it).
"""

from __future__ import annotations

import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sip_agents import DOMAIN, Node, _free_port, cluster_of, fork_counts
from sipp_helpers import SCENARIOS, Sipp, SippProcess, udp_bound

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (Debian sip-tester) missing"),
]

ADVERSARIES = Path(__file__).parent / "sipp_adversaries"
FORK_TIMEOUT = 2  # seconds, --sip-fork-timeout of every node
CALLER_LIMIT = 15  # seconds a caller sipp may run (then it fails)
DEVICE_LIMIT = 20  # seconds a device sipp may run (then it fails)


def _passed(stats: dict[str, int], who: SippProcess) -> None:
    """`who` ran its one call to the end of its scenario."""
    assert stats["exit"] == 0 and stats["ok"] == 1 and stats["failed"] == 0, (
        who.name,
        stats,
        who.log(),
    )


def _failed(stats: dict[str, int], who: SippProcess) -> None:
    assert stats["exit"] != 0 and stats["failed"] == 1, (who.name, stats, who.log())


# -- the scenarios, sipp to sipp ------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    uas: Path
    uas_keys: tuple[str, ...]
    uac: Path
    uac_keys: tuple[str, ...]
    uac_passes: bool | None  # None: not asserted (the adversary's side)
    uas_passes: bool | None


def _k(*pairs: str) -> tuple[str, ...]:
    """-key NAME VALUE for each NAME, VALUE."""
    out: list[str] = []
    for name, value in zip(pairs[::2], pairs[1::2], strict=True):
        out += ["-key", name, value]
    return tuple(out)


PAIRS = {
    # the caller that notices nothing, and the device that picks up after a pause
    "uac-uas_answer_after": Pair(
        SCENARIOS / "uas_answer_after.xml", _k("delay", "500"),
        SCENARIOS / "uac.xml", (), True, True,
    ),
    "uac_one_answer-uas_answer_after": Pair(
        SCENARIOS / "uas_answer_after.xml", _k("delay", "500"),
        SCENARIOS / "uac_one_answer.xml", (), True, True,
    ),
    # a second dialog: uac_one_answer fails, uac.xml does not notice
    "uac_one_answer-second_dialog": Pair(
        ADVERSARIES / "uas_answers_twice.xml", _k("second", "b"),
        SCENARIOS / "uac_one_answer.xml", (), False, None,
    ),
    "uac-second_dialog": Pair(
        ADVERSARIES / "uas_answers_twice.xml", _k("second", "b"),
        SCENARIOS / "uac.xml", (), True, None,
    ),
    "uac_cancel-uas_cancelled": Pair(
        SCENARIOS / "uas_cancelled.xml", (),
        SCENARIOS / "uac_cancel.xml", _k("rings", "1"), True, True,
    ),
    "uac_cancel-two_rings": Pair(
        ADVERSARIES / "uas_rings_twice_cancelled.xml", (),
        SCENARIOS / "uac_cancel.xml", _k("rings", "2"), True, True,
    ),
    "uac_cancel-487_first": Pair(
        ADVERSARIES / "uas_487_first.xml", (),
        SCENARIOS / "uac_cancel.xml", _k("rings", "1"), True, True,
    ),
    # a device that is not cancelled but acknowledged fails
    "ack_instead_of_cancel-uas_cancelled": Pair(
        SCENARIOS / "uas_cancelled.xml", (),
        ADVERSARIES / "uac_ack_instead_of_cancel.xml", (), None, False,
    ),
}  # fmt: skip


@pytest.mark.parametrize("pair", PAIRS.values(), ids=PAIRS.keys())
def test_scenarios_sipp_to_sipp(pair: Pair, sipp: Sipp) -> None:
    port = _free_port()
    uas = sipp.start("uas", "-sf", str(pair.uas), *pair.uas_keys, "-m", "1", port=port)
    uac = sipp.start(
        "uac", f"127.0.0.1:{port}",
        "-sf", str(pair.uac), *pair.uac_keys,
        "-inf", str(sipp.users("alice.csv", ["alice"])),
        "-key", "domain", DOMAIN, "-s", "bob",
        "-m", "1",
        port=_free_port(), listening=False,
    )  # fmt: skip
    uac_stats = uac.wait(40)
    uas_stats = uas.wait(40)
    for side, stats, passes in (
        (uac, uac_stats, pair.uac_passes),
        (uas, uas_stats, pair.uas_passes),
    ):
        if passes is True:
            _passed(stats, side)
        elif passes is False:
            _failed(stats, side)

    if pair.uac.name == "uac_cancel.xml":
        # The CANCEL and the ACK of the 487 are the INVITE's transaction: its branch.
        branches = {m.branch for m in uas.messages() if m.request in ("INVITE", "CANCEL", "ACK")}
        assert len(branches) == 1 and None not in branches, branches
        sent = dict.fromkeys(m.request for m in uac.messages() if m.sent)  # retransmissions once
        assert list(sent) == ["INVITE", "CANCEL", "ACK"], sent
    if pair.uas.name == "uas_answer_after.xml":
        # The 200 came -key delay (0.5 s) after the 180, not at once.
        ringing, answer = uas.sent("SIP/2.0 180")[0], uas.sent("SIP/2.0 200")[0]
        assert (answer.at - ringing.at).total_seconds() >= 0.25, (ringing.at, answer.at)


def test_scenario_register_device_sends_q_and_instance(sipp: Sipp) -> None:
    port = _free_port()
    registrar = sipp.start(
        "registrar", "-sf", str(ADVERSARIES / "registrar_echo.xml"), "-m", "1", port=port
    )
    instance = f"urn:uuid:{uuid.uuid4()}"
    device_port = _free_port()
    device = sipp.start(
        "device", f"127.0.0.1:{port}",
        "-sf", str(SCENARIOS / "register_device.xml"),
        "-inf", str(sipp.users("bob.csv", ["bob"])),
        "-key", "domain", DOMAIN, "-key", "q", "0.5", "-key", "instance", instance,
        "-m", "1",
        port=device_port, listening=False,
    )  # fmt: skip
    _passed(device.wait(20), device)
    _passed(registrar.wait(20), registrar)
    assert device.sent("REGISTER")[0].headers["contact"] == [
        f'<sip:bob@127.0.0.1:{device_port}>;q=0.5;+sip.instance="<{instance}>"'
    ]


# -- forking through a cluster --------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Node]]:
    """Three SIP nodes, for the module: each test calls a user of its own."""
    extra = ["--sip-fork-timeout", str(FORK_TIMEOUT)]
    with cluster_of(tmp_path_factory.mktemp("fork-cluster"), 3, extra=extra) as nodes:
        yield nodes


@dataclass
class Callee:
    """One user's devices and where calls to it come in."""

    sipp: Sipp
    user: str
    entry: Node  # owns nothing of the user: stateless, record-routes
    registrar: Node  # the user's second owner, where the devices register

    def register(self, name: str, port: int, q: str) -> None:
        """A device of the user registers from `port` (register_device.xml, then it exits)."""
        reg = self.sipp.start(
            f"register-{name}", f"127.0.0.1:{self.registrar.sip_port}",
            "-sf", str(SCENARIOS / "register_device.xml"),
            "-inf", str(self.sipp.users(f"{self.user}.csv", [self.user])),
            "-key", "domain", DOMAIN,
            "-key", "q", q, "-key", "instance", f"urn:uuid:{uuid.uuid4()}",
            "-m", "1",
            port=port, listening=False,
        )  # fmt: skip
        _passed(reg.wait(20), reg)

    def device(self, name: str, port: int, scenario: str, *keys: str) -> SippProcess:
        """The device registered from `port` answers there (one call)."""
        return self.sipp.start(
            name, "-sf", str(SCENARIOS / scenario), *keys, "-m", "1",
            port=port, limit=DEVICE_LIMIT,
        )  # fmt: skip

    def call(self, scenario: str, *keys: str) -> tuple[SippProcess, dict[str, int]]:
        """alice calls the user through the entry node (one call); returns once it ended, with
        its final statistics."""
        caller = self.sipp.start(
            "caller", f"127.0.0.1:{self.entry.sip_port}",
            "-sf", str(SCENARIOS / scenario), *keys,
            "-inf", str(self.sipp.users("alice.csv", ["alice"])),
            "-key", "domain", DOMAIN, "-s", self.user,
            "-m", "1",
            port=_free_port(), listening=False, limit=CALLER_LIMIT,
        )  # fmt: skip
        return caller, caller.wait(CALLER_LIMIT + 10)


def _callee(cluster: dict[str, Node], sipp: Sipp, user: str) -> Callee:
    owners = next(iter(cluster.values())).owners(f"sip:{user}@{DOMAIN}")
    assert len(owners) == 2, owners
    (entry,) = (node for name, node in cluster.items() if name not in owners)
    return Callee(sipp, user, entry, cluster[owners[1]])


def _fork_counts(cluster: dict[str, Node]) -> Counter[str]:
    return fork_counts(cluster.values())


def _answers(caller: SippProcess, status: int) -> set[str | None]:
    """The To tags of the `status` responses to the INVITE the caller got: one per branch
    (device) that sent one."""
    return {
        m.to_tag for m in caller.received("SIP/2.0") if m.status == status and m.method == "INVITE"
    }


def _tag(device: SippProcess, status: int) -> str | None:
    """The To tag `device` answered the INVITE with."""
    return next(m.to_tag for m in device.sent(f"SIP/2.0 {status}") if m.method == "INVITE")


def test_equal_q_devices_ring_together_the_first_to_answer_wins(
    cluster: dict[str, Node], sipp: Sipp
) -> None:
    """(a) Two devices of one user (two instances, equal q): both ring at once; one answers
    after 1 s, and the other then gets CANCEL and answers 487. The caller gets the 100 from
    the owner, both 180s and exactly one 200."""
    bob = _callee(cluster, sipp, "bob-parallel")
    answers_port, rings_port = _free_port(), _free_port()
    bob.register("answers", answers_port, "1.0")
    bob.register("rings", rings_port, "1.0")
    answers = bob.device("answers", answers_port, "uas_answer_after.xml", "-key", "delay", "1000")
    rings = bob.device("rings", rings_port, "uas_cancelled.xml")

    before = _fork_counts(cluster)
    caller, stats = bob.call("uac_one_answer.xml")
    _passed(stats, caller)
    _passed(answers.wait(DEVICE_LIMIT), answers)
    _passed(rings.wait(DEVICE_LIMIT), rings)

    assert caller.received("SIP/2.0 100"), "no 100 Trying from the owner"
    assert _answers(caller, 180) == {_tag(answers, 180), _tag(rings, 180)}
    assert _answers(caller, 200) == {_tag(answers, 200)}
    # The losing branch was cancelled because the other one answered: one CANCEL sent by the
    # cluster, and no branch timed out nor did the caller cancel. (Not by the two sipp
    # processes' clocks: each stamps a message when it logs it, after sending it, so the
    # CANCEL can be stamped before the 200 that caused it.)
    assert rings.received("CANCEL")
    moved = _fork_counts(cluster) - before
    assert moved == Counter({"cancels_sent": 1}), moved


def test_the_caller_cancels_every_ringing_device(cluster: dict[str, Node], sipp: Sipp) -> None:
    """(b) Both devices ring; the caller hangs up (CANCEL): it gets 200 for the CANCEL and 487
    for the INVITE, and each device gets a CANCEL of its own, answers 487 and gets the ACK."""
    bob = _callee(cluster, sipp, "bob-cancel")
    ports = {"first": _free_port(), "second": _free_port()}
    for name, port in ports.items():
        bob.register(name, port, "1.0")
    devices = [bob.device(name, port, "uas_cancelled.xml") for name, port in ports.items()]

    before = _fork_counts(cluster)
    caller, stats = bob.call("uac_cancel.xml", "-key", "rings", "2")
    _passed(stats, caller)
    for device in devices:
        _passed(device.wait(DEVICE_LIMIT), device)

    assert _answers(caller, 487), "no 487 for the INVITE"
    assert caller.sent("CANCEL")
    for device in devices:
        assert device.received("CANCEL"), device.name
    # Because the caller cancelled: its CANCEL taken, one sent to each device, no timeout.
    moved = _fork_counts(cluster) - before
    assert moved == Counter({"cancels_received": 1, "cancels_sent": 2}), moved


def test_q_groups_ring_one_after_the_other(cluster: dict[str, Node], sipp: Sipp) -> None:
    """(c) q=1.0 rings and does not answer; q=0.5 answers. The first is cancelled after the
    fork timeout, and only then does the second ring; it answers and the call completes."""
    bob = _callee(cluster, sipp, "bob-serial")
    high_port, low_port = _free_port(), _free_port()
    bob.register("high", high_port, "1.0")
    bob.register("low", low_port, "0.5")
    high = bob.device("high", high_port, "uas_cancelled.xml")
    low = bob.device("low", low_port, "uas_answer_after.xml", "-key", "delay", "0")

    before = _fork_counts(cluster)
    caller, stats = bob.call("uac_one_answer.xml")
    _passed(stats, caller)
    _passed(high.wait(DEVICE_LIMIT), high)
    _passed(low.wait(DEVICE_LIMIT), low)

    assert _answers(caller, 200) == {_tag(low, 200)}
    assert high.received("CANCEL")
    # The q=0.5 device was not rung with the first group: only after q=1.0 had rung (its 180
    # is seconds, a fork timeout, before; the virtual-time tests in test_sip_fork.py hold the
    # timeout itself to the millisecond).
    assert low.received("INVITE")[0].at > high.sent("SIP/2.0 180")[0].at
    # q=1.0 was cancelled by the group's timeout: nobody answered or cancelled, and no
    # transaction timed out (timer C is far longer).
    moved = _fork_counts(cluster) - before
    assert moved == Counter({"cancels_sent": 1}), moved


@pytest.mark.parametrize("dead_q", ["1.0", "0.5"], ids=["dead_preferred", "equal_q"])
def test_a_dead_contact_does_not_hold_up_the_call(
    cluster: dict[str, Node], sipp: Sipp, dead_q: str
) -> None:
    """(d) One binding's contact has nothing listening (registered from a port that was then
    freed: UDP port unreachable), another device answers at once: the call completes with
    one 200. With the dead contact in a higher q group than the live device, the dead branch
    fails at once (a 503 inside the owner) rather than after the fork timeout: the live
    device rings before the fork timeout could have run out."""
    bob = _callee(cluster, sipp, f"bob-dead-{dead_q.replace('.', '')}")
    dead_port, live_port = _free_port(), _free_port()
    # The dead one last: a proxy that rang only the best binding (highest q, then the most
    # recently registered) would ring nothing else.
    bob.register("live", live_port, "0.5")
    bob.register("dead", dead_port, dead_q)  # that sipp has exited: nothing on dead_port now
    assert not udp_bound(dead_port)
    live = bob.device("live", live_port, "uas_answer_after.xml", "-key", "delay", "0")

    before = _fork_counts(cluster)
    caller, stats = bob.call("uac_one_answer.xml")
    _passed(stats, caller)
    _passed(live.wait(DEVICE_LIMIT), live)

    assert _answers(caller, 200) == {_tag(live, 200)}
    if dead_q == "1.0":
        # The dead q=1.0 branch failed on its transport error (the port unreachable), not
        # by the group's timeout: nothing timed out, nothing was cancelled.
        moved = _fork_counts(cluster) - before
        assert moved == Counter({"branch_transport_errors": 1}), moved
