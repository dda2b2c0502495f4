"""The commands that ask a running agent (`members`, `status`, `route`, `leave`, `meta`,
`keys`, `subscriber`, `location`, `monitor`) over its control socket or, with `--via`, any
member over its gossip port; and the ones that need no agent (`keygen`, `demo`, `simulate`).
Each takes the parsed arguments and returns the exit status."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from swimthor.config import ConfigError, parse_hostport
from swimthor.keyring import Keyring

from ._config import client_keyring, read_key_arg
from ._errors import CommandError, UsageError
from ._format import (
    filter_members,
    format_event,
    format_keys_text,
    format_location_text,
    format_members_json,
    format_members_text,
    format_route_text,
    format_status_json,
    format_status_text,
)

# A graceful leave waits for the broadcast to go out (config leave_propagate_time, 1 s on LAN).
LEAVE_TIMEOUT = 30.0


def _control_call(args: argparse.Namespace, cmd: str, params: dict[str, Any] | None) -> Any:
    from swimthor import control

    path = args.control or control.default_control_path()
    return control.call(path, cmd, params, timeout=args.timeout)


def _query_via(args: argparse.Namespace, what: str) -> Any:
    import trio

    from swimthor.membership.runtime import query

    keyring = client_keyring(args)
    return trio.run(query, args.via, what, keyring, args.label, args.timeout)


def _fetch(args: argparse.Namespace, what: str, params: dict[str, Any] | None) -> Any:
    if getattr(args, "via", None) is not None:
        return _query_via(args, what)
    return _control_call(args, what, params)


def _cmd_members(args: argparse.Namespace) -> int:
    params = {k: v for k in ("status", "dc", "role") if (v := getattr(args, k)) is not None}
    reply = _fetch(args, "members", params or None)
    if not isinstance(reply, list) or not all(isinstance(m, dict) for m in reply):
        raise CommandError("the agent sent an unexpected members reply")
    members = filter_members(reply, status=args.status, dc=args.dc, role=args.role)
    if args.format == "json":
        sys.stdout.write(format_members_json(members))
    else:
        sys.stdout.write(format_members_text(members, time.time()))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    import time as _time

    if args.watch is not None and not 0.2 <= args.watch <= 3600:
        raise CommandError("--watch needs 0.2 to 3600 seconds")
    try:
        while True:
            reply = _fetch(args, "status", None)
            if not isinstance(reply, dict):
                raise CommandError("the agent sent an unexpected status reply")
            text = format_status_json(reply) if args.format == "json" else format_status_text(reply)
            if args.watch is not None and sys.stdout.isatty():
                text = "\x1b[H\x1b[2J" + text  # in place: home, clear
            sys.stdout.write(text)
            sys.stdout.flush()
            if args.watch is None:
                return 0
            _time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def _route_via(args: argparse.Namespace) -> dict[str, Any]:
    """--via: the contract is the same on every node, so rank the live members that the
    remote agent reports here. No epoch: that is the remote table's own counter."""
    from swimthor.control_commands import route_reply
    from swimthor.membership import Member, State
    from swimthor.routing import RoutingTable

    reply = _query_via(args, "members")
    if not isinstance(reply, list) or not all(isinstance(m, dict) for m in reply):
        raise CommandError("the agent sent an unexpected members reply")
    members = []
    try:
        for m in reply:
            state = State[str(m["state"]).upper()]
            members.append(
                Member(
                    name=str(m["name"]),
                    addr=parse_hostport(str(m["addr"])),
                    dc=str(m["dc"]),
                    roles=tuple(str(x) for x in m.get("roles") or ()),
                    weight=float(m["weight"]),
                    tags={},
                    incarnation=int(m.get("incarnation", 0)),
                    state=state,
                    since=0.0,
                )
            )
    except (KeyError, ValueError, TypeError, ConfigError) as e:
        raise CommandError(f"the agent sent an unexpected member record ({e})") from None
    table = RoutingTable(roles=None)
    table.sync(members)
    out = route_reply(table, args.key, args.replicas, args.role, args.dc)
    out["epoch"] = None
    return out


def _cmd_route(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "via", None) is not None:
            reply = _route_via(args)
        else:
            params: dict[str, Any] = {"key": args.key, "replicas": args.replicas, "role": args.role}
            if args.dc is not None:
                params["dc"] = args.dc
            reply = _control_call(args, "route", params)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if not isinstance(reply, dict):
        raise CommandError("the agent sent an unexpected route reply")
    return _print_reply(args, reply, format_route_text)


def _print_reply(
    args: argparse.Namespace, reply: dict[str, Any], text: Callable[[dict[str, Any]], str]
) -> int:
    """An agent's reply on stdout: as JSON with --format json, else as `text` formats it."""
    sys.stdout.write(json.dumps(reply, indent=2) + "\n" if args.format == "json" else text(reply))
    return 0


def _cmd_leave(args: argparse.Namespace) -> int:
    args.timeout = max(args.timeout, LEAVE_TIMEOUT)
    _control_call(args, "leave", None)
    print("left the cluster")
    return 0


def _cmd_meta(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"set": dict(args.tag), "unset": list(args.untag)}
    if args.role is not None:
        params["roles"] = list(args.role)
    if args.weight is not None:
        params["weight"] = args.weight
    if not (args.tag or args.untag or args.role is not None or args.weight is not None):
        raise UsageError("nothing to change: give --tag, --untag, --role or --weight")
    me = _control_call(args, "meta", params)
    print(format_members_text([me], time.time()))
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    print(Keyring.encode_key(Keyring.generate()))
    return 0


_KEY_DONE = {
    "install": "installed key {id} on {n} member(s)",
    "use": "key {id} is now the primary on {n} member(s)",
    "remove": "removed key {id} from {n} member(s)",
}


