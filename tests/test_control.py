"""The control socket, and whole agents driven through it.

Rules for these tests: every test runs inside an absolute `trio.fail_after`; sockets are real
(Unix sockets under pytest's tmp_path, gossip on 127.0.0.1 port 0); agents use the `local`
profile and `handle_signals=False`; the blocking client `call()` runs in a worker thread.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from bench._procs import trio_wait_until as wait_for
from swimthor import control
from swimthor.agent import Agent
from swimthor.config import AgentConfig
from swimthor.control import ControlError, call, default_control_path, serve_control
from swimthor.keyring import Keyring
from swimthor.membership import State


@pytest.fixture
def sockdir() -> Any:
    # Unix socket paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="st-") as d:
        yield Path(d)


async def acall(path: str | Path, cmd: str, args: dict[str, Any] | None = None, **kw: Any) -> Any:
    return await trio.to_thread.run_sync(lambda: call(str(path), cmd, args, **kw))


async def raw_exchange(path: str | Path, data: bytes) -> dict[str, Any]:
    """Send raw bytes, half-close, and parse the one-line reply."""

    def go() -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(path))
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            buf = b""
            while chunk := s.recv(65536):
                buf += chunk
        reply: dict[str, Any] = json.loads(buf)
        return reply

    return await trio.to_thread.run_sync(go)


async def echo_handler(cmd: str, args: dict[str, Any]) -> Any:
    if cmd == "echo":
        return {"cmd": cmd, "args": args}
    if cmd == "boom":
        raise RuntimeError("kaboom")
    if cmd == "slow":
        await trio.sleep(10)
    raise ControlError(f"unknown command {cmd!r}")


# ---------------------------------------------------------------- the socket


async def test_socket_is_private_and_round_trips(sockdir: Path) -> None:
    path = sockdir / "run" / "control.sock"
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            assert await nursery.start(serve_control, str(path), echo_handler) == str(path)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
            assert await acall(path, "echo", {"x": [1, 2]}) == {
                "cmd": "echo",
                "args": {"x": [1, 2]},
            }
            assert await acall(path, "echo") == {"cmd": "echo", "args": {}}
            nursery.cancel_scope.cancel()
    assert not path.exists()  # removed on the way out


async def test_bad_requests_get_error_replies(sockdir: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(control, "REQUEST_TIMEOUT", 0.3)
    path = sockdir / "c.sock"
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_control, str(path), echo_handler)
            bad = {
                b"not json\n": "not valid JSON",
                b"[1, 2]\n": "JSON object",
                b'{"args": {}}\n': '"cmd"',
                b'{"cmd": 5}\n': '"cmd"',
                b'{"cmd": "echo", "args": [1]}\n': '"args"',
                b"\xff\xfe\n": "not valid JSON",
                b"": "empty request",
                b"x" * (70 * 1024): "longer than",
            }
            for data, expected in bad.items():
                reply = await raw_exchange(path, data)
                assert reply["ok"] is False
                assert expected in reply["error"]
            # a request without the final newline is still one request
            assert (await raw_exchange(path, b'{"cmd": "echo"}'))["ok"] is True
            with pytest.raises(ControlError, match="unknown command 'nope'"):
                await acall(path, "nope")
            with pytest.raises(ControlError, match="internal error: RuntimeError: kaboom"):
                await acall(path, "boom")

            # a client that sends half a line and stalls gets an error after the deadline
            def stall() -> dict[str, Any]:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(5)
                    s.connect(str(path))
                    s.sendall(b'{"cmd": ')
                    reply: dict[str, Any] = json.loads(s.recv(65536))
                    return reply

            reply = await trio.to_thread.run_sync(stall)
            assert reply["ok"] is False and "no complete request" in reply["error"]
            # and after all that the server still answers
            assert await acall(path, "echo", {"still": "here"}) == {
                "cmd": "echo",
                "args": {"still": "here"},
            }
            nursery.cancel_scope.cancel()


async def test_stale_socket_is_replaced_and_live_one_refused(sockdir: Path) -> None:
    path = sockdir / "c.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays; nobody listens
    assert path.exists()
    with pytest.raises(ControlError, match="no agent is listening on"):
        await acall(path, "echo")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_control, str(path), echo_handler)
            assert (await acall(path, "echo"))["cmd"] == "echo"
            with pytest.raises(ControlError, match=f"another agent is running on {path}"):
                await serve_control(str(path), echo_handler)
            # the refused second server did not take the socket away
            assert (await acall(path, "echo"))["cmd"] == "echo"
            nursery.cancel_scope.cancel()


async def test_path_that_is_not_a_socket_is_refused(sockdir: Path) -> None:
    path = sockdir / "file"
    path.write_text("hi")
    with trio.fail_after(5), pytest.raises(ControlError, match="is not a socket"):
        await serve_control(str(path), echo_handler)
    assert path.read_text() == "hi"


async def test_call_without_agent_is_one_clear_line(sockdir: Path) -> None:
    path = sockdir / "missing" / "control.sock"
    with pytest.raises(ControlError) as info:
        await acall(path, "members")
    assert str(info.value) == (f"no agent is listening on {path} (is `swimthor join` running?)")


async def test_call_times_out(sockdir: Path) -> None:
    path = sockdir / "c.sock"
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_control, str(path), echo_handler)
            with pytest.raises(ControlError, match=r"did not answer within 0\.3 s"):
                await acall(path, "slow", timeout=0.3)
            nursery.cancel_scope.cancel()


def test_default_control_path(monkeypatch: Any) -> None:
    monkeypatch.setenv("SWIMTHOR_CONTROL", "/x/y.sock")
    assert default_control_path() == "/x/y.sock"
    monkeypatch.delenv("SWIMTHOR_CONTROL")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert default_control_path() == "/run/user/1000/swimthor/control.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setattr(os, "getuid", lambda: 0)
    assert default_control_path() == "/run/swimthor/control.sock"
    monkeypatch.setattr(os, "getuid", lambda: 1234)
    assert default_control_path() == "/tmp/swimthor-1234/control.sock"


# ---------------------------------------------------------------- agents


def agent_config(name: str, sockdir: Path, seeds: list[tuple[str, int]], **kw: Any) -> AgentConfig:
    return AgentConfig(
        name=name,
        bind=("127.0.0.1", 0),
        seeds=seeds,
        profile="local",
        control=str(sockdir / f"{name}.sock"),
        **kw,
    )


@asynccontextmanager
async def agents(
    names: list[str],
    sockdir: Path,
    keyrings: list[Keyring | None] | None = None,
    **kw: Any,
) -> AsyncIterator[list[Agent]]:
    """Agents started one after another, each seeded with the first; cancelled on exit."""
    async with trio.open_nursery() as nursery:
        started: list[Agent] = []
        for i, name in enumerate(names):
            seeds = [started[0].bound_addr] if started and started[0].bound_addr else []
            cfg = agent_config(name, sockdir, seeds, **kw)
            ring = keyrings[i] if keyrings else None
            agent = Agent(cfg, keyring=ring, handle_signals=False)
            assert await nursery.start(agent.run) is agent
            started.append(agent)
        yield started
        nursery.cancel_scope.cancel()


def alive(agent: Agent) -> set[str]:
    return {m.name for m in agent.core.members() if m.state == State.ALIVE}


def state_of(agent: Agent, name: str) -> State | None:
    m = agent.core.member(name)
    return m.state if m is not None else None


async def test_agents_converge_and_a_stopped_one_is_left(sockdir: Path) -> None:
    with trio.fail_after(15):
        async with agents(["a", "b", "c"], sockdir) as (a, b, c):
            await wait_for(lambda: all(alive(x) == {"a", "b", "c"} for x in (a, b, c)))
            assert c.control_path == str(sockdir / "c.sock")
            await c.stop()  # returns once c's run() has returned
            assert not os.path.exists(str(sockdir / "c.sock"))
            await wait_for(lambda: state_of(a, "c") == state_of(b, "c") == State.LEFT)
            await trio.sleep(0.3)
            assert alive(a) == alive(b) == {"a", "b"}


async def test_sealed_agents_keep_a_stranger_out(sockdir: Path) -> None:
    key = Keyring.generate()
    rings: list[Keyring | None] = [Keyring([key]), Keyring([key]), Keyring([Keyring.generate()])]
    with trio.fail_after(15):
        async with agents(["a", "b", "x"], sockdir, rings) as (a, b, x):
            await wait_for(lambda: alive(a) == alive(b) == {"a", "b"})
            await trio.sleep(1.0)
            assert a.core.member("x") is None and b.core.member("x") is None
            assert alive(x) == {"x"}
            members = await acall(a.control_path or "", "members")
            assert sorted(m["name"] for m in members) == ["a", "b"]


async def test_control_commands(sockdir: Path) -> None:
    with trio.fail_after(15):
        async with agents(["a", "b"], sockdir) as (a, b):
            await wait_for(lambda: alive(a) == alive(b) == {"a", "b"})
            path = a.control_path
            assert path is not None
            members = await acall(path, "members")
            assert sorted(m["name"] for m in members) == ["a", "b"]
            assert await acall(path, "members", {"status": "dead"}) == []
            assert await acall(path, "members", {"dc": "elsewhere"}) == []
            with pytest.raises(ControlError, match="unknown status"):
                await acall(path, "members", {"status": "zombie"})
            status = await acall(path, "status")
            assert status["name"] == "a" and status["members"] == 2
            assert "runtime" in status
            with pytest.raises(ControlError, match="without a keyring"):
                await acall(path, "keys.list")
            with pytest.raises(ControlError, match="unknown command 'frobnicate'"):
                await acall(path, "frobnicate")
            # metadata changes spread to the other member
            # (the placement tag is the agent's own: tags.set keeps it whatever it is given)
            me = await acall(path, "tags.set", {"tags": {"zone": "z1"}, "roles": ["sip"]})
            want = {"zone": "z1", "placement": "2"}
            assert me["tags"] == want and me["roles"] == ["sip"]
            await wait_for(lambda: (b.core.member("a") or a.core.local).tags == want)
            assert [
                m["name"] for m in await acall(b.control_path or "", "members", {"role": "sip"})
            ] == ["a"]
            with pytest.raises(ControlError, match='"weight" must be a number'):
                await acall(path, "tags.set", {"weight": "heavy"})
            with pytest.raises(ControlError, match="weight must be"):
                await acall(path, "tags.set", {"weight": -1})
            # leave through the control socket: the reply arrives, then a stops
            assert await acall(path, "leave") == {"left": True}
            await wait_for(lambda: state_of(b, "a") == State.LEFT)
            await wait_for(lambda: not os.path.exists(path))
            with pytest.raises(ControlError, match="no agent is listening"):
                await acall(path, "status")


async def test_key_rotation_through_control(sockdir: Path) -> None:
    key = Keyring.generate()
    data_a = sockdir / "data-a"
    data_a.mkdir(mode=0o700)
    rings: list[Keyring | None] = [Keyring([key]), Keyring([key]), Keyring([key])]
    new = Keyring.generate()
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            cfg_a = agent_config("a", sockdir, [], data_dir=str(data_a))
            a = Agent(cfg_a, keyring=rings[0], handle_signals=False)
            await nursery.start(a.run)
            assert a.bound_addr is not None
            others = []
            for name, ring in (("b", rings[1]), ("c", rings[2])):
                ag = Agent(
                    agent_config(name, sockdir, [a.bound_addr]), keyring=ring, handle_signals=False
                )
                await nursery.start(ag.run)
                others.append(ag)
            b, c = others
            await wait_for(lambda: all(alive(x) == {"a", "b", "c"} for x in (a, b, c)))
            path = a.control_path or ""
            listed = await acall(path, "keys.list")
            assert listed == {"primary": Keyring.key_id(key), "keys": [Keyring.key_id(key)]}
            enc = Keyring.encode_key(new)
            assert await acall(path, "keys.install", {"key": enc}) == {
                "ok": ["a", "b", "c"],
                "failed": {},
            }
            assert await acall(path, "keys.use", {"key": enc}) == {
                "ok": ["a", "b", "c"],
                "failed": {},
            }
            for x in (a, b, c):
                assert x.core.keyring is not None and x.core.keyring.primary == new
            saved = Keyring.load(data_a / "keyring.json")
            assert saved.primary == new
            assert stat.S_IMODE(os.stat(data_a / "keyring.json").st_mode) == 0o600
            # removing the primary is refused locally with the keyring's reason
            with pytest.raises(ControlError, match="primary"):
                await acall(path, "keys.remove", {"key": enc})
            with pytest.raises(ControlError, match="base64"):
                await acall(path, "keys.install", {"key": "not a key!"})
            assert await acall(path, "keys.remove", {"key": Keyring.encode_key(key)}) == {
                "ok": ["a", "b", "c"],
                "failed": {},
            }
            # the cluster still works under the new key alone
            await trio.sleep(0.5)
            assert all(alive(x) == {"a", "b", "c"} for x in (a, b, c))
            nursery.cancel_scope.cancel()


async def test_second_agent_on_the_same_control_path_is_refused(sockdir: Path) -> None:
    with trio.fail_after(10):
        async with agents(["a"], sockdir) as (a,):
            twin = Agent(agent_config("a", sockdir, []), keyring=None, handle_signals=False)
            with pytest.raises(ControlError, match="another agent is running on"):
                await twin.run()  # refused before anything starts: a plain error
            # the first agent is untouched
            assert (await acall(a.control_path or "", "status"))["name"] == "a"
