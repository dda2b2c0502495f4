"""`swimthor location AOR`: an AOR's bindings as each of its owners holds them.

What the owners' copies are folded into (`location_reply`) and how it is printed
(`format_location_text`) are pure and tested on their own; then two in-process agents, a
REGISTER over UDP, and the control command, the CLI (`--control` and `--via`) and its errors
against them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TypedDict, Unpack

import pytest
import structlog
import trio
from agent_helpers import agent_config, cli_in_thread

from bench._procs import trio_wait_until as wait_for
from swimthor.agent import Agent
from swimthor.cli import format_location_text, main
from swimthor.config import AgentConfig, SipConfig
from swimthor.control import ControlError, call
from swimthor.sip import Binding, location_reply, subscriber_record

AOR = "sip:alice@example.com"
NOW = 2_000_000_000.0
INSTANCE = '"<urn:uuid:00000000-0000-1000-8000-aabbccddeeff>"'


class BindingChanges(TypedDict, total=False):
    """The Binding fields these tests set."""

    key: str
    expires_at: float
    q: float
    instance: str
    reg_id: int
    user_agent: str


def binding(contact: str, **changes: Unpack[BindingChanges]) -> Binding:
    b = Binding(AOR, contact, contact, NOW + 600, 1.0, "c1", 7, "udp:10.0.0.2:5060", NOW, "n1")
    return replace(b, **changes)


# ---------------------------------------------------------------- folding the copies


def test_each_binding_is_its_newest_version_with_where_it_is() -> None:
    phone = binding("sip:alice@10.0.0.2", q=0.5, user_agent="Phone/1.0")
    newer = replace(phone, stamp=NOW + 10, cseq=8, expires_at=NOW + 610.4)
    device = binding(
        "sip:alice@10.0.0.3", key="instance:urn:uuid:x;reg-id=1", instance=INSTANCE, reg_id=1
    )
    reply = location_reply(
        AOR,
        ["n1", "n2", "n3"],
        {"n1": [newer, device], "n2": [phone]},
        ["n3"],
        NOW + 20,
        asked="n1",
    )
    assert (reply["aor"], reply["asked"], reply["owners"]) == (AOR, "n1", ["n1", "n2", "n3"])
    assert (reply["answered"], reply["unanswered"]) == (["n1", "n2"], ["n3"])
    first, second = reply["bindings"]  # highest q first
    assert first["contact"] == "sip:alice@10.0.0.3"
    assert (first["instance"], first["reg_id"]) == (INSTANCE, 1)
    assert (first["on"], first["older"], first["missing"]) == (["n1"], [], ["n2"])
    assert second["contact"] == "sip:alice@10.0.0.2"
    assert (second["cseq"], second["expires"], second["user_agent"]) == (8, 590, "Phone/1.0")
    assert (second["on"], second["older"], second["missing"]) == (["n1"], ["n2"], [])
    assert json.loads(json.dumps(reply)) == reply  # what the control socket carries


def test_removed_and_expired_bindings_are_not_listed() -> None:
    live = binding("sip:alice@10.0.0.2")
    tomb = replace(live, stamp=NOW + 1, removed=True, expires_at=NOW + 7200)
    gone = binding("sip:alice@10.0.0.4", expires_at=NOW + 5)
    reply = location_reply(AOR, ["n1", "n2"], {"n1": [tomb, gone], "n2": [live]}, [], NOW + 6,
                           asked="n2")  # fmt: skip
    assert reply["bindings"] == []
    # Nothing held anywhere, nobody answering: still an answer.
    empty = location_reply(AOR, ["n1", "n2"], {}, ["n1", "n2"], NOW, asked="n3")
    assert (empty["bindings"], empty["answered"], empty["unanswered"]) == ([], [], ["n1", "n2"])


# ---------------------------------------------------------------- text


def test_the_text_is_one_line_per_binding_in_aligned_columns() -> None:
    phone = binding("sip:alice@10.0.0.2:5060", user_agent="Phone/1.0 (build 7)")
    device = binding("sip:alice@192.0.2.9:40000", key="i", instance=INSTANCE, reg_id=1, q=0.5)
    reply = location_reply(
        AOR, ["n1", "n2"], {"n1": [phone, device], "n2": [phone]}, [], NOW + 0.4, asked="n1"
    )
    lines = format_location_text(reply).splitlines()
    assert lines[0] == f"{AOR}  owners: n1, n2"
    header, one, two = lines[1:]
    assert header.split() == ["CONTACT", "Q", "EXPIRES", "CALL-ID", "CSEQ", "INSTANCE",
                              "REG-ID", "SOURCE", "EDGE", "FLOW", "ORIGIN", "ON",
                              "USER-AGENT"]  # fmt: skip
    assert one.split()[:12] == ["sip:alice@10.0.0.2:5060", "1", "600", "c1", "7", "-", "-",
                                "udp:10.0.0.2:5060", "-", "udp", "n1", "n1,n2"]  # fmt: skip
    assert one.endswith("Phone/1.0 (build 7)")  # the last column: spaces are fine there
    assert two.split() == ["sip:alice@192.0.2.9:40000", "0.5", "600", "c1", "7",
                           "<urn:uuid:00000000-0000-1000-8000-aabbccddeeff>", "1",
                           "udp:10.0.0.2:5060", "-", "udp", "n1", "n1,n2:missing",
                           "-"]  # fmt: skip
    # Aligned: every column starts where its heading does.
    for word in ("Q", "EXPIRES", "INSTANCE", "ON", "USER-AGENT"):
        at = header.index(f"  {word} ") + 2 if word != "USER-AGENT" else header.index(word)
        assert one[at - 2 : at] == "  " and one[at] != " "


def test_the_text_names_owners_that_did_not_answer_and_says_when_nothing_is_bound() -> None:
    older = binding("sip:alice@10.0.0.2")
    newer = replace(older, stamp=NOW + 1)
    reply = location_reply(AOR, ["n1", "n2", "n3"], {"n1": [newer], "n2": [older]}, ["n3"],
                           NOW, asked="n1")  # fmt: skip
    text = format_location_text(reply)
    assert text.splitlines()[0] == f"{AOR}  owners: n1, n2, n3  (no answer from n3)"
    assert text.splitlines()[2].split()[11] == "n1,n2:older"
    assert format_location_text(location_reply(AOR, [], {}, [], NOW, asked="n1")) == (
        f"{AOR}  owners: none\nno bindings\n"
    )


# ---------------------------------------------------------------- against agents


def sip_config(tmp_path: Path, name: str, seeds: list[tuple[str, int]]) -> AgentConfig:
    sip = SipConfig(bind=("127.0.0.1", 0), domains=["example.com"], auth=False)
    return agent_config(tmp_path, name, seeds, sip=sip)


def register_request(to: tuple[str, int], me: tuple[str, int]) -> bytes:
    contact = f"<sip:alice@{me[0]}:{me[1]}>;+sip.instance={INSTANCE};reg-id=1"
    return "\r\n".join(
        [
            "REGISTER sip:example.com;transport=udp SIP/2.0",
            f"Via: SIP/2.0/UDP {me[0]}:{me[1]};branch=z9hG4bK-loc-1;rport",
            "From: <sip:alice@example.com>;tag=l1",
            "To: <sip:alice@example.com>",
            "Call-ID: loc-call-1",
            "CSeq: 3 REGISTER",
            "Max-Forwards: 70",
            f"Contact: {contact}",
            "Expires: 600",
            "User-Agent: LocPhone/2.1 (test)",
            "Content-Length: 0",
            "",
            "",
        ]
    ).encode()


async def test_location_shows_a_binding_on_both_owners(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = Agent(sip_config(tmp_path, "a", []), keyring=None, handle_signals=False)

    cli = cli_in_thread(capsys)

    with trio.fail_after(30), structlog.testing.capture_logs():
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            assert a.bound_addr is not None
            b = Agent(sip_config(tmp_path, "b", [a.bound_addr]), keyring=None, handle_signals=False)
            await nursery.start(b.run)
            b_addr = b.bound_addr
            assert a.sip is not None and b.sip is not None and b_addr is not None
            services = (a.sip, b.sip)
            # Both are owners (R=2) and know each other's SIP address.
            await wait_for(
                lambda: all(
                    sorted(s.owner_names(AOR)) == ["a", "b"] and len(s.peers()) == 2
                    for s in services
                )
            )

            # A phone registers through a.
            with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as phone:
                await phone.bind(("127.0.0.1", 0))
                me = phone.getsockname()
                await phone.sendto(register_request(a.sip.advertised, me), a.sip.advertised)
                answer = (await phone.recvfrom(65_536))[0]
            assert answer.startswith(b"SIP/2.0 200 ")

            path_a, path_b = str(tmp_path / "a.sock"), str(tmp_path / "b.sock")
            for path in (path_a, path_b):
                reply = await trio.to_thread.run_sync(call, path, "location", {"aor": AOR})
                assert reply["owners"] == a.sip.owner_names(AOR)
                owners = reply["owners"]  # in rank order, and so is everything listing them
                assert sorted(owners) == ["a", "b"]
                assert (reply["answered"], reply["unanswered"]) == (owners, [])
                (bound,) = reply["bindings"]
                assert bound["contact"] == f"sip:alice@{me[0]}:{me[1]}"
                assert (bound["instance"], bound["reg_id"]) == (INSTANCE, 1)
                assert (bound["call_id"], bound["cseq"]) == ("loc-call-1", 3)
                assert bound["user_agent"] == "LocPhone/2.1 (test)"
                assert bound["source"] == f"udp:{me[0]}:{me[1]}"
                assert bound["origin"] in ("a", "b") and 0 < bound["expires"] <= 600
                assert (bound["on"], bound["older"], bound["missing"]) == (owners, [], [])
            # The AOR is written another way that names the same one.
            reply = await trio.to_thread.run_sync(
                call, path_b, "location", {"aor": "sips:alice@EXAMPLE.com:5061;transport=tls"}
            )
            assert reply["aor"] == AOR and len(reply["bindings"]) == 1

            # The CLI, text over the control socket and JSON over --via (the gossip port).
            code, out, err = await cli("location", AOR, "--control", path_a)
            assert (code, err) == (0, "")
            lines = out.splitlines()
            assert lines[0].startswith(f"{AOR}  owners: ")
            assert lines[2].split()[11] == ",".join(owners)
            assert lines[2].endswith("LocPhone/2.1 (test)")
            via = f"{b_addr[0]}:{b_addr[1]}"
            code, out, err = await cli("location", AOR, "--via", via, "--insecure",
                                       "--format", "json")  # fmt: skip
            assert (code, err) == (0, "")
            doc = json.loads(out)
            assert doc["asked"] == "b" and doc["bindings"][0]["on"] == owners

            # Bad input: one line on stderr and a non-zero exit.
            for argv, status, words in (
                (["location", "alice", "--control", path_a], 2, "not a SIP address-of-record"),
                (["location", "sip:example.com", "--control", path_a], 2, "needs a user part"),
                (["location", "sip:alice@other.org", "--control", path_a], 1, "not a domain"),
                (["location", "sip:alice@other.org", "--via", via, "--insecure"], 1,
                 "not a domain"),
            ):  # fmt: skip
                code, out, err = await cli(*argv)
                assert (code, out) == (status, "")
                assert err.startswith("swimthor: error: ") and words in err
                assert err.count("\n") == 1
            with pytest.raises(ControlError, match="unknown argument"):
                await trio.to_thread.run_sync(call, path_a, "location", {"aor": AOR, "x": 1})
            with pytest.raises(ControlError, match='"aor" must be a string'):
                await trio.to_thread.run_sync(call, path_a, "location", {"aor": 7})
            # The subscriber record beside the bindings is never shown.
            a.sip.store.put(subscriber_record(AOR, "secret", stamp=NOW, origin="a"))
            reply = await trio.to_thread.run_sync(call, path_a, "location", {"aor": AOR})
            assert [x["contact"] for x in reply["bindings"]] == [bound["contact"]]
            nursery.cancel_scope.cancel()


async def test_location_on_a_node_without_sip_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    solo = Agent(agent_config(tmp_path, "solo", roles=[]), keyring=None, handle_signals=False)
    with trio.fail_after(30), structlog.testing.capture_logs():
        async with trio.open_nursery() as nursery:
            await nursery.start(solo.run)
            assert solo.bound_addr is not None
            path = str(tmp_path / "solo.sock")
            code = await trio.to_thread.run_sync(main, ["location", AOR, "--control", path])
            out, err = capsys.readouterr()
            assert (code, out) == (1, "")
            assert err.startswith("swimthor: error: ") and "serves no SIP" in err
            via = f"{solo.bound_addr[0]}:{solo.bound_addr[1]}"
            argv = ["location", AOR, "--via", via, "--insecure", "--timeout", "5"]
            code = await trio.to_thread.run_sync(main, argv)
            out, err = capsys.readouterr()
            assert (code, out) == (1, "")
            assert err.startswith("swimthor: error: ") and via in err and "sip role" in err
            nursery.cancel_scope.cancel()
