"""Replication between owners over real loopback TCP: writes, batching, sealing, repair, handoff.

Each node is a `Replicator` with its own `BindingStore`; a tiny listener per node plays the
gossip port's part (read the first frame, offer it to `claim`). Ownership is a table the test
edits, with an epoch counter and the owners of every past epoch, like `RoutingTable`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
import trio

from swimthor.keyring import Keyring
from swimthor.routing import EpochUnavailable
from swimthor.sip import (
    MAX_LOCATED,
    Binding,
    BindingStore,
    LocateError,
    Replicator,
    locate_via,
    subscriber_record,
)

# White-box: the check of a "loc" reply and a link to send a malformed request on.
from swimthor.sip._replication import SYNC_ALONE, _Link, _location_records
from swimthor.sockets import read_frame

NOW = 2_000_000_000.0
KEY = Keyring([b"k" * 32])


def binding(aor: str, contact: str = "sip:x@127.0.0.1:5080", stamp: float = NOW) -> Binding:
    return Binding(
        aor, contact, contact, NOW + 3600, 1.0, "cid", 1, "udp:127.0.0.1:5080", stamp, "n1"
    )


class Ownership:
    def __init__(self, owners: list[str]) -> None:
        self.epoch = 1
        self.history: dict[int, dict[str, list[str]]] = {1: {}}
        self.default = {1: list(owners)}

    def set(self, owners: list[str], per_aor: dict[str, list[str]] | None = None) -> None:
        self.epoch += 1
        self.default[self.epoch] = list(owners)
        self.history[self.epoch] = dict(per_aor or {})

    def at(self, epoch: int, aor: str) -> list[str]:
        if epoch not in self.default:
            raise EpochUnavailable(epoch)
        return self.history[epoch].get(aor, self.default[epoch])

    def now(self, aor: str) -> list[str]:
        return self.at(self.epoch, aor)


class Cluster:
    def __init__(self, names: list[str], owners: list[str], keyring: Keyring | None = KEY) -> None:
        self.own = Ownership(owners)
        self.addrs: dict[str, tuple[str, int]] = {}
        self.keyrings = {n: keyring for n in names}
        self.nodes = {
            n: Replicator(
                n,
                BindingStore(),
                keyring=self._keyring_of(n),
                label="test",
                owners=self.own.now,
                owners_at=self.own.at,
                epoch=lambda: self.own.epoch,
                address=self.addrs.get,
                timeout=1.0,
                clock=lambda: NOW,
                peers=self._others_of(n),
            )
            for n in names
        }

    def _others_of(self, name: str) -> Callable[[], list[str]]:
        """The other members node `name` syncs with: those in the directory (a test may
        take one out)."""
        return lambda: [n for n in self.nodes if n != name and n in self.addrs]

    def _keyring_of(self, name: str) -> Callable[[], Keyring | None]:
        """Node `name`'s keyring as the test holds it now (a test may swap it)."""
        return lambda: self.keyrings[name]

    async def start(self, nursery: trio.Nursery) -> None:
        for name, node in self.nodes.items():
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            self.addrs[name] = ("127.0.0.1", listeners[0].socket.getsockname()[1])
            nursery.start_soon(self._listen, listeners[0], node)
            await nursery.start(node.run)

    async def _listen(self, listener: trio.SocketListener, node: Replicator) -> None:
        async def one(stream: trio.SocketStream) -> None:
            frame = await read_frame(stream, 1 << 20)
            serve = node.claim(frame, ("127.0.0.1", 0))
            if serve is None:
                node.stats.setdefault("refused", 0)
                node.stats["refused"] += 1
                await stream.aclose()
                return
            try:
                await serve(stream)
            finally:
                await trio.aclose_forcefully(stream)  # as the gossip listener does

        async with trio.open_nursery() as nursery:
            while True:
                stream = await listener.accept()
                nursery.start_soon(one, stream)


async def test_a_write_is_confirmed_once_the_peer_holds_it() -> None:
    c = Cluster(["n1", "n2"], ["n1", "n2"])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await c.start(nursery)
            b = binding("sip:bob@example.com")
            assert await c.nodes["n1"].replicate([b], ["n2"])
            assert c.nodes["n2"].store.all("sip:bob@example.com") == [b]
            nursery.cancel_scope.cancel()


async def test_concurrent_writes_share_frames() -> None:
    c = Cluster(["n1", "n2"], ["n1", "n2"])
    results: list[bool] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await c.start(nursery)

            async def write(i: int) -> None:
                results.append(
                    await c.nodes["n1"].replicate([binding(f"sip:u{i}@example.com")], ["n2"])
                )

            async with trio.open_nursery() as writers:
                for i in range(200):
                    writers.start_soon(write, i)
            nursery.cancel_scope.cancel()
    assert results == [True] * 200
    assert len(c.nodes["n2"].store) == 200
    assert c.nodes["n1"].stats["puts_sent"] < 50  # batched, not one frame per write


