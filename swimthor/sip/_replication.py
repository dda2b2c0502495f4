"""Bindings kept on every owner of their address-of-record: writes, handoff and repair.

The channel: long-lived TCP connections to the peer's *gossip* port, so a cluster needs no
extra port open between its nodes. The gossip listener hands a connection to us when its
first frame opens as ours (`claim`). Frames are the gossip framing (4-byte length) and each
is sealed with the cluster keyring under the label ``<label>/sip-replica`` (or wrapped in the
plaintext envelope with `--insecure`), so a replication frame can never be taken for a gossip
packet or the other way round, and a stranger can neither read nor write bindings.

Messages (CBOR arrays):

- ``["hello", 1, name]``: first frame on a connection, names the sender;
- ``["put", seq, [binding...]]`` → ``["ack", seq, stored]``: store if newer (merge rule);
- ``["digest", seq, {bucket: xor}]`` → ``["diff", seq, [bucket...], [binding...]]``:
  anti-entropy over the addresses-of-record both ends own; the asker merges the answer and
  puts back its own bindings of the buckets that differed;
- ``["sub", seq, aor]`` → ``["sub", seq, binding | null]`` and ``["subs", seq, null]`` →
  ``["subs", seq, [aor...]]``: a subscriber record, every subscriber held;
- ``["loc", seq, aor]`` → ``["loc", seq, [binding...]]``: the contact records (tombstones
  too, never the subscriber record) held for one AOR, for `swimthor location`;
- ``["locate", seq, aor]`` → ``["locate", seq, {...}]``: the whole `swimthor location` answer
  as this node gathers it from the AOR's owners (what `swimthor location --via` asks; the
  `{"error": text}` form when it cannot).

Three jobs use it:

1. **Writes**: `replicate(changes, peers)` returns once every named peer has acknowledged
   (True) or `timeout` passed (False). Writes queued for a peer in the same scheduler tick go
   in one frame, so under load replication costs one frame per peer per batch, not per
   REGISTER.
2. **Handoff**: after the routing epoch moves, each address-of-record whose owners changed
   is pushed to its new owners; a node that is no longer an owner drops it once the head
   owner acknowledged. A returning node gets its keys back the same way.
3. **Repair**: every `repair_interval` seconds, digests with every co-owner; differences are
   exchanged both ways.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import cbor2
import structlog
import trio

from ..config import format_hostport
from ..keyring import Keyring, SealError, new_nonce, open_frame, seal_frame
from ..membership import Addr
from ..routing import EpochUnavailable
from ..sockets import FrameError, encode_frame, read_frame, reason
from ._bindings import (
    EXPIRE_BUDGET,
    MAX_FIELD_LENGTH,
    SUBSCRIBER_KEY,
    Binding,
    BindingStore,
    aor_bucket,
)

__all__ = ["MAX_FRAME", "LocateError", "Replicator", "expire_due", "locate_via"]

log = structlog.get_logger("swimthor.sip.replication")

PROTOCOL = 1
MAX_FRAME = 8 << 20  # a put or diff carries at most this many bytes
MAX_BATCH = 2_000  # bindings per put frame
MAX_LISTED = 100_000  # subscriber AORs one node reports to `subscriber list`
MAX_LOCATED = 1_000  # contact records one node reports for one AOR (`swimthor location`)
# A handoff whose push an owner did not confirm (one that just came back and is still busy)
# runs again after this many seconds, doubling up to HANDOFF_RETRY_MAX, not at the next repair
# round: until it lands the owner that gained an AOR answers for it without its bindings.
HANDOFF_RETRY = 1.0
HANDOFF_RETRY_MAX = 30.0
# A node that starts waits this long (for its join, and the others' handoff to begin), then
# exchanges digests with every other member at most every SYNC_RETRY seconds until they agree.
SYNC_START = 1.0
SYNC_RETRY = 2.0
# A node that sees no other member for this long after it started is alone (the first of a
# cluster): synced.
SYNC_ALONE = 10.0
# A handoff looks at the owners of every epoch since the last one that completed, up to this
# many; beyond that it takes every other owner as one that may lack writes (pushes to all).
HANDOFF_EPOCHS = 16
CLIENT_NAME = "swimthor-cli"  # the hello of `swimthor location --via`
_LABEL_SUFFIX = "/sip-replica"


def _decode(data: bytes) -> list[Any]:
    if len(data) > MAX_FRAME:
        raise ValueError("frame too large")
    try:
        value = cbor2.loads(data)
    except Exception as e:  # cbor2 raises CBORDecodeError, ValueError and friends
        raise ValueError(f"bad CBOR: {e}") from None
    if not isinstance(value, list) or not value or not isinstance(value[0], str):
        raise ValueError("a replication message is an array starting with its kind")
    return value


class _Link:
    """Our outgoing connection to one peer, with the writes waiting to go in one frame."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stream: trio.SocketStream | None = None
        self.lock = trio.Lock()
        self.waiting: dict[int, tuple[trio.Event, list[Any]]] = {}
        self.batch: list[Binding] = []
        self.batch_done: trio.Event | None = None
        self.batch_result: list[bool] = [False]
        self.flushing = False