def _cmd_keys(args: argparse.Namespace) -> int:
    action = args.keys_command
    if action == "list":
        reply = _control_call(args, "keys.list", None)
        if not isinstance(reply, dict):
            raise CommandError("the agent sent an unexpected keys reply")
        text = format_keys_text(reply) if args.format == "text" else json.dumps(reply) + "\n"
        sys.stdout.write(text)
        return 0
    key = read_key_arg(args.key)
    reply = _control_call(args, f"keys.{action}", {"key": Keyring.encode_key(key)})
    if not isinstance(reply, dict):
        raise CommandError("the agent sent an unexpected keys reply")
    ok = list(reply.get("ok") or ())
    failed = dict(reply.get("failed") or {})
    print(_KEY_DONE[action].format(id=Keyring.key_id(key), n=len(ok)))
    if failed:
        detail = "; ".join(f"{name}: {err}" for name, err in sorted(failed.items()))
        raise CommandError(
            f"key {action} failed on {len(failed)} of {len(ok) + len(failed)} member(s): {detail}"
        )
    return 0


def _read_password(args: argparse.Namespace) -> str:
    if args.password is not None:
        return str(args.password)
    if args.password_file is not None:
        try:
            if args.password_file == "-":
                text = sys.stdin.readline()
            else:
                with open(args.password_file, encoding="utf-8") as f:
                    text = f.readline()
        except OSError as e:
            raise CommandError(f"cannot read {args.password_file}: {e.strerror or e}") from None
        password = text.rstrip("\r\n")
    else:
        import getpass

        try:
            password = getpass.getpass("password: ")
        except (EOFError, OSError):
            raise CommandError("no password given (--password-file FILE, or a terminal)") from None
    if not password:
        raise CommandError("the password is empty")
    return password


def _cmd_monitor(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {}
    if args.since is not None:
        if args.since < 0:
            raise CommandError("--since needs a number of seconds >= 0")
        params["since"] = args.since
    elif not args.once:
        params["since"] = 0  # from now on
    try:
        return _follow_events(args, params)
    except KeyboardInterrupt:
        return 0


def _follow_events(args: argparse.Namespace, params: dict[str, Any]) -> int:
    import time as _time

    last: int | None = None
    while True:
        query = dict(params) if last is None else {"after": last}
        reply = _control_call(args, "events", query)
        if not isinstance(reply, dict) or not isinstance(reply.get("events"), list):
            raise CommandError("the agent sent an unexpected events reply")
        for event in reply["events"]:
            if args.format == "json":
                sys.stdout.write(json.dumps(event) + "\n")
            else:
                sys.stdout.write(format_event(event) + "\n")
        sys.stdout.flush()
        last = int(reply.get("last") or 0)
        if args.once:
            return 0
        _time.sleep(0.5)


def _cmd_subscriber(args: argparse.Namespace) -> int:
    action = args.subscriber_command
    if action == "list":
        reply = _control_call(args, "subscriber.list", None)
        if not isinstance(reply, dict) or not isinstance(reply.get("subscribers"), list):
            raise CommandError("the agent sent an unexpected subscriber reply")
        if args.format == "json":
            sys.stdout.write(json.dumps(reply) + "\n")
        else:
            for aor in reply["subscribers"]:
                print(aor)
            if reply.get("unanswered"):
                print(
                    f"(no answer from {', '.join(map(str, reply['unanswered']))})", file=sys.stderr
                )
        return 0
    password = _read_password(args) if action == "add" else None
    reply = _control_call(args, "subscriber.set", {"aor": args.aor, "password": password})
    if not isinstance(reply, dict):
        raise CommandError("the agent sent an unexpected subscriber reply")
    verb = "removed" if reply.get("removed") else "stored"
    on = ", ".join(map(str, reply.get("on") or ()))
    print(f"{reply.get('aor')}: {verb} on {on}")
    return 0


def _check_aor_arg(text: str) -> None:
    """UsageError unless `text` is a SIP or SIPS URI with a user part (the agent then checks
    that its domain is one it serves)."""
    from swimthor.sip import aor_of, parse_uri

    try:
        uri = parse_uri(text.strip())
    except ValueError:
        raise UsageError(f"not a SIP address-of-record: {text!r}") from None
    if aor_of(uri) is None:
        raise UsageError(f"an address-of-record needs a user part, e.g. sip:alice@{uri.host}")


def _cmd_location(args: argparse.Namespace) -> int:
    _check_aor_arg(args.aor)
    if getattr(args, "via", None) is not None:
        import trio

        from swimthor.sip import LocateError, locate_via

        keyring = client_keyring(args)
        try:
            reply = trio.run(locate_via, args.via, args.aor, keyring, args.label, args.timeout)
        except LocateError as e:
            raise CommandError(str(e)) from None
    else:
        reply = _control_call(args, "location", {"aor": args.aor})
    if not isinstance(reply, dict) or not isinstance(reply.get("bindings"), list):
        raise CommandError("the agent sent an unexpected location reply")
    return _print_reply(args, reply, format_location_text)


def _cmd_demo(args: argparse.Namespace) -> int:
    from swimthor.demo import run_demo

    return run_demo(
        nodes=args.nodes,
        profile=args.profile,
        duration=args.duration,
        insecure=args.insecure,
        chaos_every=args.chaos,
    )


def _cmd_simulate(args: argparse.Namespace) -> int:
    from swimthor.sim import run, run_profiled, scenario_from_args

    try:
        scenario = scenario_from_args(args)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.cprofile:
        result, report = run_profiled(scenario, args.cprofile)
        sys.stderr.write(report)
    else:
        result = run(scenario)
    if args.format == "json":
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.to_text())
    return 0