async def test_an_unreachable_peer_fails_the_write_in_time() -> None:
    c = Cluster(["n1", "n2"], ["n1", "n2"])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await c.start(nursery)
            c.addrs["n2"] = ("127.0.0.1", 1)  # nothing listens there
            start = trio.current_time()
            assert not await c.nodes["n1"].replicate([binding("sip:bob@example.com")], ["n2"])
            assert trio.current_time() - start <= 1.5
            c.addrs.pop("n2")  # not in the directory at all
            assert not await c.nodes["n1"].replicate([binding("sip:bob@example.com")], ["n2"])
            nursery.cancel_scope.cancel()


async def test_a_node_with_another_key_can_neither_write_nor_read() -> None:
    c = Cluster(["n1", "n2"], ["n1", "n2"])
    c.keyrings["n1"] = Keyring([b"z" * 32])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await c.start(nursery)
            assert not await c.nodes["n1"].replicate([binding("sip:bob@example.com")], ["n2"])
            assert len(c.nodes["n2"].store) == 0
            assert c.nodes["n2"].stats.get("refused", 0) >= 1
            nursery.cancel_scope.cancel()


async def test_plaintext_cluster_replicates_and_rejects_sealed_frames() -> None:
    c = Cluster(["n1", "n2"], ["n1", "n2"], keyring=None)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await c.start(nursery)
            assert await c.nodes["n1"].replicate([binding("sip:bob@example.com")], ["n2"])
            c.keyrings["n1"] = KEY
            c.nodes["n1"]._reset(c.nodes["n1"]._links["n2"])
            assert not await c.nodes["n1"].replicate([binding("sip:eve@example.com")], ["n2"])
            assert c.nodes["n2"].store.all("sip:eve@example.com") == []
            nursery.cancel_scope.cancel()


async def test_repair_exchanges_differences_both_ways() -> None:
    c = Cluster(["n1", "n2"], ["n1", "n2"])
    n1, n2 = c.nodes["n1"], c.nodes["n2"]
    only1 = [binding(f"sip:a{i}@example.com") for i in range(30)]
    only2 = [binding(f"sip:b{i}@example.com") for i in range(20)]
    newer = binding("sip:shared@example.com", stamp=NOW + 5)
    older = binding("sip:shared@example.com", stamp=NOW)
    n1.store.merge([*only1, older], NOW)
    n2.store.merge([*only2, newer], NOW)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await c.start(nursery)
            await n1.repair_with("n2")
            nursery.cancel_scope.cancel()
    for store in (n1.store, n2.store):
        assert len(store) == 51
        assert store.all("sip:shared@example.com") == [newer]
    assert await n1.digest_with("n2", NOW) == await n2.digest_with("n1", NOW)


async def test_handoff_moves_keys_to_new_owners_and_drops_them_where_not_owned() -> None:
    c = Cluster(["n1", "n2", "n3"], ["n1", "n2"])
    n1, n3 = c.nodes["n1"], c.nodes["n3"]
    keys = [binding(f"sip:u{i}@example.com") for i in range(50)]
    n1.store.merge(keys, NOW)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await c.start(nursery)
            # n3 joins and takes n1's place as an owner of every key.
            c.own.set(["n3", "n2"])
            n1.routing_changed()
            while len(n1.store) or len(n3.store) < 50:
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    assert len(n3.store) == 50
    assert len(n1.store) == 0
    assert n1.stats["handed_off"] == 50


async def test_a_returning_owner_gets_its_keys_back() -> None:
    c = Cluster(["n1", "n2", "n3"], ["n1", "n2"])
    n1, n2, n3 = (c.nodes[n] for n in ("n1", "n2", "n3"))
    keys = [binding(f"sip:u{i}@example.com") for i in range(40)]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await c.start(nursery)
            n1.store.merge(keys, NOW)
            n2.store.merge(keys, NOW)
            # n1 fails: n3 becomes the second owner; n2 hands the keys to it.
            c.own.set(["n2", "n3"])
            for node in (n2, n3):
                node.routing_changed()
            while len(n3.store) < 40:
                await trio.sleep(0.05)
            # n1 comes back empty (a restart) and owns the keys again.
            n1.store = BindingStore()
            n1._handoff_epoch = c.own.epoch
            c.own.set(["n1", "n2"])
            for node in (n2, n3):
                node.routing_changed()
            while len(n1.store) < 40 or len(n3.store):
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    assert len(n1.store) == 40 and len(n2.store) == 40 and len(n3.store) == 0


