"""The control commands' argument checks: `arg()`, the one checker every command reads its
arguments through, and the refusal of arguments a command does not take. Pure: no agent runs
(the commands against a running agent are in tests/test_control.py)."""

from __future__ import annotations

import math
from typing import Any, cast

import pytest
import trio

from swimthor.agent import Agent
from swimthor.control import ControlError
from swimthor.control_commands import ArgumentError, ControlCommands, arg


def test_arg_returns_the_value_none_or_says_what_is_required() -> None:
    assert arg({"dc": "dc1"}, "dc", str, "a string") == "dc1"
    assert arg({}, "dc", str, "a string") is None
    assert arg({"dc": None}, "dc", str, "a string") is None
    with pytest.raises(ArgumentError, match=r'^"aor" \(a string\) is required$'):
        arg({}, "aor", str, "a string", required=True)


def test_arg_takes_a_json_integer_for_a_float_but_no_boolean_for_a_number() -> None:
    weight = arg({"weight": 2}, "weight", float, "a number")
    assert weight == 2.0 and isinstance(weight, float)
    assert arg({"after": 7}, "after", int, "an event sequence number") == 7
    for bad in (True, "2", 2.5):
        with pytest.raises(ArgumentError, match=r'^"after" must be an event sequence number$'):
            arg({"after": bad}, "after", int, "an event sequence number")
    with pytest.raises(ArgumentError, match='"weight" must be a number'):
        arg({"weight": False}, "weight", float, "a number")


def test_arg_checks_the_range_and_the_choices() -> None:
    def since(value: object) -> float | None:
        return arg({"since": value}, "since", float, "seconds >= 0", valid=lambda s: s >= 0)

    assert since(0) == 0.0
    for bad in (-1, math.nan):
        with pytest.raises(ArgumentError, match='"since" must be seconds >= 0'):
            since(bad)
    states = ("alive", "dead")
    assert arg({"status": "dead"}, "status", str, "a string", choices=states) == "dead"
    with pytest.raises(ArgumentError, match=r"^unknown status 'zombie' \(one of alive, dead\)$"):
        arg({"status": "zombie"}, "status", str, "a string", choices=states)


def test_an_argument_error_is_a_control_error_and_a_value_error() -> None:
    with pytest.raises(ControlError):
        arg({}, "key", str, "a base64 key", required=True)
    with pytest.raises(ValueError, match="key"):
        arg({}, "key", str, "a base64 key", required=True)


@pytest.mark.parametrize(
    ("cmd", "args", "says"),
    [
        ("status", {"x": 1}, "^status takes no arguments$"),
        ("subscriber.list", {"aor": "a"}, "^subscriber.list takes no arguments$"),
        ("events", {"since": 1, "until": 2}, r"^unknown argument\(s\) for events: until$"),
        ("route", {"key": "k", "b": 1, "a": 2}, r"^unknown argument\(s\) for route: a, b$"),
        ("frobnicate", {}, r"^unknown command 'frobnicate' \(known: events, keys.install, "),
    ],
)
def test_a_command_refuses_arguments_it_does_not_take(
    cmd: str, args: dict[str, Any], says: str
) -> None:
    # Refused before the command runs: the agent is never touched.
    commands = ControlCommands(cast(Agent, None))
    with pytest.raises(ControlError, match=says):
        trio.run(commands.handle, cmd, args)
