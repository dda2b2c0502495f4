"""Forking at the owner (RFC 3261 §16.5-16.10), sans-IO: three `Proxy` nodes wired by hand, the
caller and the devices as scripted endpoints, time moved by hand.

`Cluster.deliver` hands a message to a node and follows every node-to-node send; what leaves the
cluster lands in the inbox of the endpoint at that address. `Cluster.advance(t)` moves the clock
and fires the nodes' timers (retransmissions, fork groups, timer C). bob's owners are n2 and n3;
the caller enters at n1, which is not an owner, so every case crosses two hops.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from swimthor.cli import build_agent_config, build_parser, main
from swimthor.config import ConfigError
from swimthor.sip import (
    Peer,
    Proxy,
    ProxySettings,
    Replicate,
    Request,
    Response,
    Send,
    Source,
    TimerSettings,
    parse_message,
)

NOW = 1_000_000.0
CALLER = ("127.0.0.1", 5081)
DESK = ("127.0.0.1", 5090)
SOFT = ("127.0.0.1", 5091)
THIRD = ("127.0.0.1", 5092)
NODES = {n: Peer(n, "127.0.0.1", p) for n, p in (("n1", 5071), ("n2", 5072), ("n3", 5073))}


class Cluster:
    def __init__(self, fork_timeout: float = 10.0) -> None:
        self.now = 0.0  # the monotonic clock of the transactions
        self.inbox: dict[tuple[str, int], list[bytes]] = defaultdict(list)
        self._last_request: dict[tuple[str, int], Request] = {}
        self.nodes = {
            name: Proxy(
                ProxySettings(
                    name,
                    p.host,
                    p.port,
                    frozenset({"example.com"}),
                    fork_timeout=fork_timeout,
                    timers=TimerSettings(),
                ),
                owners=lambda aor, n: [NODES["n2"], NODES["n3"]][:n],
                peers=lambda: NODES,
            )
            for name, p in NODES.items()
        }

    def _node_at(self, host: str, port: int) -> str | None:
        for name, p in NODES.items():
            if (p.host, p.port) == (host, port):
                return name
        return None

    def _run(self, queue: list[tuple[str, bytes, tuple[str, int]]]) -> None:
        for _ in range(200):
            if not queue:
                return
            name, data, frm = queue.pop(0)
            proxy = self.nodes[name]
            for action in proxy.handle(data, Source("udp", *frm), NOW + self.now, self.now):
                self._route(name, action, queue)
        raise AssertionError("messages kept bouncing between nodes")

    def _route(
        self, name: str, action: object, queue: list[tuple[str, bytes, tuple[str, int]]]
    ) -> None:
        if isinstance(action, Replicate):
            for peer in action.peers:
                self.nodes[peer].store.merge(action.changes, NOW + self.now)
            action = action.response
        assert isinstance(action, Send)
        target = self._node_at(action.host, action.port)
        if target is None:
            self.inbox[(action.host, action.port)].append(action.data)
        else:
            me = NODES[name]
            queue.append((target, action.data, (me.host, me.port)))

    def route(self, name: str, actions: list[Send]) -> None:
        """What a node returned outside `handle` (a transport error, say) goes out."""
        queue: list[tuple[str, bytes, tuple[str, int]]] = []
        for action in actions:
            self._route(name, action, queue)
        self._run(queue)

    def deliver(self, data: bytes, frm: tuple[str, int], to: str = "n1") -> None:
        self._run([(to, data, frm)])

    def reply(self, device: tuple[str, int], data: bytes) -> None:
        """A device answers: UAs send responses to where the request came from (the owner)."""
        request = self.last_request(device)
        owner = self._node_at(*request.vias[0].response_target())
        assert owner is not None
        self.deliver(data, device, owner)

    def advance(self, to: float) -> None:
        """Move the clock to `to`, firing every timer due on the way, in order."""
        while True:
            due = [
                (when, name)
                for name, proxy in self.nodes.items()
                if (when := proxy.next_timer()) is not None and when <= to
            ]
            if not due:
                break
            when, name = min(due)
            self.now = when
            queue: list[tuple[str, bytes, tuple[str, int]]] = []
            for action in self.nodes[name].handle_timer(when, NOW + when):
                self._route(name, action, queue)
            self._run(queue)
        self.now = to

    def take(self, who: tuple[str, int]) -> list[Request | Response]:
        return [parse_message(d) for d in self.inbox.pop(who, [])]

    def last_request(self, device: tuple[str, int]) -> Request:
        return self._last_request[device]

    def requests(self, device: tuple[str, int]) -> list[Request]:
        got = [m for m in self.take(device) if isinstance(m, Request)]
        for r in got:
            if r.method in ("INVITE", "MESSAGE", "OPTIONS"):
                self._last_request[device] = r
        return got


def msg(
    method: str,
    uri: str = "sip:bob@example.com",
    *extra: str,
    via: str = "SIP/2.0/UDP 127.0.0.1:5081;branch=z9hG4bK-c1;rport",
    cseq: int = 1,
    call_id: str = "call-1",
    to: str = "<sip:bob@example.com>",
    contact: str = "<sip:alice@127.0.0.1:5081>",
) -> bytes:
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: {via}",
        "From: <sip:alice@example.com>;tag=a",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        "Max-Forwards: 70",
        f"Contact: {contact}",
        *extra,
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def answer(request: Request, status: int, reason: str, tag: str) -> bytes:
    """What a UAS sends back: the request's Vias, From, Call-ID, CSeq; To with its tag."""
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"Via: {v.text}" for v in request.vias]
    to = request.get("to") or ""
    if status > 100 and ";tag=" not in to:
        to += f";tag={tag}"
    lines += [
        f"From: {request.get('from')}",
        f"To: {to}",
        f"Call-ID: {request.call_id}",
        f"CSeq: {request.get('cseq')}",
    ]
    if 200 <= status < 300:
        lines.append(f"Contact: <sip:{tag}@127.0.0.1>")
    lines += ["Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def register(cluster: Cluster, addr: tuple[str, int], instance: str, q: str = "1") -> None:
    contact = f"<sip:bob@{addr[0]}:{addr[1]}>;q={q}"
    if instance:
        contact += f';+sip.instance="<urn:uuid:{instance}>"'
    data = msg(
        "REGISTER",
        "sip:example.com",
        contact=contact,
        via=f"SIP/2.0/UDP {addr[0]}:{addr[1]};branch=z9hG4bK-reg-{addr[1]};rport",
        call_id=f"reg-{addr[1]}",
    )
    cluster.deliver(data, addr)
    (ok,) = cluster.take(addr)
    assert isinstance(ok, Response) and ok.status == 200, ok


def statuses(messages: list[Request | Response]) -> list[int]:
    return [m.status for m in messages if isinstance(m, Response)]


def two_devices(fork_timeout: float = 10.0, q_soft: str = "1") -> Cluster:
    cluster = Cluster(fork_timeout)
    register(cluster, DESK, "00000000-0000-0000-0000-00000000desk")
    register(cluster, SOFT, "00000000-0000-0000-0000-00000000soft", q_soft)
    return cluster


# ====================================================================== parallel forking


def test_both_devices_ring_and_the_one_that_answers_wins_the_other_is_cancelled() -> None:
    c = two_devices()
    c.deliver(msg("INVITE"), CALLER)
    assert statuses(c.take(CALLER)) == [100]  # from the owner, at once
    (desk,) = c.requests(DESK)
    (soft,) = c.requests(SOFT)
    assert desk.method == soft.method == "INVITE"
    assert desk.uri_text == "sip:bob@127.0.0.1:5090" and soft.uri_text == "sip:bob@127.0.0.1:5091"
    assert desk.vias[0].branch != soft.vias[0].branch
    # One Record-Route, from the entry node; the owner's Via on top of the entry's.
    assert desk.get_all("record-route") == ["<sip:127.0.0.1:5071;lr>"]
    assert [v.port for v in desk.vias] == [5072, 5071, 5081]

    c.reply(DESK, answer(desk, 180, "Ringing", "desk"))
    c.reply(SOFT, answer(soft, 180, "Ringing", "soft"))
    assert statuses(c.take(CALLER)) == [180, 180]
    c.advance(1.0)
    c.reply(DESK, answer(desk, 200, "OK", "desk"))
    got = c.take(CALLER)
    assert statuses(got) == [200]
    assert [v.port for v in got[0].vias] == [5081]  # our Vias gone
    # The soft phone gets a CANCEL for its branch (same branch, CSeq number, Request-URI).
    (cancel,) = c.requests(SOFT)
    assert cancel.method == "CANCEL" and cancel.vias[0].branch == soft.vias[0].branch
    assert cancel.cseq == (1, "CANCEL") and cancel.uri_text == soft.uri_text
    # RFC 3326: the phone shows no missed call.
    assert cancel.get("reason") == 'SIP;cause=200;text="Call completed elsewhere"'
    c.reply(SOFT, answer(cancel, 200, "OK", "soft"))
    c.reply(SOFT, answer(soft, 487, "Request Terminated", "soft"))
    # The owner ACKs the 487 hop by hop; the caller hears nothing of it.
    (ack,) = c.requests(SOFT)
    assert ack.method == "ACK" and ack.vias[0].branch == soft.vias[0].branch
    assert ack.to_tag == "soft"
    assert c.take(CALLER) == []
    # The device's 200 retransmitted goes up again (end to end, until the caller's ACK).
    c.reply(DESK, answer(desk, 200, "OK", "desk"))
    assert statuses(c.take(CALLER)) == [200]
    status = c.nodes["n2"].forks.stats
    assert (status["forks"], status["branches"], status["cancels_sent"]) == (1, 2, 1)


def test_one_branch_per_device_instance() -> None:
    c = Cluster()
    register(c, DESK, "00000000-0000-0000-0000-00000000desk")
    register(c, SOFT, "")
    register(c, THIRD, "")
    c.deliver(msg("INVITE"), CALLER)
    assert [len(c.requests(d)) for d in (DESK, SOFT, THIRD)] == [1, 1, 1]


def test_the_caller_cancels_while_both_ring() -> None:
    c = two_devices()
    c.deliver(msg("INVITE"), CALLER)
    (desk,), (soft,) = c.requests(DESK), c.requests(SOFT)
    c.reply(DESK, answer(desk, 180, "Ringing", "desk"))
    c.reply(SOFT, answer(soft, 180, "Ringing", "soft"))
    c.take(CALLER)
    c.deliver(msg("CANCEL"), CALLER)
    assert statuses(c.take(CALLER)) == [200]  # the CANCEL's own answer, from the owner
    for device, request, tag in ((DESK, desk, "desk"), (SOFT, soft, "soft")):
        (cancel,) = c.requests(device)
        assert cancel.method == "CANCEL" and cancel.get("reason") is None
        c.reply(device, answer(cancel, 200, "OK", tag))
        c.reply(device, answer(request, 487, "Request Terminated", tag))
    got = c.take(CALLER)
    assert statuses(got) == [487]  # one final answer, once both branches ended
    assert [r.method for r in c.requests(DESK) + c.requests(SOFT)] == ["ACK", "ACK"]
    # The caller's ACK for the 487 is absorbed at the owner (hop by hop).
    c.deliver(msg("ACK", to=f"<sip:bob@example.com>;tag={got[0].to_tag}"), CALLER)
    assert c.requests(DESK) == [] and c.requests(SOFT) == []
    # A retransmitted CANCEL gets its 200 again, cancels nothing twice.
    c.deliver(msg("CANCEL"), CALLER)
    assert statuses(c.take(CALLER)) == [200]
    assert c.nodes["n2"].forks.stats["cancels_sent"] == 2


def test_a_cancel_before_any_device_rang_is_answered_at_once_and_sent_when_it_rings() -> None:
    c = two_devices()
    c.deliver(msg("INVITE"), CALLER)
    (desk,), (_soft,) = c.requests(DESK), c.requests(SOFT)
    c.take(CALLER)
    c.deliver(msg("CANCEL"), CALLER)
    # §9.1: no CANCEL before a provisional; the caller is not kept waiting for one.
    assert statuses(c.take(CALLER)) == [200, 487]
    assert c.requests(DESK) == []
    c.reply(DESK, answer(desk, 180, "Ringing", "desk"))
    (cancel,) = c.requests(DESK)
    assert cancel.method == "CANCEL"
    assert c.take(CALLER) == []  # the 180 of a cancelled call does not go up


def test_a_6xx_ends_the_search() -> None:
    c = two_devices()
    c.deliver(msg("INVITE"), CALLER)
    (desk,), (soft,) = c.requests(DESK), c.requests(SOFT)
    c.reply(SOFT, answer(soft, 180, "Ringing", "soft"))
    c.take(CALLER)
    c.reply(DESK, answer(desk, 603, "Decline", "desk"))
    assert statuses(c.take(CALLER)) == [603]
    assert [r.method for r in c.requests(SOFT)] == ["CANCEL"]
    assert [r.method for r in c.requests(DESK)] == ["ACK"]


def test_the_best_final_answer_is_of_the_lowest_class() -> None:
    c = two_devices()
    c.deliver(msg("INVITE"), CALLER)
    (desk,), (soft,) = c.requests(DESK), c.requests(SOFT)
    c.take(CALLER)
    c.reply(DESK, answer(desk, 503, "Service Unavailable", "desk"))
    assert c.take(CALLER) == []  # the soft phone is still pending
    c.reply(SOFT, answer(soft, 486, "Busy Here", "soft"))
    assert statuses(c.take(CALLER)) == [486]


def test_a_chosen_503_goes_up_as_500() -> None:
    c = Cluster()
    register(c, DESK, "00000000-0000-0000-0000-00000000desk")
    c.deliver(msg("INVITE"), CALLER)
    (desk,) = c.requests(DESK)
    c.take(CALLER)
    c.reply(DESK, answer(desk, 503, "Service Unavailable", "desk"))
    assert statuses(c.take(CALLER)) == [500]  # §16.7 step 6


# ====================================================================== sequential (q groups)


def test_q_groups_ring_in_turn_after_the_fork_timeout() -> None:
    c = two_devices(fork_timeout=10.0, q_soft="0.5")
    c.deliver(msg("INVITE"), CALLER)
    (desk,) = c.requests(DESK)
    assert c.requests(SOFT) == []  # lower q: not yet
    c.reply(DESK, answer(desk, 180, "Ringing", "desk"))
    c.take(CALLER)
    c.advance(9.9)
    assert c.requests(SOFT) == []
    assert [r.method for r in c.requests(DESK)] == []
    c.advance(10.0)
    assert [r.method for r in c.requests(DESK)] == ["CANCEL"]
    (soft,) = c.requests(SOFT)
    assert soft.method == "INVITE"
    c.reply(SOFT, answer(soft, 200, "OK", "soft"))
    assert statuses(c.take(CALLER)) == [200]


def test_a_failed_group_makes_room_for_the_next_at_once() -> None:
    c = two_devices(q_soft="0.5")
    c.deliver(msg("INVITE"), CALLER)
    (desk,) = c.requests(DESK)
    c.take(CALLER)
    c.reply(DESK, answer(desk, 408, "Request Timeout", "desk"))
    (soft,) = c.requests(SOFT)
    assert soft.method == "INVITE"
    c.reply(SOFT, answer(soft, 486, "Busy Here", "soft"))
    assert statuses(c.take(CALLER)) == [408]  # both 4xx: the first of the class


def test_a_silent_device_times_out_as_408_and_the_next_group_answers() -> None:
    c = two_devices(fork_timeout=100.0, q_soft="0.5")
    c.deliver(msg("INVITE"), CALLER)
    assert [r.method for r in c.requests(DESK)] == ["INVITE"]
    c.take(CALLER)
    c.advance(31.9)
    retransmitted = c.requests(DESK)
    assert [r.method for r in retransmitted] == ["INVITE"] * 6  # timer A
    assert c.requests(SOFT) == []
    c.advance(32.0)  # timer B: the branch counts as 408
    (soft,) = c.requests(SOFT)
    c.reply(SOFT, answer(soft, 200, "OK", "soft"))
    assert statuses(c.take(CALLER)) == [200]


def test_timer_c_cancels_a_branch_that_rings_too_long() -> None:
    c = Cluster(fork_timeout=1000.0)
    register(c, DESK, "00000000-0000-0000-0000-00000000desk")
    c.deliver(msg("INVITE"), CALLER)
    (desk,) = c.requests(DESK)
    c.reply(DESK, answer(desk, 180, "Ringing", "desk"))
    c.take(CALLER)
    c.advance(100.0)
    c.reply(DESK, answer(desk, 183, "Session Progress", "desk"))  # resets timer C
    assert statuses(c.take(CALLER)) == [183]
    c.advance(100.0 + 180.9)
    assert c.requests(DESK) == []
    c.advance(100.0 + 181.0)
    assert [r.method for r in c.requests(DESK)] == ["CANCEL"]
    assert statuses(c.take(CALLER)) == [408]


# ====================================================================== transport failures


def test_a_dead_contact_fails_its_branch_at_once_and_the_other_answers() -> None:
    c = two_devices()
    c.deliver(msg("INVITE"), CALLER)
    (desk,), (soft,) = c.requests(DESK), c.requests(SOFT)
    c.take(CALLER)
    # The kernel hands the desk phone's INVITE back (ICMP port unreachable).
    owner = c.nodes["n2"]
    assert owner.unreachable(desk.to_bytes()[:520], c.now) == []
    assert owner.forks.stats["branch_transport_errors"] == 1
    assert c.take(CALLER) == []  # the soft phone is still ringing
    c.reply(SOFT, answer(soft, 200, "OK", "soft"))
    assert statuses(c.take(CALLER)) == [200]


def test_when_no_device_can_be_reached_the_caller_gets_a_final_answer() -> None:
    c = Cluster()
    register(c, DESK, "00000000-0000-0000-0000-00000000desk")
    c.deliver(msg("INVITE"), CALLER)
    assert [r.method for r in c.requests(DESK)] == ["INVITE"]
    c.take(CALLER)
    (sent,) = [s for s in c.nodes["n2"].forks.clients]
    c.route("n2", c.nodes["n2"].transport_error(sent, c.now))
    assert statuses(c.take(CALLER)) == [500]  # the branch's 503, as §16.7 step 6 sends it
    # Sent to the entry node, which relays it: a stranger's datagram back does nothing.
    assert c.nodes["n2"].unreachable(b"INVITE sip:x SIP/2.0\r\nVia: garbage\r\n", c.now) == []


def test_non_invite_requests_fork_too_and_the_first_2xx_answers() -> None:
    c = two_devices()
    c.deliver(msg("MESSAGE"), CALLER)
    assert c.take(CALLER) == []  # no 100 for a non-INVITE
    (desk,), (soft,) = c.requests(DESK), c.requests(SOFT)
    c.reply(SOFT, answer(soft, 200, "OK", "soft"))
    c.reply(DESK, answer(desk, 200, "OK", "desk"))
    assert statuses(c.take(CALLER)) == [200]
    assert c.requests(DESK) == [] and c.requests(SOFT) == []  # no CANCEL for a MESSAGE


def test_transactions_end_and_are_forgotten() -> None:
    c = two_devices()
    c.deliver(msg("INVITE"), CALLER)
    (desk,), (soft,) = c.requests(DESK), c.requests(SOFT)
    c.reply(DESK, answer(desk, 486, "Busy Here", "desk"))
    c.reply(SOFT, answer(soft, 486, "Busy Here", "soft"))
    trying, busy = c.take(CALLER)
    assert isinstance(trying, Response) and trying.status == 100
    assert isinstance(busy, Response) and busy.status == 486
    c.deliver(msg("ACK", to=f"<sip:bob@example.com>;tag={busy.to_tag}"), CALLER)
    owner = c.nodes["n2"].forks
    assert owner.counts()["server_transactions"] == 1
    c.advance(40.0)  # timers I and D
    assert owner.counts() == {
        "server_transactions": 0,
        "client_transactions": 0,
        "forks_active": 0,
    }
    assert c.nodes["n2"].next_timer() is None


# ====================================================================== configuration


def test_fork_timeout_from_the_flag_and_the_toml_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sip = ["--role", "sip", "--domain", "example.com", "--insecure"]
    args = build_parser().parse_args(["join", *sip, "--sip-fork-timeout", "2.5"])
    cfg = build_agent_config(args)
    assert cfg.sip is not None and cfg.sip.fork_timeout == 2.5
    default = build_agent_config(build_parser().parse_args(["join", *sip]))
    assert default.sip is not None and default.sip.fork_timeout == 30.0
    with pytest.raises(ConfigError, match="--sip-fork-timeout need --role sip"):
        build_agent_config(build_parser().parse_args(["join", "--sip-fork-timeout", "2"]))
    path = tmp_path / "c.toml"
    path.write_text('roles = ["sip"]\n[sip]\ndomains = ["example.com"]\nfork_timeout = 4\n')
    cfg = build_agent_config(build_parser().parse_args(["join", "--config", str(path)]))
    assert cfg.sip is not None and cfg.sip.fork_timeout == 4.0
    path.write_text('roles = ["sip"]\n[sip]\ndomains = ["example.com"]\nfork_timeout = 0\n')
    code = main(["join", "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err  # a configuration error, as a bad flag
    assert "fork_timeout must be > 0" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "soon", "1e9"])
def test_a_bad_fork_timeout_flag_is_one_error_line(
    bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["join", "--role", "sip", "--domain", "example.com", "--sip-fork-timeout", bad])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("swimthor: error: ") and len(err.splitlines()) == 1
    assert "a time is a number of seconds > 0" in err


def test_the_fast_branch_response_path_forwards_what_the_full_path_forwards(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A device's 180 and 200 in the common shape skip the full parse at the owner: the
    bytes that go up must be the ones the parsed path sends."""
    sent: dict[str, list[bytes]] = {}
    for fast in (True, False):
        c = two_devices()
        if not fast:
            for proxy in c.nodes.values():
                monkeypatch.setattr(proxy, "_branch_response_fast", lambda *args: None)
        c.deliver(msg("INVITE"), CALLER)
        c.take(CALLER)
        (desk,), _ = c.requests(DESK), c.requests(SOFT)
        # As sipp writes them: every Via on one line.
        joined = (
            answer(desk, 180, "Ringing", "desk")
            .replace(b"\r\nVia: ", b", ")
            .replace(b"Ringing, ", b"Ringing\r\nVia: ", 1)
        )
        c.reply(DESK, joined)
        c.reply(DESK, answer(desk, 200, "OK", "desk"))
        sent["fast" if fast else "full"] = [m.to_bytes() for m in c.take(CALLER)]
    assert len(sent["fast"]) == 2
    for a, b in zip(sent["fast"], sent["full"], strict=True):
        left, right = parse_message(a), parse_message(b)
        assert isinstance(left, Response) and isinstance(right, Response)
        assert left.status == right.status
        assert [v.text for v in left.vias] == [v.text for v in right.vias]
        assert [v.port for v in left.vias] == [5081]


def test_answered_calls_leave_no_timer_entries_behind() -> None:
    """Each branch schedules timer C (181 s); an answer moves the deadline long before. The
    stale entries must not pile up under steady load (they would keep every context alive
    for 181 s instead of the 32 s of timer L)."""
    c = Cluster()
    register(c, DESK, "00000000-0000-0000-0000-00000000desk")
    owner = c.nodes["n2"].forks
    for i in range(6000):
        c.advance(i * 0.01)  # 100 calls a second
        via = f"SIP/2.0/UDP 127.0.0.1:5081;branch=z9hG4bK-h{i};rport"
        c.deliver(msg("INVITE", call_id=f"h{i}", via=via), CALLER)
        (desk,) = c.requests(DESK)
        c.reply(DESK, answer(desk, 200, "OK", "desk"))
        c.take(CALLER)
        held = len(owner.servers) + len(owner.clients)
        # (a few more than the compaction threshold: entries pushed after its last check)
        assert len(owner._heap) <= 2 * held + 1100, (i, len(owner._heap), held)
    c.advance(100.0)  # timer L of every call
    assert owner.counts()["server_transactions"] == 0
    assert c.nodes["n2"].next_timer() is None