async def test_a_stray_copy_goes_to_its_owners_and_is_dropped() -> None:
    # n3 took a copy as a stand-in while an owner did not answer; it owns nothing.
    c = Cluster(["n1", "n2", "n3"], ["n1", "n2"])
    n1, n2, n3 = (c.nodes[n] for n in ("n1", "n2", "n3"))
    strays = [binding(f"sip:s{i}@example.com") for i in range(25)]
    n3.store.merge(strays, NOW)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await c.start(nursery)
            assert await n3.sweep() == 25
            nursery.cancel_scope.cancel()
    assert len(n3.store) == 0
    assert len(n1.store) == 25 and len(n2.store) == 25


# ---------------------------------------------------------------- `swimthor location`


async def test_fetch_location_asks_each_owner_and_names_those_that_do_not_answer() -> None:
    c = Cluster(["n1", "n2", "n3", "n4"], ["n1", "n2"], keyring=KEY)
    aor = "sip:alice@example.com"
    held = binding(aor, "sip:alice@10.0.0.2")
    tomb = replace(binding(aor, "sip:alice@10.0.0.3"), removed=True)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await c.start(nursery)
            for b in (held, tomb, subscriber_record(aor, "secret", stamp=NOW, origin="n2")):
                c.nodes["n2"].store.put(b)
            c.nodes["n3"].store.put(binding("sip:bob@example.com"))
            c.addrs.pop("n4")  # not in the directory
            found, silent = await c.nodes["n1"].fetch_location(aor, ["n2", "n3", "n4"])
            # Tombstones come too (versions are compared); the subscriber record never does.
            assert sorted(found["n2"], key=lambda b: b.contact) == [held, tomb]
            assert found["n3"] == []
            assert silent == ["n4"]
            nursery.cancel_scope.cancel()


async def test_fetch_location_gives_up_on_a_silent_owner_in_time() -> None:
    c = Cluster(["n1", "n2"], ["n1", "n2"])
    c.nodes["n1"].timeout = 0.2
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await c.start(nursery)
            # Something that takes connections on n2's address and never answers.
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            c.addrs["n2"] = ("127.0.0.1", listeners[0].socket.getsockname()[1])
            accepted: list[trio.SocketStream] = []

            async def hold() -> None:
                while True:
                    accepted.append(await listeners[0].accept())

            nursery.start_soon(hold)
            assert await c.nodes["n1"].fetch_location("sip:a@example.com", ["n2"]) == ({}, ["n2"])
            assert accepted  # it was asked
            nursery.cancel_scope.cancel()


def test_a_location_reply_is_checked() -> None:
    aor = "sip:alice@example.com"
    good = binding(aor).to_wire()
    assert _location_records(["loc", [good]], aor) == [binding(aor)]
    assert _location_records(["loc", []], aor) == []
    for reply in (
        None,
        ["loc"],
        ["sub", [good]],
        ["loc", good],  # not a list of bindings
        ["loc", [good[:10]]],
        ["loc", [binding("sip:bob@example.com").to_wire()]],  # another AOR
        ["loc", [subscriber_record(aor, "secret", stamp=NOW, origin="n1").to_wire()]],
        ["loc", [good] * (MAX_LOCATED + 1)],
        ["loc", [good], "more"],
    ):
        assert _location_records(reply, aor) is None, reply


async def test_a_bad_loc_request_closes_the_connection() -> None:
    c = Cluster(["n1", "n2"], ["n1", "n2"])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await c.start(nursery)
            n1 = c.nodes["n1"]
            for body in (None, 7, ["sip:a@example.com"], "x" * 3000):
                link = n1._links.setdefault("n2", _Link("n2"))
                assert await n1._request(link, "loc", body) is None
            assert c.nodes["n2"].stats["bad_frames"] == 4
            nursery.cancel_scope.cancel()


async def test_locate_via_asks_a_member_over_its_gossip_port() -> None:
    c = Cluster(["n1", "n2"], ["n1", "n2"])
    asked: list[str] = []

    async def locate(aor: str) -> dict[str, object]:
        asked.append(aor)
        if aor == "bad":
            raise ValueError("bad is not a SIP address-of-record")
        return {"aor": aor, "bindings": []}

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await c.start(nursery)
            c.nodes["n1"].locate = locate
            where = c.addrs["n1"]
            reply = await locate_via(
                where, "sip:a@example.com", KEY, "test", 5.0, clock=lambda: NOW
            )
            assert reply == {"aor": "sip:a@example.com", "bindings": []}
            with pytest.raises(LocateError, match="bad is not a SIP address-of-record"):
                await locate_via(where, "bad", KEY, "test", 5.0, clock=lambda: NOW)
            with pytest.raises(LocateError, match="serves no SIP"):
                await locate_via(
                    c.addrs["n2"], "sip:a@example.com", KEY, "test", 5.0, clock=lambda: NOW
                )
            # Another key or label: the member does not take the hello.
            other = Keyring([b"o" * 32])
            for keyring, label in ((other, "test"), (KEY, "other"), (None, "test")):
                with pytest.raises(LocateError, match="closed without a reply"):
                    await locate_via(
                        where, "sip:a@example.com", keyring, label, 5.0, clock=lambda: NOW
                    )
            assert asked == ["sip:a@example.com", "bad"]
            nursery.cancel_scope.cancel()
    with pytest.raises(LocateError, match=r"no answer from 127\.0\.0\.1:1"):
        await locate_via(("127.0.0.1", 1), "sip:a@example.com", KEY, "test", 5.0, clock=lambda: NOW)