class Replicator:
    def __init__(
        self,
        name: str,
        store: BindingStore,
        *,
        keyring: Callable[[], Keyring | None],
        label: str,
        owners: Callable[[str], list[str]],
        owners_at: Callable[[int, str], list[str]],
        epoch: Callable[[], int],
        address: Callable[[str], Addr | None],
        replicas: int = 2,
        timeout: float = 1.0,
        repair_interval: float = 30.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        peers: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        """`peers`: the other live members that hold bindings (the ones a node that starts
        syncs with before it says "synced"; none: it never waits)."""
        self.name = name
        self._peers = peers or (lambda: ())
        # The peers whose last digest exchange found nothing to exchange, and whether the
        # start-up sync is over (`sync_state`).
        self._in_sync: set[str] = set()
        self._synced = False
        self.store = store
        self._keyring = keyring
        self._label = label + _LABEL_SUFFIX
        self._owners = owners  # aor -> names of its live owners, first first
        self._owners_at = owners_at
        self._epoch = epoch
        self._address = address  # member name -> gossip address
        self.replicas = replicas
        self.timeout = timeout
        self.repair_interval = repair_interval
        self._clock = clock
        self._rng = rng or random.Random()
        self._links: dict[str, _Link] = {}
        self._seq = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        # `swimthor location --via`: the service's gathering of an AOR's bindings from its
        # owners (set by SipService); None answers "locate" with an error.
        self.locate: Callable[[str], Awaitable[dict[str, Any]]] | None = None
        self._epoch_moved = trio.Event()
        self._handoff_epoch = 0
        self.stats: dict[str, int] = {
            "puts_sent": 0,
            "bindings_sent": 0,
            "puts_received": 0,
            "bindings_received": 0,
            "acks_timed_out": 0,
            "connect_failures": 0,
            "bad_frames": 0,
            "handoff_runs": 0,
            "handed_off": 0,
            "handoff_retries": 0,
            "dropped_not_owner": 0,
            "repairs": 0,
            "repaired": 0,
        }

    # ------------------------------------------------------------ framing

    def _seal(self, message: list[Any]) -> bytes:
        data = cbor2.dumps(message)
        sealed = seal_frame(self._keyring(), data, self._label, self._clock(), new_nonce())
        return encode_frame(sealed)

    def _open(self, frame: bytes) -> list[Any]:
        return _decode(open_frame(self._keyring(), frame, self._label, self._clock()))

    # ------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._handoff_epoch = self._epoch()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._handoff_loop)
                nursery.start_soon(self._repair_loop)
                nursery.start_soon(self._expiry_loop)
                nursery.start_soon(self._sync_loop)
                task_status.started()
        finally:
            self._nursery = None
            for link in self._links.values():
                if link.stream is not None:
                    link.stream.socket.close()

    def routing_changed(self) -> None:
        self._epoch_moved.set()

    # ------------------------------------------------------------ writes

    async def replicate(self, changes: list[Binding], peers: list[str]) -> bool:
        """Put `changes` on every peer in `peers`; True once all acknowledged in time."""
        confirmed = await self.replicate_each(changes, peers)
        return len(confirmed) == len(set(peers))

    async def replicate_each(self, changes: list[Binding], peers: list[str]) -> set[str]:
        """Put `changes` on every peer in `peers` at once; the peers that acknowledged in
        time. No cancel scope of our own (one per REGISTER costs more than the rest of the
        write): each frame's request is bounded by `timeout`, so every batch ends in time."""
        if not peers or self._nursery is None:
            return set()
        waits = [(peer, *self._join_batch(peer, changes)) for peer in dict.fromkeys(peers)]
        confirmed: set[str] = set()
        for peer, done, result in waits:
            await done.wait()
            if result[0]:
                confirmed.add(peer)
        if len(confirmed) < len(waits):
            self.stats["acks_timed_out"] += 1
        return confirmed

    def _join_batch(self, peer: str, changes: list[Binding]) -> tuple[trio.Event, list[bool]]:
        """Add `changes` to the frame going to `peer` next; its (done, [ok]) pair."""
        link = self._links.get(peer)
        if link is None:
            link = self._links[peer] = _Link(peer)
        if link.batch_done is None:
            link.batch_done = trio.Event()
            link.batch_result = [False]
        done, result = link.batch_done, link.batch_result
        link.batch.extend(changes)
        if not link.flushing and self._nursery is not None:
            link.flushing = True
            self._nursery.start_soon(self._flush, link)
        return done, result

    async def _flush(self, link: _Link) -> None:
        try:
            while link.batch:
                await trio.sleep(0)  # let every writer of this tick join the batch
                batch, link.batch = link.batch, []
                done, result = link.batch_done, link.batch_result
                link.batch_done = None
                ok = True
                for start in range(0, len(batch), MAX_BATCH):
                    ok = ok and await self._put(link, batch[start : start + MAX_BATCH])
                result[0] = ok
                if done is not None:
                    done.set()
        finally:
            link.flushing = False

    async def _put(self, link: _Link, bindings: list[Binding]) -> bool:
        reply = await self._request(link, "put", [b.to_wire() for b in bindings])
        if reply is None:
            return False
        self.stats["puts_sent"] += 1
        self.stats["bindings_sent"] += len(bindings)
        return bool(reply[0] == "ack")

    async def _request(self, link: _Link, kind: str, body: Any) -> list[Any] | None:
        """Send one request on the link and wait for its reply; None if the peer is
        unreachable or does not answer within `timeout`."""
        seq = next(self._seq)
        event = trio.Event()
        slot: list[Any] = []
        link.waiting[seq] = (event, slot)
        try:
            with trio.move_on_after(self.timeout):
                stream = await self._stream(link)
                if stream is None:
                    return None
                try:
                    async with link.lock:
                        await stream.send_all(self._seal([kind, seq, body]))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    self._reset(link)
                    return None
                await event.wait()
                return slot[0] if slot else None
            return None
        finally:
            link.waiting.pop(seq, None)

    async def _stream(self, link: _Link) -> trio.SocketStream | None:
        if link.stream is not None:
            return link.stream
        addr = self._address(link.name)
        if addr is None:
            return None
        async with link.lock:
            if link.stream is not None:
                return link.stream
            try:
                stream = await trio.open_tcp_stream(addr[0], addr[1])
                await stream.send_all(self._seal(["hello", PROTOCOL, self.name]))
            except (OSError, trio.BrokenResourceError):
                self.stats["connect_failures"] += 1
                return None
            link.stream = stream
            if self._nursery is not None:
                self._nursery.start_soon(self._read_replies, link, stream)
            return stream

    def _reset(self, link: _Link) -> None:
        if link.stream is not None:
            link.stream.socket.close()
        link.stream = None
        for event, _ in link.waiting.values():
            event.set()

    async def _read_replies(self, link: _Link, stream: trio.SocketStream) -> None:
        try:
            while True:
                frame = await read_frame(stream, MAX_FRAME + 64)
                try:
                    reply = self._open(frame)
                except (SealError, ValueError):
                    self.stats["bad_frames"] += 1
                    break
                if len(reply) < 2 or not isinstance(reply[1], int):
                    self.stats["bad_frames"] += 1
                    break
                waiter = link.waiting.get(reply[1])
                if waiter is not None:
                    waiter[1].append([reply[0], *reply[2:]])
                    waiter[0].set()
        except (FrameError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            if link.stream is stream:
                self._reset(link)

    # ------------------------------------------------------------ inbound

    def claim(self, frame: bytes, addr: Addr) -> Callable[[trio.abc.Stream], Any] | None:
        """The gossip listener offers each new connection's first frame: if it is our hello,
        return the coroutine function that serves the connection."""
        try:
            hello = self._open(frame)
        except (SealError, ValueError):
            return None
        if len(hello) != 3 or hello[0] != "hello" or not isinstance(hello[2], str):
            return None
        peer = hello[2]

        async def serve(stream: trio.abc.Stream) -> None:
            await self._serve(stream, peer)

        return serve

    async def _serve(self, stream: trio.abc.Stream, peer: str) -> None:
        """Answer a peer's requests on its connection. Puts are answered in order as they
        come; a digest (a walk over every AOR held here) is answered from a task of its own,
        so the writes behind it are not kept waiting past their timeout."""
        send_lock = trio.Lock()

        async def reply(message: list[Any]) -> None:
            async with send_lock:
                await stream.send_all(self._seal(message))

        async def answer_later(message: list[Any]) -> None:
            try:
                await reply(await self._answer(message, peer))
            except ValueError as e:
                self.stats["bad_frames"] += 1
                log.warning("bad replication frame", peer=peer, reason=str(e))
                await trio.aclose_forcefully(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

        async with trio.open_nursery() as nursery:
            try:
                while True:
                    frame = await read_frame(stream, MAX_FRAME + 64)
                    try:
                        message = self._open(frame)
                        if message and message[0] in ("digest", "locate"):
                            # Both take a while (a walk, a round trip to other owners).
                            nursery.start_soon(answer_later, message)
                            continue
                        answer = await self._answer(message, peer)
                    except (SealError, ValueError) as e:
                        self.stats["bad_frames"] += 1
                        log.warning("bad replication frame", peer=peer, reason=str(e))
                        return
                    await reply(answer)
                    await trio.sleep(0)
            except (FrameError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            finally:
                nursery.cancel_scope.cancel()

    async def _answer(self, message: list[Any], peer: str) -> list[Any]:
        if len(message) != 3 or not isinstance(message[1], int):
            raise ValueError("a request is [kind, seq, body]")
        kind, seq, body = message
        now = self._clock()
        if kind == "put":
            if not isinstance(body, list) or len(body) > MAX_BATCH:
                raise ValueError("put carries a list of at most MAX_BATCH bindings")
            bindings = [Binding.from_wire(item) for item in body]
            stored = self.store.merge(bindings, now)
            self.stats["puts_received"] += 1
            self.stats["bindings_received"] += len(bindings)
            return ["ack", seq, len(stored)]
        if kind == "digest":
            if not isinstance(body, dict) or not all(
                isinstance(k, int) and isinstance(v, int) for k, v in body.items()
            ):
                raise ValueError("digest carries {bucket: int}")
            ours = await self.digest_with(peer, now)
            differ = sorted(b for b in set(ours) | set(body) if ours.get(b, 0) != body.get(b, 0))
            bindings = await self.bindings_in(peer, set(differ), now)
            return ["diff", seq, [differ, [b.to_wire() for b in bindings[: MAX_BATCH * 4]]]]
        if kind == "sub":
            # One AOR's subscriber record, for a node that must check a caller's credentials.
            if not isinstance(body, str) or len(body) > MAX_FIELD_LENGTH:
                raise ValueError("sub carries an address-of-record")
            record = self.store.subscriber(body, now)
            return ["sub", seq, record.to_wire() if record is not None else None]
        if kind == "subs":
            # Every subscriber held here (`swimthor subscriber list` asks every member).
            held = sorted({r.aor for r in self.store.subscribers(now)})
            return ["subs", seq, held[:MAX_LISTED]]
        if kind == "loc":
            # One AOR's contact records as held here (`swimthor location` asks each owner).
            # Never the subscriber record: that is credentials.
            if not isinstance(body, str) or len(body) > MAX_FIELD_LENGTH:
                raise ValueError("loc carries an address-of-record")
            records = self.store.contacts(body)[:MAX_LOCATED]
            return ["loc", seq, [b.to_wire() for b in records]]
        if kind == "locate":
            if not isinstance(body, str) or len(body) > MAX_FIELD_LENGTH:
                raise ValueError("locate carries an address-of-record")
            if self.locate is None:
                return ["locate", seq, {"error": "this node serves no SIP"}]
            try:
                return ["locate", seq, await self.locate(body)]
            except ValueError as e:
                return ["locate", seq, {"error": str(e)}]
        raise ValueError(f"unknown request {kind!r}")

    async def fetch_subscriber(self, aor: str, peers: list[str]) -> Binding | bool | None:
        """The subscriber record of `aor` from the first of `peers` that answers: the record,
        None if that owner holds none, False if none of them answered."""
        for peer in peers:
            link = self._links.get(peer)
            if link is None:
                link = self._links[peer] = _Link(peer)
            reply = await self._request(link, "sub", aor)
            if reply is None or reply[0] != "sub":
                continue
            if reply[1] is None:
                return None
            try:
                record = Binding.from_wire(reply[1])
            except ValueError:
                self.stats["bad_frames"] += 1
                continue
            return record if record.aor == aor and record.key == SUBSCRIBER_KEY else None
        return False

    async def list_subscribers(self, peers: list[str]) -> tuple[set[str], list[str]]:
        """Every subscriber AOR held by `peers` (asked at once); and who did not answer."""
        found: set[str] = set()
        silent: list[str] = []

        async def ask(peer: str) -> None:
            link = self._links.get(peer)
            if link is None:
                link = self._links[peer] = _Link(peer)
            reply = await self._request(link, "subs", None)
            if reply is None or reply[0] != "subs" or not isinstance(reply[1], list):
                silent.append(peer)
                return
            found.update(a for a in reply[1] if isinstance(a, str))

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(ask, peer)
        return found, silent

    async def fetch_location(
        self, aor: str, peers: list[str]
    ) -> tuple[dict[str, list[Binding]], list[str]]:
        """The contact records of `aor` that each of `peers` holds (asked at once, each
        bounded by `timeout`); and the peers that did not answer (or answered nonsense)."""
        found: dict[str, list[Binding]] = {}
        silent: list[str] = []

        async def ask(peer: str) -> None:
            link = self._links.get(peer)
            if link is None:
                link = self._links[peer] = _Link(peer)
            reply = await self._request(link, "loc", aor)
            records = _location_records(reply, aor)
            if records is None:
                if reply is not None:
                    self.stats["bad_frames"] += 1
                silent.append(peer)
            else:
                found[peer] = records

        async with trio.open_nursery() as nursery:
            for peer in dict.fromkeys(peers):
                nursery.start_soon(ask, peer)
        return found, sorted(silent)

    # ------------------------------------------------------------ ownership

    # Anti-entropy walks every AOR held here; it yields to the SIP traffic every CHUNK of
    # them, so a repair round never holds up requests for more than a millisecond or so.
    CHUNK = 256

    async def _co_owned(self, peer: str) -> list[str]:
        out = []
        for i, aor in enumerate(self.store.aors()):
            if i % self.CHUNK == self.CHUNK - 1:
                await trio.sleep(0)
            owners = self._owners(aor)
            if self.name in owners and peer in owners:
                out.append(aor)
        return out

    async def digest_with(self, peer: str, now: float) -> dict[int, int]:
        buckets: dict[int, int] = {}
        for i, aor in enumerate(await self._co_owned(peer)):
            if i % self.CHUNK == self.CHUNK - 1:
                await trio.sleep(0)
            bucket = aor_bucket(aor)
            for b in self.store.all(aor):
                if b.expires_at > now:
                    buckets[bucket] = buckets.get(bucket, 0) ^ b.digest()
        return buckets

    async def bindings_in(self, peer: str, buckets: set[int], now: float) -> list[Binding]:
        out: list[Binding] = []
        if not buckets:
            return out
        for i, aor in enumerate(await self._co_owned(peer)):
            if i % self.CHUNK == self.CHUNK - 1:
                await trio.sleep(0)
            if aor_bucket(aor) in buckets:
                out.extend(b for b in self.store.all(aor) if b.expires_at > now)
        return out

    # ------------------------------------------------------------ handoff

    async def _handoff_loop(self) -> None:
        retry = HANDOFF_RETRY
        while True:
            await self._epoch_moved.wait()
            self._epoch_moved = trio.Event()
            await trio.sleep(0.2)  # let a burst of membership events settle into one epoch
            done = False
            try:
                done = await self.handoff()
            except Exception:
                log.exception("handoff raised")
            if done:
                retry = HANDOFF_RETRY
                continue
            self.stats["handoff_retries"] += 1
            with trio.move_on_after(retry):
                await self._epoch_moved.wait()  # a newer epoch goes at once
            retry = min(retry * 2, HANDOFF_RETRY_MAX)
            self._epoch_moved.set()

    async def handoff(self) -> bool:
        """Push every AOR this node still owns whose owners changed since the last handoff to
        the owners it gained; then `sweep` hands the AORs this node no longer owns to their
        owners and drops them here. False when a push was not confirmed (the epoch stays
        not done, so the loop runs it again)."""
        old_epoch, new_epoch = self._handoff_epoch, self._epoch()
        if old_epoch == new_epoch:
            return True
        self.stats["handoff_runs"] += 1
        pushes: dict[str, list[Binding]] = {}
        now = self._clock()
        for i, aor in enumerate(self.store.aors()):
            if i % self.CHUNK == self.CHUNK - 1:
                await trio.sleep(0)
            new = self._owners(aor)
            if self.name not in new:
                continue  # not ours any more: the sweep below moves it
            held = self._held_throughout(old_epoch, new_epoch, aor)
            gained = [owner for owner in new if owner != self.name and owner not in held]
            if gained:
                live = [b for b in self.store.all(aor) if b.expires_at > now]
                for owner in gained:
                    pushes.setdefault(owner, []).extend(live)
        self._handoff_epoch = new_epoch
        done = True
        for owner, bindings in pushes.items():
            self.stats["handed_off"] += len(bindings)
            if not await self.replicate(bindings, [owner]):
                # Remember the epoch as not done: it runs again (and the next repair round
                # sees it differ too).
                self._handoff_epoch = old_epoch
                done = False
        await self.sweep()
        return done

    def _held_throughout(self, old_epoch: int, new_epoch: int, aor: str) -> set[str]:
        """The members that owned `aor` in every epoch from `old_epoch` (the last handoff
        that completed) up to `new_epoch`: only they took every write acknowledged since.
        Not just the owners at `old_epoch`: an owner declared dead and back between two
        handoffs missed the writes of the epochs it was out of (they were acknowledged on
        the owners there were), though it owns the AOR at both ends. Empty when an epoch is
        outside the routing history (every other owner gets a push)."""
        if new_epoch - old_epoch > HANDOFF_EPOCHS:
            return set()
        held: set[str] | None = None
        try:
            for epoch in range(old_epoch, new_epoch):
                owners = set(self._owners_at(epoch, aor))
                held = owners if held is None else held & owners
        except EpochUnavailable:
            return set()
        return held or set()

    # ------------------------------------------------------------ repair

    async def _repair_loop(self) -> None:
        while True:
            await trio.sleep(self.repair_interval * (0.5 + self._rng.random()))
            try:
                await self.repair_all()
            except Exception:
                log.exception("repair raised")

    async def repair_all(self) -> int:
        """One anti-entropy round with every co-owner; returns bindings changed here. First
        the strays: AORs held here that this node does not own (a write that went to a
        stand-in owner while a real one did not answer, a handoff that failed) go to their
        owners and are dropped here once the first owner has them."""
        await self.sweep()
        peers: set[str] = set()
        for aor in self.store.aors():
            peers.update(self._owners(aor))
        peers.discard(self.name)
        changed = 0
        for peer in sorted(peers):
            changed += await self.repair_with(peer)
        if self._handoff_epoch != self._epoch():
            self._epoch_moved.set()
        return changed

    async def sweep(self) -> int:
        """Hand every AOR held here but not owned here to its owners; drop it once the first
        owner confirmed. Returns how many bindings were dropped."""
        now = self._clock()
        strays: dict[str, list[str]] = {}
        for i, aor in enumerate(self.store.aors()):
            if i % self.CHUNK == self.CHUNK - 1:
                await trio.sleep(0)
            owners = self._owners(aor)
            if owners and self.name not in owners:
                strays.setdefault(owners[0], []).append(aor)
        dropped = 0
        for head, aors in strays.items():
            per_owner: dict[str, list[Binding]] = {}
            for aor in aors:
                live = [b for b in self.store.all(aor) if b.expires_at > now]
                self.stats["handed_off"] += len(live)
                for owner in self._owners(aor):
                    per_owner.setdefault(owner, []).extend(live)
            confirmed: set[str] = set()

            async def put(owner: str, bindings: list[Binding], into: set[str]) -> None:
                into.update(await self.replicate_each(bindings, [owner]))

            async with trio.open_nursery() as nursery:
                for owner, bindings in per_owner.items():
                    nursery.start_soon(put, owner, bindings, confirmed)
            if head in confirmed:
                for aor in aors:
                    if self.name not in self._owners(aor):
                        dropped += self.store.drop(aor)
        self.stats["dropped_not_owner"] += dropped
        return dropped

    async def repair_with(self, peer: str) -> int:
        link = self._links.get(peer)
        if link is None:
            link = self._links[peer] = _Link(peer)
        now = self._clock()
        ours = await self.digest_with(peer, now)
        reply = await self._request(link, "digest", ours)
        if reply is None or reply[0] != "diff" or len(reply) != 2:
            return 0
        try:
            differ, items = reply[1]
            theirs = [Binding.from_wire(item) for item in items]
        except (TypeError, ValueError):
            self.stats["bad_frames"] += 1
            return 0
        self.stats["repairs"] += 1
        if differ:
            self._in_sync.discard(peer)
        else:
            self._in_sync.add(peer)
        now = self._clock()
        # Only keep what we own: the peer's view of ownership may differ from ours.
        changed = 0
        for start in range(0, len(theirs), self.CHUNK):
            chunk = theirs[start : start + self.CHUNK]
            mine = [b for b in chunk if self.name in self._owners(b.aor)]
            changed += len(self.store.merge(mine, now))
            await trio.sleep(0)
        self.stats["repaired"] += changed
        if differ:
            wanted = {int(b) for b in differ if isinstance(b, int)}
            back = await self.bindings_in(peer, wanted, now)
            if back:
                await self.replicate(back, [peer])
        return changed

    # ------------------------------------------------------------ start-up sync

    def sync_state(self) -> str:
        """ "synced", or "syncing: N of M" while a node that started (restarted with an empty
        store, or joined) has found its digests equal to those of N of the M other live
        members that hold bindings (M is 0 until it knows any: it has not joined yet)."""
        if self._synced:
            return "synced"
        peers = self._others()
        done = sum(1 for p in peers if p in self._in_sync)
        return f"syncing: {done} of {len(peers)}"

    def _others(self) -> list[str]:
        """The other live members that hold bindings, each once."""
        return [p for p in dict.fromkeys(self._peers()) if p != self.name]

    async def _sync_loop(self) -> None:
        """From the start, a digest exchange with every other live member that holds
        bindings, again (each at most every `SYNC_RETRY` seconds, and never more than half
        the time spent walking) until each finds nothing to exchange; then the node is
        "synced" and the periodic repair takes over. The bulk arrives meanwhile by the
        others' handoff; the exchange is what proves it all came (and brings what a handoff
        missed), bounded per round like every repair."""
        await trio.sleep(SYNC_START)
        alone_until = trio.current_time() + SYNC_ALONE
        while True:
            peers = self._others()
            if not peers and trio.current_time() < alone_until:
                await trio.sleep(0.5)  # not joined yet, or the first member of a cluster
                continue
            todo = [p for p in peers if p not in self._in_sync]
            if not todo:
                self._synced = True
                log.info("synced", node=self.name, bindings=len(self.store))
                return
            started = trio.current_time()
            for peer in todo:
                try:
                    await self.repair_with(peer)
                except Exception:
                    log.exception("sync raised", peer=peer)
            await trio.sleep(max(SYNC_RETRY, trio.current_time() - started))

    # ------------------------------------------------------------ expiry

    async def _expiry_loop(self) -> None:
        while True:
            await trio.sleep(1.0)
            await expire_due(self.store, self._clock())


async def expire_due(store: BindingStore, now: float) -> int:
    """Remove every binding of `store` due by `now`, `EXPIRE_BUDGET` at a time with a
    checkpoint between, so a million that expire in the same second do not stall SIP;
    returns how many went."""
    gone, more = store.expire_some(now, EXPIRE_BUDGET)
    while more:
        await trio.sleep(0)
        step, more = store.expire_some(now, EXPIRE_BUDGET)
        gone += step
    return gone


def _location_records(reply: list[Any] | None, aor: str) -> list[Binding] | None:
    """The records of a "loc" reply, each checked; None unless it is a good answer for
    `aor` (a record of another AOR, or the subscriber record, makes it a bad one)."""
    if reply is None or len(reply) != 2 or reply[0] != "loc" or not isinstance(reply[1], list):
        return None
    if len(reply[1]) > MAX_LOCATED:
        return None
    try:
        records = [Binding.from_wire(item) for item in reply[1]]
    except ValueError:
        return None
    if any(r.aor != aor or r.key == SUBSCRIBER_KEY for r in records):
        return None
    return records


# ---------------------------------------------------------------- `swimthor location --via`


class LocateError(Exception):
    """`locate_via` failed; the message is one line for the operator."""


async def locate_via(
    addr: Addr,
    aor: str,
    keyring: Keyring | None,
    label: str,
    timeout: float,
    *,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Ask the member at `addr` (its gossip port) for `swimthor location AOR` over the
    replication channel: a hello, one "locate" request, its reply. The member gathers the
    answer from the AOR's owners. LocateError with one line on any failure."""
    where = format_hostport(addr)
    channel = label + _LABEL_SUFFIX

    def seal(message: list[Any]) -> bytes:
        data = cbor2.dumps(message)
        return encode_frame(seal_frame(keyring, data, channel, clock(), new_nonce()))

    with trio.move_on_after(timeout) as scope:
        try:
            stream = await trio.open_tcp_stream(addr[0], addr[1])
        except OSError as e:
            raise LocateError(f"no answer from {where}: {reason(e)}") from None
        async with stream:
            try:
                await stream.send_all(seal(["hello", PROTOCOL, CLIENT_NAME]))
                await stream.send_all(seal(["locate", 1, aor]))
                frame = await read_frame(stream, MAX_FRAME + 64)
            except (FrameError, OSError, trio.BrokenResourceError):
                # Closed on us (or reset, with our request unread): the gossip listener
                # found no service for our hello.
                raise LocateError(
                    f"no answer from {where}: the connection closed without a reply (a "
                    "member without the sip role, or the wrong key or label?)"
                ) from None
    if scope.cancelled_caught:
        raise LocateError(f"no answer from {where} within {timeout:g} s")
    try:
        reply = _decode(open_frame(keyring, frame, channel, clock()))
    except (SealError, ValueError) as e:
        raise LocateError(f"the reply from {where} could not be read: {e}") from None
    if len(reply) != 3 or reply[:2] != ["locate", 1] or not isinstance(reply[2], dict):
        raise LocateError(f"{where} sent an unexpected reply")
    answer: dict[str, Any] = reply[2]
    if "error" in answer:
        raise LocateError(str(answer["error"]))
    return answer
