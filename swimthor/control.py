"""The control socket: how `swimthor members/status/leave/keys` talk to the local agent.

A Unix stream socket readable only by its owner (mode 0600, in a 0700 folder when we create
the folder). One request per connection: the client writes one JSON line
``{"cmd": "members", "args": {...}}``, the agent answers one JSON line ``{"ok": true,
"result": ...}`` or ``{"ok": false, "error": "..."}`` and closes. Requests are bounded in size
(64 KiB) and time (5 s); anything malformed gets an error reply, never a crash.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

from .sockets import serve_listener

__all__ = [
    "MAX_REQUEST",
    "ControlError",
    "Handler",
    "call",
    "default_control_path",
    "open_control_socket",
    "serve_control",
]

log = structlog.get_logger("swimthor.control")

MAX_REQUEST = 64 * 1024
REQUEST_TIMEOUT = 5.0
MAX_REPLY = 64 * 1024 * 1024
MAX_CONNECTIONS = 32
REPLY_WRITE_TIMEOUT = 5.0
DRAIN_TIMEOUT = 1.0
DRAIN_LIMIT = 1024 * 1024

Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]


class ControlError(Exception):
    """A control request failed; `str()` is one line for the operator."""


def default_control_path() -> str:
    """$SWIMTHOR_CONTROL, else $XDG_RUNTIME_DIR/swimthor/control.sock, else
    /run/swimthor/control.sock for root, else /tmp/swimthor-<uid>/control.sock."""
    env = os.environ.get("SWIMTHOR_CONTROL")
    if env:
        return env
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "swimthor", "control.sock")
    uid = os.getuid()
    if uid == 0:
        return "/run/swimthor/control.sock"
    return f"/tmp/swimthor-{uid}/control.sock"


# ---------------------------------------------------------------- server


def _prepare_path(path: str) -> None:
    """Create the parent folder (0700) if missing; remove a stale socket; refuse a live one."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        try:
            os.makedirs(parent, mode=0o700, exist_ok=True)
        except OSError as e:
            raise ControlError(f"cannot create {parent}: {e.strerror or e}") from None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise ControlError(f"cannot use {path}: {e.strerror or e}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(f"{path} exists and is not a socket; remove it or pick another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale: nobody listens
        log.info("removed stale control socket", path=path)
        return
    except OSError as e:
        raise ControlError(f"cannot use {path}: {e.strerror or e}") from None
    finally:
        probe.close()
    raise ControlError(f"another agent is running on {path}")


def _bind_private(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)  # belt and braces: umask is process-wide
        sock.listen(64)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise ControlError(f"cannot listen on {path}: {e.strerror or e}") from None
    return sock


def open_control_socket(path: str) -> socket.socket:
    """Bind and listen on `path` (mode 0600, parent folder created 0700 if missing).

    A stale socket file nobody listens on is replaced; ControlError("another agent is running
    on PATH") if one answers, or another one-line ControlError if the path cannot be used.
    """
    _prepare_path(path)
    return _bind_private(path)


async def serve_control(
    path: str,
    handler: Handler,
    *,
    sock: socket.socket | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on `path` and answer requests with `handler(cmd, args)` until cancelled; the
    socket file is removed on the way out.

    The handler returns a JSON-able result or raises ControlError(message) for a user error.
    `sock`: already opened with `open_control_socket(path)`; else it is opened here, and a
    ControlError is raised before `task_status.started(path)` if that fails.
    """
    if sock is None:
        sock = open_control_socket(path)
    ident = os.stat(path)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    active = 0

    def admit(stream: trio.SocketStream) -> Callable[[], Awaitable[None]] | None:
        nonlocal active
        if active >= MAX_CONNECTIONS:
            return None
        active += 1

        async def serve_one() -> None:
            nonlocal active
            try:
                await _serve_connection(stream, handler)
            finally:
                active -= 1

        return serve_one

    try:
        task_status.started(path)
        await serve_listener(listener, admit, what="control")
    finally:
        # Synchronous on purpose: an await here would be cancelled before the cleanup.
        with contextlib.suppress(OSError):
            st = os.stat(path)
            if (st.st_dev, st.st_ino) == (ident.st_dev, ident.st_ino):
                os.unlink(path)
        listener.socket.close()


async def _read_line(stream: trio.SocketStream) -> bytes:
    buf = bytearray()
    while True:
        chunk = await stream.receive_some(MAX_REQUEST + 1 - len(buf))
        if not chunk:
            if not buf:
                raise ControlError("empty request")
            return bytes(buf)  # a request without its final newline is fine
        buf += chunk
        nl = buf.find(b"\n")
        if nl >= 0:
            return bytes(buf[:nl])
        if len(buf) > MAX_REQUEST:
            raise ControlError(f"request longer than {MAX_REQUEST} bytes")


def _parse_request(line: bytes) -> tuple[str, dict[str, Any]]:
    try:
        doc = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        raise ControlError(f"request is not valid JSON: {e}") from None
    except RecursionError:
        raise ControlError("request is nested too deeply") from None
    if not isinstance(doc, dict):
        raise ControlError('request must be a JSON object {"cmd": ..., "args": {...}}')
    cmd = doc.get("cmd")
    if not isinstance(cmd, str) or not cmd:
        raise ControlError('request needs "cmd", a non-empty string')
    args = doc.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ControlError('"args" must be a JSON object')
    return cmd, args


async def _serve_connection(stream: trio.SocketStream, handler: Handler) -> None:
    reply: dict[str, Any]
    try:
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                line = await _read_line(stream)
        except trio.TooSlowError:
            raise ControlError(f"no complete request within {REQUEST_TIMEOUT:g} s") from None
        cmd, args = _parse_request(line)
        result = await handler(cmd, args)
        reply = {"ok": True, "result": result}
    except ControlError as e:
        reply = {"ok": False, "error": str(e)}
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await trio.aclose_forcefully(stream)
        return
    except Exception as e:
        log.exception("control command failed")
        reply = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}
    try:
        data = (json.dumps(reply, default=str) + "\n").encode("utf-8")
    except (TypeError, ValueError) as e:
        data = (json.dumps({"ok": False, "error": f"internal error: {e}"}) + "\n").encode()
    # The reply goes out even if the agent is shutting down (e.g. after "leave").
    with (
        trio.CancelScope(shield=True),
        trio.move_on_after(REPLY_WRITE_TIMEOUT),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
    ):
        await stream.send_all(data)
    # Read what the client may still be sending (say, the rest of an oversized request)
    # before closing, so that it sees our reply rather than a connection reset.
    with (
        trio.move_on_after(DRAIN_TIMEOUT),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
    ):
        await stream.send_eof()
        drained = 0
        while drained < DRAIN_LIMIT and (chunk := await stream.receive_some(65536)):
            drained += len(chunk)
    await trio.aclose_forcefully(stream)


# ---------------------------------------------------------------- client


def call(path: str, cmd: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    """Send one command to the agent on `path` and return its result (blocking; for the CLI).

    Raises ControlError with a one-line message when nobody listens, access is denied, the
    agent does not answer in `timeout` seconds, or the agent reports an error.
    """
    deadline = time.monotonic() + timeout
    request = (json.dumps({"cmd": cmd, "args": args or {}}) + "\n").encode("utf-8")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            raise ControlError(
                f"no agent is listening on {path} (is `swimthor join` running?)"
            ) from None
        except PermissionError:
            raise ControlError(
                f"permission denied on {path} (run as the user the agent runs as)"
            ) from None
        sock.sendall(request)
        buf = bytearray()
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
            if len(buf) > MAX_REPLY:
                raise ControlError(f"reply from the agent on {path} is too large")
    except TimeoutError:
        raise ControlError(f"the agent on {path} did not answer within {timeout:g} s") from None
    except OSError as e:
        if e.errno == errno.EACCES:
            raise ControlError(f"permission denied on {path}") from None
        raise ControlError(f"control socket {path}: {e.strerror or e}") from None
    finally:
        sock.close()
    line = bytes(buf).split(b"\n", 1)[0]
    if not line:
        raise ControlError(f"the agent on {path} closed the connection without an answer")
    try:
        reply = json.loads(line)
    except ValueError:
        raise ControlError(f"the agent on {path} sent a reply that is not JSON") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ControlError(f"the agent on {path} sent a malformed reply")
    if not reply["ok"]:
        raise ControlError(str(reply.get("error") or "the agent reported an unknown error"))
    return reply.get("result")