async def test_an_owner_out_and_back_between_two_handoffs_gets_the_writes_it_missed() -> None:
    # n2 is declared dead (epoch 2: n1 alone owns every key, and acknowledges writes alone)
    # and is back (epoch 3) before n1's handoff runs: the owners at the two ends are the
    # same, but n2 missed what was written in between.
    c = Cluster(["n1", "n2"], ["n1", "n2"])
    n1, n2 = c.nodes["n1"], c.nodes["n2"]
    alone = [binding(f"sip:a{i}@example.com") for i in range(30)]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await c.start(nursery)
            c.own.set(["n1"])
            n1.store.merge(alone, NOW)
            c.own.set(["n1", "n2"])
            assert await n1.handoff()
            nursery.cancel_scope.cancel()
    assert len(n2.store) == 30
    assert n1.stats["handed_off"] == 30


async def test_a_handoff_an_owner_did_not_confirm_runs_again_soon() -> None:
    # n3 gains every key while it cannot be reached; once it can, the handoff that failed
    # runs again after a second or two, not at the next repair round (minutes here).
    c = Cluster(["n1", "n2", "n3"], ["n1", "n2"])
    n1, n3 = c.nodes["n1"], c.nodes["n3"]
    for node in c.nodes.values():
        node.repair_interval = 3600.0
    keys = [binding(f"sip:u{i}@example.com") for i in range(20)]
    n1.store.merge(keys, NOW)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await c.start(nursery)
            reachable = c.addrs.pop("n3")
            c.own.set(["n1", "n3"])
            n1.routing_changed()
            while n1.stats["handoff_retries"] == 0:
                await trio.sleep(0.05)
            assert len(n3.store) == 0
            c.addrs["n3"] = reachable
            while len(n3.store) < 20:
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    assert n1.stats["handoff_retries"] >= 1


async def test_a_node_that_starts_empty_is_syncing_until_its_digests_agree() -> None:
    # n2 starts with nothing (a restart that lost its store); n1 holds every key. n2 says
    # "syncing: 0 of 1" until a digest exchange with n1 finds nothing left to exchange
    # (this one brings the keys itself: there is no epoch change, so no handoff).
    c = Cluster(["n1", "n2"], ["n1", "n2"])
    n1, n2 = c.nodes["n1"], c.nodes["n2"]
    n1.store.merge([binding(f"sip:u{i}@example.com") for i in range(100)], NOW)
    assert n2.sync_state() == "syncing: 0 of 0"  # it knows no member yet
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await c.start(nursery)
            assert n2.sync_state() == "syncing: 0 of 1"
            while n2.sync_state() != "synced":
                await trio.sleep(0.05)
            assert len(n2.store) == 100
            nursery.cancel_scope.cancel()


async def test_a_silent_peer_keeps_a_node_syncing() -> None:
    c = Cluster(["n1", "n2", "n3"], ["n1", "n2"])
    n1 = c.nodes["n1"]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await c.start(nursery)
            c.addrs["n3"] = ("127.0.0.1", 1)  # n3 is live but nothing answers there
            while n1.sync_state() != "syncing: 1 of 2":
                await trio.sleep(0.05)
            tried = n1.stats["connect_failures"]
            while n1.stats["connect_failures"] < tried + 2:  # two more rounds asked n3
                await trio.sleep(0.05)
            assert n1.sync_state() == "syncing: 1 of 2"
            del c.addrs["n3"]  # declared dead: it is no longer waited for
            while n1.sync_state() != "synced":
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()


async def test_the_first_member_of_a_cluster_is_synced_once_it_has_been_alone_a_while(
    autojump_clock: trio.testing.MockClock,
) -> None:
    c = Cluster(["n1"], ["n1"])
    n1 = c.nodes["n1"]
    start = trio.current_time()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await c.start(nursery)
            while n1.sync_state() != "synced":
                await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    assert trio.current_time() - start >= SYNC_ALONE
