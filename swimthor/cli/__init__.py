"""The `swimthor` command line: run an agent, and ask a running one about its cluster.

One subcommand per operator action, the way serf does it: `join` runs an agent in the
foreground; `members`, `status`, `leave`, `keys`, `subscriber` and `location` talk to the
local agent over its control socket (or, for `members`, `status`, `route` and `location`, ask
any member over its gossip port with `--via`); `keygen` prints a new cluster key; `demo` runs
a small cluster on loopback with a live view.

Output is aligned columns for people and `--format json` for scripts. Every error is exactly
one line on stderr starting "swimthor: error: ". Exit status: 0 done, 1 the command failed,
2 the command line or config file is wrong, 130 interrupted.

Where things are: `_parser` (argparse and the argument types), `_config` (flags and TOML to
an AgentConfig, keyrings), `_format` (the output, pure functions of the agent's JSON),
`_commands` (the commands that ask an agent, and the offline ones), `_join` (run an agent),
`_errors` (the error kinds and how each becomes one line and an exit status). This module
holds `main` and re-exports the public names.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ._commands import (
    LEAVE_TIMEOUT,
    _cmd_demo,
    _cmd_keygen,
    _cmd_keys,
    _cmd_leave,
    _cmd_location,
    _cmd_members,
    _cmd_meta,
    _cmd_monitor,
    _cmd_route,
    _cmd_simulate,
    _cmd_status,
    _cmd_subscriber,
)
from ._config import (
    KEYRING_FILE,
    LOG_FORMATS,
    LOG_LEVELS,
    build_agent_config,
    client_keyring,
    default_data_dir,
    read_key_arg,
    resolve_keyring,
)
from ._errors import PROG, CommandError, UsageError, _report
from ._format import (
    STATES,
    filter_members,
    format_cluster_table,
    format_convergence,
    format_event,
    format_keys_text,
    format_location_text,
    format_members_json,
    format_members_text,
    format_route_text,
    format_status_json,
    format_status_text,
)
from ._join import _cmd_join, join_hint
from ._parser import DEFAULT_TIMEOUT, build_parser

__all__ = [
    "DEFAULT_TIMEOUT",
    "KEYRING_FILE",
    "LEAVE_TIMEOUT",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "PROG",
    "STATES",
    "CommandError",
    "UsageError",
    "build_agent_config",
    "build_parser",
    "client_keyring",
    "default_data_dir",
    "filter_members",
    "format_cluster_table",
    "format_convergence",
    "format_event",
    "format_keys_text",
    "format_location_text",
    "format_members_json",
    "format_members_text",
    "format_route_text",
    "format_status_json",
    "format_status_text",
    "join_hint",
    "main",
    "read_key_arg",
    "resolve_keyring",
]


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "join": _cmd_join,
    "members": _cmd_members,
    "route": _cmd_route,
    "status": _cmd_status,
    "leave": _cmd_leave,
    "meta": _cmd_meta,
    "keygen": _cmd_keygen,
    "keys": _cmd_keys,
    "subscriber": _cmd_subscriber,
    "location": _cmd_location,
    "monitor": _cmd_monitor,
    "demo": _cmd_demo,
    "simulate": _cmd_simulate,
}


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default sys.argv[1:]); returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        return _COMMANDS[args.command](args)
    except BaseException as exc:
        return _report(exc)
