"""`swimthor route` and the routing part of `status`: argument checks, text output, shares.

The live-cluster behaviour (every agent answers alike, the replica takes over after a kill) is
in tests/test_processes.py.
"""

from __future__ import annotations

import pytest

from swimthor.agent import routing_status
from swimthor.cli import format_route_text, format_status_text, main
from swimthor.control_commands import route_reply
from swimthor.membership import Member, State
from swimthor.routing import RoutingTable


def _table(*specs: tuple[str, tuple[str, ...], float]) -> RoutingTable:
    t = RoutingTable(roles=None)
    t.sync(
        Member(
            name=name,
            addr=("127.0.0.1", 7000 + i),
            dc="dc1",
            roles=roles,
            weight=weight,
            tags={},
            incarnation=1,
            state=State.ALIVE,
            since=0.0,
        )
        for i, (name, roles, weight) in enumerate(specs)
    )
    return t


def test_route_reply_ranks_and_formats() -> None:
    t = _table(("a", ("sip",), 1.0), ("b", ("sip",), 1.0), ("c", ("dns",), 1.0))
    r = route_reply(t, "sip:alice@example.com", 2, "sip", None)
    assert r["key"] == "sip:alice@example.com" and r["epoch"] == t.epoch
    assert sorted(o["name"] for o in r["owners"]) == ["a", "b"]
    assert [o["name"] for o in r["owners"]] == [x.name for x in t.owners(r["key"], 2, "sip")]
    text = format_route_text(r)
    assert "RANK" in text and text.index(r["owners"][0]["name"]) < text.index("127.0.0.1:700")
    assert "no live member" in format_route_text(route_reply(t, "k", 2, "sip", "elsewhere"))


@pytest.mark.parametrize(
    ("key", "replicas", "role", "dc", "says"),
    [
        ("", 2, "sip", None, "key"),
        (5, 2, "sip", None, "key"),
        ("x" * 1025, 2, "sip", None, "key"),
        ("k", 0, "sip", None, "replicas"),
        ("k", 17, "sip", None, "replicas"),
        ("k", True, "sip", None, "replicas"),
        ("k", "2", "sip", None, "replicas"),
        ("k", 2, "", None, "role"),
        ("k", 2, "sip", 3, "dc"),
    ],
)
def test_route_reply_refuses_bad_arguments(
    key: object, replicas: object, role: object, dc: object, says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        route_reply(_table(("a", ("sip",), 1.0)), key, replicas, role, dc)


def test_status_shows_key_space_shares_by_weight() -> None:
    t = _table(("a", ("sip",), 1.0), ("b", ("sip",), 3.0))
    st = routing_status(t)
    assert st["shares"]["sip"] == {"a": 0.25, "b": 0.75}
    text = format_status_text({"name": "a", "routing": st})
    assert "key space (sip): a 25.0%  b 75.0%" in text


def test_route_without_an_agent_is_one_clear_line(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["route", "sip:bob@example.com", "--control", f"{tmp_path}/none.sock"])
    err = capsys.readouterr().err
    assert rc != 0 and len(err.strip().splitlines()) == 1
