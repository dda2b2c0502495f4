"""The commands an agent answers on its control socket, one method each: `members`, `status`,
`route`, `leave`, `keys.*`, `tags.set`, `meta`, `events`, `subscriber.*`, `location`.

`control.py` carries a request and its reply; this module says what a request means. Each
command names the arguments it takes (any other is refused before it runs) and reads each one
through `arg()`, the one check of an argument's type, range and presence, which raises
ControlError with a line naming the argument and what it must be. What a command changes in
the agent goes through the agent's own methods (`leave`, `update_metadata`,
`persist_keyring`): the wiring stays in agent.py.
"""

from __future__ import annotations

import binascii
import math
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import structlog

from .config import format_hostport
from .control import ControlError
from .keyring import Keyring
from .routing import RoutingTable

if TYPE_CHECKING:
    from .agent import Agent
    from .membership import Member, Membership
    from .sip import SipService

__all__ = ["MAX_REPLICAS", "ArgumentError", "ControlCommands", "arg", "route_reply"]

log = structlog.get_logger("swimthor.control_commands")

MAX_REPLICAS = 16
_STATES = ("alive", "suspect", "dead", "left")

T = TypeVar("T")


class ArgumentError(ControlError, ValueError):
    """A command's argument is missing or wrong. A ControlError, so the operator gets its line
    as the reply; a ValueError too, so that `route_reply`, which `swimthor route --via` calls
    in the CLI, still raises what it always raised."""


@overload
def arg(
    args: Mapping[str, Any],
    name: str,
    kind: type[T],
    what: str,
    *,
    required: Literal[True],
    valid: Callable[[T], bool] | None = None,
    choices: Collection[T] | None = None,
) -> T: ...
@overload
def arg(
    args: Mapping[str, Any],
    name: str,
    kind: type[T],
    what: str,
    *,
    required: Literal[False] = False,
    valid: Callable[[T], bool] | None = None,
    choices: Collection[T] | None = None,
) -> T | None: ...
def arg(
    args: Mapping[str, Any],
    name: str,
    kind: type[Any],
    what: str,
    *,
    required: bool = False,
    valid: Callable[[Any], bool] | None = None,
    choices: Collection[Any] | None = None,
) -> Any:
    """The argument `name` of a command, checked: an instance of `kind` (a JSON integer is
    taken for a float; true and false are not numbers) for which `valid` holds and, with
    `choices`, one of them. Left out or null: None, or ArgumentError when `required`.
    `what` says what it must be, for the error line: '"since" must be a number of seconds
    >= 0', '"key" (a base64 key) is required'."""
    value = args.get(name)
    if value is None:
        if required:
            raise ArgumentError(f'"{name}" ({what}) is required')
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (
        not isinstance(value, kind)
        or (isinstance(value, bool) and kind is not bool)
        or (valid is not None and not valid(value))
    ):
        raise ArgumentError(f'"{name}" must be {what}')
    if choices is not None and value not in choices:
        raise ArgumentError(f"unknown {name} {value!r} (one of {', '.join(map(str, choices))})")
    return value


def _strings(value: list[Any]) -> bool:
    return all(isinstance(v, str) for v in value)


def _strings_to_strings(value: dict[Any, Any]) -> bool:
    return all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


Command = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlCommands:
    """The control commands of one agent; `handle` is the control server's handler."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        # Each command, and the arguments it takes.
        self._commands: dict[str, tuple[Command, frozenset[str]]] = {
            "members": (self._cmd_members, frozenset({"status", "dc", "role"})),
            "status": (self._cmd_status, frozenset()),
            "leave": (self._cmd_leave, frozenset()),
            "keys.list": (self._cmd_keys_list, frozenset()),
            "keys.install": (self._cmd_keys_install, frozenset({"key"})),
            "keys.use": (self._cmd_keys_use, frozenset({"key"})),
            "keys.remove": (self._cmd_keys_remove, frozenset({"key"})),
            "tags.set": (self._cmd_tags_set, frozenset({"tags", "roles", "weight"})),
            "meta": (self._cmd_meta, frozenset({"set", "unset", "roles", "weight"})),
            "route": (self._cmd_route, frozenset({"key", "replicas", "role", "dc"})),
            "events": (self._cmd_events, frozenset({"after", "since"})),
            "subscriber.set": (self._cmd_subscriber_set, frozenset({"aor", "password"})),
            "subscriber.list": (self._cmd_subscriber_list, frozenset()),
            "location": (self._cmd_location, frozenset({"aor"})),
        }

    async def handle(self, cmd: str, args: dict[str, Any]) -> Any:
        entry = self._commands.get(cmd)
        if entry is None:
            known = ", ".join(sorted(self._commands))
            raise ControlError(f"unknown command {cmd!r} (known: {known})")
        fn, takes = entry
        unknown = set(args) - takes
        if unknown and not takes:
            raise ArgumentError(f"{cmd} takes no arguments")
        if unknown:
            raise ArgumentError(f"unknown argument(s) for {cmd}: {', '.join(sorted(unknown))}")
        return await fn(args)

    async def _cmd_members(self, args: dict[str, Any]) -> Any:
        status = arg(args, "status", str, "a string", choices=_STATES)
        dc = arg(args, "dc", str, "a string")
        role = arg(args, "role", str, "a string")
        return [
            m
            for m in self.agent.core.members_json()
            if (status is None or m.get("state") == status)
            and (dc is None or m.get("dc") == dc)
            and (role is None or role in (m.get("roles") or ()))
        ]

    async def _cmd_status(self, args: dict[str, Any]) -> Any:
        return self.agent.full_status()

    async def _cmd_route(self, args: dict[str, Any]) -> Any:
        """The owners of a key, in rank order: {"key", "epoch", "owners": [...]}."""
        try:
            return route_reply(
                self.agent.routing,
                args.get("key"),
                args.get("replicas", 2),
                args.get("role", "sip"),
                args.get("dc"),
            )
        except ValueError as e:
            raise ControlError(str(e)) from None

    async def _cmd_events(self, args: dict[str, Any]) -> Any:
        """Recent events: {"after": seq} those after it, {"since": seconds} those of the last
        seconds, neither: all kept (the last RECENT_EVENTS). {"events": [...], "last": seq}."""
        after = arg(args, "after", int, "an event sequence number")
        since = arg(args, "since", float, "a number of seconds >= 0", valid=lambda s: s >= 0)
        cutoff = time.time() - since if since is not None else None
        events = [
            e
            for e in self.agent.recent_events
            if (after is None or e["seq"] > after) and (cutoff is None or e["time"] >= cutoff)
        ]
        return {"events": events, "last": self.agent.event_seq}

    def _sip_or_error(self) -> SipService:
        sip = self.agent.sip
        if sip is None or sip.proxy is None:
            raise ControlError("this agent serves no SIP (start it with --role sip)")
        return sip

    async def _cmd_subscriber_set(self, args: dict[str, Any]) -> Any:
        """Add, change or remove a subscriber: {"aor", "password"} (password null: remove)."""
        aor = arg(args, "aor", str, "a string", required=True)
        password = arg(args, "password", str, "a string or null")
        try:
            return await self._sip_or_error().set_subscriber(aor, password)
        except (ValueError, RuntimeError) as e:
            raise ControlError(str(e)) from None

    async def _cmd_subscriber_list(self, args: dict[str, Any]) -> Any:
        return await self._sip_or_error().list_subscribers()

    async def _cmd_location(self, args: dict[str, Any]) -> Any:
        """The bindings of an AOR as its owners hold them: {"aor"} (`swimthor location`)."""
        aor = arg(args, "aor", str, "a string", required=True)
        try:
            return await self._sip_or_error().location(aor)
        except ValueError as e:
            raise ControlError(str(e)) from None

    async def _cmd_leave(self, args: dict[str, Any]) -> Any:
        await self.agent.leave()  # run() returns once this reply is written
        return {"left": True}

    async def _cmd_keys_list(self, args: dict[str, Any]) -> Any:
        ring = self.agent.core.keyring
        if ring is None:
            raise ControlError("this agent runs without a keyring (--insecure)")
        return {
            "primary": Keyring.key_id(ring.primary),
            "keys": [Keyring.key_id(k) for k in ring.keys],
        }

    async def _key_op(self, op: str, args: dict[str, Any]) -> Any:
        agent = self.agent
        ring = agent.core.keyring
        if ring is None:
            raise ControlError("this agent runs without a keyring (--insecure)")
        key = _key_arg(args)
        try:
            getattr(ring, op)(key)
        except ValueError as e:
            raise ControlError(str(e)) from None
        log.info("keyring changed", op=op, key_id=Keyring.key_id(key), origin="local")
        await agent.persist_keyring()
        results = await agent.runtime.key_op_all(op, key)
        ok = sorted([agent.core.local.name, *(n for n, err in results.items() if err is None)])
        failed = {n: err for n, err in sorted(results.items()) if err is not None}
        return {"ok": ok, "failed": failed}

    async def _cmd_keys_install(self, args: dict[str, Any]) -> Any:
        return await self._key_op("install", args)

    async def _cmd_keys_use(self, args: dict[str, Any]) -> Any:
        return await self._key_op("use", args)

    async def _cmd_keys_remove(self, args: dict[str, Any]) -> Any:
        return await self._key_op("remove", args)

    async def _cmd_tags_set(self, args: dict[str, Any]) -> Any:
        tags = arg(args, "tags", dict, "an object of strings to strings", valid=_strings_to_strings)
        roles = arg(args, "roles", list, "a list of strings", valid=_strings)
        weight = arg(args, "weight", float, "a number", valid=math.isfinite)
        try:
            self.agent.update_metadata(roles=roles, weight=weight, tags=tags)
        except ValueError as e:
            raise ControlError(str(e)) from None
        return _member_json_of(self.agent.core.local, self.agent.core)

    async def _cmd_meta(self, args: dict[str, Any]) -> Any:
        """Change this node's metadata in place: "set" tags merge into the current ones,
        "unset" removes tag keys, "roles" (a list) and "weight" replace. Spreads with a
        higher incarnation."""
        set_ = arg(args, "set", dict, "an object of strings to strings", valid=_strings_to_strings)
        unset = arg(args, "unset", list, "a list of tag names", valid=_strings) or []
        tags = dict(self.agent.core.local.tags)
        missing = [k for k in unset if k not in tags]
        if missing:
            raise ControlError(f"no such tag: {', '.join(missing)}")
        for k in unset:
            del tags[k]
        tags.update(set_ or {})
        update: dict[str, Any] = {"tags": tags}
        if "roles" in args:
            update["roles"] = args["roles"]
        if "weight" in args:
            update["weight"] = args["weight"]
        return await self._cmd_tags_set(update)


def _key_arg(args: dict[str, Any]) -> bytes:
    text = arg(args, "key", str, "a base64 key", required=True)
    try:
        return Keyring.decode_key(text)
    except (ValueError, binascii.Error) as e:
        raise ControlError(str(e)) from None


def route_reply(
    table: RoutingTable, key: object, replicas: object, role: object, dc: object
) -> dict[str, Any]:
    """The `route` answer, checked (ArgumentError, a ValueError): a key of 1..1024
    characters, 1..16 replicas."""
    given = {"key": key, "replicas": replicas, "role": role, "dc": dc}
    key_ = arg(
        given,
        "key",
        str,
        "a string of 1 to 1024 characters",
        required=True,
        valid=lambda k: 0 < len(k) <= 1024,
    )
    replicas_ = arg(
        given,
        "replicas",
        int,
        f"an integer between 1 and {MAX_REPLICAS}",
        required=True,
        valid=lambda r: 1 <= r <= MAX_REPLICAS,
    )
    role_ = arg(given, "role", str, "a non-empty string", required=True, valid=bool)
    dc_ = arg(given, "dc", str, "a string")
    owners = table.owners(key_, replicas_, role_, dc_)
    return {
        "key": key_,
        "epoch": table.epoch,
        "owners": [
            {"name": r.name, "addr": format_hostport(r.addr), "dc": r.dc, "weight": r.weight}
            for r in owners
        ],
    }


def _member_json_of(m: Member, core: Membership) -> dict[str, Any]:
    for item in core.members_json():
        if item.get("name") == m.name:
            return item
    return {"name": m.name}
