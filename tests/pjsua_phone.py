"""One SIP device or caller made of pjsua2 (PJSIP's own Python binding), run as a subprocess.

pjsua2 keeps one global endpoint per process and its own timers, so each device runs in a
process of its own, away from pytest. It binds 127.0.0.1 (or --bind ADDR, inside a network
namespace behind NAT), runs headless (the null
audio device) and reports what happens as one JSON object per line on stdout, each with
`event` and `t` (time.monotonic(), comparable between processes on one host):

    device  registered {port, contact, bindings, code, expires}  register_failed {code, reason}
            incoming {call_id, from, to}   ringing / answered / rejected {call_id[, code]}
            confirmed / media / hanging_up {call_id}
            cancelled {call_id, code, reason}: 487, unconfirmed
            disconnected {call_id, code, reason, confirmed}
    caller  calling {call_id}   progress {code}   confirmed {code}   media   cancelling
            result {code, last_code, reason, confirmed, answers_2xx}: code is the first final
            answer to the INVITE, answers_2xx how many distinct dialogs (To tags) answered 2xx
    both    rx {line, call_id, cseq, to_tag, reason}: every SIP message received
            exit {why}: the very last line

Usage (the cluster runs with --sip-auth off, so nobody authenticates):

    pjsua_phone.py device --registrar 127.0.0.1:5060 --user bob --domain example.com \\
        --instance urn:uuid:... --q 0.5 (--answer-after MS | --ring-forever | --reject CODE)
    pjsua_phone.py call sip:bob@example.com --proxy 127.0.0.1:5060 --user alice \\
        --domain example.com [--cancel-after MS] [--hangup-after MS]

Every request goes to the node given (an account proxy `sip:HOST:PORT;lr`); a device
registers `Contact: <sip:bob@127.0.0.1:PORT>;q=Q;+sip.instance="<URN>"`. A device exits on
SIGTERM or SIGINT, when its stdin closes, or after --lifetime seconds; a caller when its call
is over (or the same). Every wait is bounded. --log-file gets pjsua's log at --log-level (default 5:
every SIP message in full).

Where the instance comes from: pjsua's own +sip.instance (AccountNatConfig.sipOutboundUse
with sipOutboundInstanceId) goes out only with RFC 5626 outbound, which pjsua does over TCP
and TLS alone (over UDP it adds just `;ob` to the Contact URI). So over UDP outbound is off and
the instance, like q, is given in AccountRegConfig.contactParams, which pjsua appends to the
REGISTER Contact.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pjsua2 as pj

POLL_MS = 10


# The events go to the stdout the process was given; pjsua prints its first log lines (before
# its log settings are in) to file descriptor 1, which main() points at stderr.
_events = sys.stdout
_signalled: str | None = None  # the name of a SIGTERM or SIGINT received


def emit(event: str, **fields: Any) -> None:
    _events.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
    _events.flush()


class Trace(pj.LogWriter):  # type: ignore[misc]  # pjsua2 is untyped
    """pjsua's log, taken from its log callback (which any pjsua thread may call) into a
    list the main loop drains: written to the log file, and every SIP message pjsua logged
    as received (mod-msg-print: `RX <n> bytes ... from UDP host:port:`, the message, then
    `--end msg--`) handed on."""

    def __init__(self, path: str | None) -> None:
        super().__init__()
        self.file = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115
        self.lock = threading.Lock()
        self.entries: list[str] = []

    def write(self, entry: pj.LogEntry) -> None:
        with self.lock:
            self.entries.append(entry.msg)

    def received(self) -> Iterator[str]:
        with self.lock:
            entries, self.entries = self.entries, []
        for text in entries:
            if self.file is not None:
                self.file.write(text if text.endswith("\n") else text + "\n")
                self.file.flush()
            first, _, rest = text.partition("\n")
            if re.search(r"\bRX \d+ bytes .* from \S+ \S+:\s*$", first):
                yield rest.split("\n--end msg--", 1)[0].replace("\r\n", "\n")

    def close(self) -> None:
        for _ in self.received():
            pass
        if self.file is not None:
            self.file.close()


def header(message: str, *names: str) -> str | None:
    """The first value of a header (any of its names, compact forms included)."""
    wanted = {n.lower() for n in names}
    for line in message.split("\n")[1:]:
        if not line.strip():
            break
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() in wanted:
            return value.strip()
    return None


def summary(message: str) -> dict[str, Any]:
    to = header(message, "to", "t") or ""
    tag = re.search(r";\s*tag=([^;>\s]+)", to)
    return {
        "line": message.split("\n", 1)[0],
        "call_id": header(message, "call-id", "i"),
        "cseq": header(message, "cseq"),
        "to_tag": tag.group(1) if tag else None,
        "reason": header(message, "reason"),
    }


class Phone:
    """The endpoint, its UDP transport on 127.0.0.1 and the main loop every callback runs
    in (no pjsua worker threads: `threadCnt = 0`, events handled by `libHandleEvents`)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stop: str | None = None
        self.trace = Trace(args.log_file)
        self.deadline = time.monotonic() + args.lifetime
        self.timers: list[tuple[float, Any]] = []
        self.ep = pj.Endpoint()
        self.ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = False
        cfg.uaConfig.userAgent = "pjsua2-swimthor-tests"
        cfg.medConfig.hasIoqueue = True
        cfg.medConfig.threadCnt = 1
        # Level 4 at least: mod-msg-print logs every message at 4.
        cfg.logConfig.level = cfg.logConfig.consoleLevel = max(args.log_level, 4)
        cfg.logConfig.writer = self.trace
        cfg.logConfig.msgLogging = True
        self.ep.libInit(cfg)
        tc = pj.TransportConfig()
        tc.boundAddress = args.bind
        tc.port = args.port
        kinds = {
            "udp": pj.PJSIP_TRANSPORT_UDP,
            "tcp": pj.PJSIP_TRANSPORT_TCP,
            "tls": pj.PJSIP_TRANSPORT_TLS,
        }
        if args.transport == "tls":
            # The node's certificate is checked against --ca, and its name (an IP SAN).
            tc.tlsConfig.CaListFile = args.ca or ""
            tc.tlsConfig.verifyServer = bool(args.ca)
            tc.tlsConfig.method = pj.PJSIP_TLSV1_2_METHOD
        tid = self.ep.transportCreate(kinds[args.transport], tc)
        self.port = int(self.ep.transportGetInfo(tid).localName.rpartition(":")[2])
        self.ep.audDevManager().setNullDev()
        self.ep.libStart()

    def account_config(self, user: str, domain: str, proxy: str) -> pj.AccountConfig:
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:{user}@{domain}"
        # Every request goes to that node (over TCP or TLS: on the one connection pjsua keeps
        # to it).
        via = "" if self.args.transport == "udp" else f";transport={self.args.transport}"
        acfg.sipConfig.proxies.append(f"sip:{proxy};lr{via}")
        nat = acfg.natConfig
        nat.sipOutboundUse = 0
        nat.contactRewriteUse = 0
        nat.viaRewriteUse = 0
        nat.sdpNatRewriteUse = 0
        nat.udpKaIntervalSec = 0
        nat.iceEnabled = False
        media = acfg.mediaConfig.transportConfig
        media.boundAddress = self.args.bind  # RTP on our one address only
        media.port = 0
        return acfg

    def after(self, ms: float, what: Any) -> None:
        self.timers.append((time.monotonic() + ms / 1000, what))

    def run(self) -> None:
        while self.stop is None:
            self.ep.libHandleEvents(POLL_MS)
            for message in self.trace.received():
                self.on_rx(summary(message))
            now = time.monotonic()
            due = [w for at, w in self.timers if at <= now]
            self.timers = [(at, w) for at, w in self.timers if at > now]
            for what in due:
                what()
            if _signalled is not None:
                self.stop = self.stop or _signalled
            if now > self.deadline:
                self.stop = self.stop or "lifetime"
            if self.args.stdin_closes and self.stdin_closed():
                self.stop = self.stop or "stdin closed"

    @staticmethod
    def stdin_closed() -> bool:
        if not select.select([sys.stdin], [], [], 0)[0]:
            return False
        return not os.read(sys.stdin.fileno(), 4096)  # what the test writes is ignored

    def on_rx(self, message: dict[str, Any]) -> None:
        emit("rx", **message)

    def destroy(self) -> None:
        why = self.stop or "done"
        try:
            self.ep.hangupAllCalls()
            end = time.monotonic() + 1
            while self.busy() and time.monotonic() < end:  # the BYE/CANCEL/answers go out
                self.ep.libHandleEvents(POLL_MS)
        finally:
            self.release()
            self.ep.libDestroy()
            self.trace.close()
            emit("exit", why=why)

    def busy(self) -> bool:
        """Whether a call is not over yet."""
        return False

    def release(self) -> None:
        """Drop the pjsua2 objects this phone holds (before libDestroy)."""


class DeviceCall(pj.Call):  # type: ignore[misc]
    def __init__(self, device: Device, call_id: int) -> None:
        super().__init__(device.account, call_id)
        self.device = device
        self.sip_call_id = ""
        self.confirmed = False
        self.media_seen = False
        self.over = False

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        ci = self.getInfo()
        if ci.state == pj.PJSIP_INV_STATE_CONFIRMED and not self.confirmed:
            self.confirmed = True
            emit("confirmed", call_id=self.sip_call_id)
            if self.device.args.device_hangup_after is not None:
                self.device.after(self.device.args.device_hangup_after, self.hang_up)
        elif ci.state == pj.PJSIP_INV_STATE_DISCONNECTED and not self.over:
            self.over = True
            code, reason = int(ci.lastStatusCode), ci.lastReason
            if code == 487 and not self.confirmed:
                emit("cancelled", call_id=self.sip_call_id, code=code, reason=reason)
            emit(
                "disconnected",
                call_id=self.sip_call_id,
                code=code,
                reason=reason,
                confirmed=self.confirmed,
            )

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        ci = self.getInfo()
        active = any(
            m.type == pj.PJMEDIA_TYPE_AUDIO and m.status == pj.PJSUA_CALL_MEDIA_ACTIVE
            for m in ci.media
        )
        if active and not self.media_seen:
            self.media_seen = True
            emit("media", call_id=self.sip_call_id)

    def hang_up(self) -> None:
        """The device ends the call itself (its BYE)."""
        if not self.over:
            emit("hanging_up", call_id=self.sip_call_id)
            self.hangup(pj.CallOpParam())


class DeviceAccount(pj.Account):  # type: ignore[misc]
    def __init__(self, device: Device) -> None:
        super().__init__()
        self.device = device

    def onRegState(self, prm: pj.OnRegStateParam) -> None:
        self.device.on_reg_state(prm)

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        self.device.on_incoming(prm)


class Device(Phone):
    """Registers one contact of `user@domain` and answers as told."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.calls: list[DeviceCall] = []
        self.registered = False
        acfg = self.account_config(args.user, args.domain, args.registrar)
        acfg.regConfig.registrarUri = f"sip:{args.domain}"
        acfg.regConfig.timeoutSec = args.expires
        acfg.regConfig.retryIntervalSec = 0  # a failed REGISTER is reported, not retried
        acfg.regConfig.unregWaitMsec = 1000
        # pjsua's own +sip.instance (natConfig.sipOutboundInstanceId) goes out only with RFC
        # 5626 outbound, which pjsua does over TCP and TLS alone: over UDP the REGISTER
        # Contact gets the instance from contactParams, as q.
        params = f";q={args.q}"
        if args.instance:
            params += f';+sip.instance="<{args.instance}>"'
        acfg.regConfig.contactParams = params
        self.account = DeviceAccount(self)
        self.account.create(acfg)

    def on_reg_state(self, prm: pj.OnRegStateParam) -> None:
        code = int(prm.code)
        info = self.account.getInfo()
        if 200 <= code < 300 and prm.expiration > 0:
            if not self.registered:
                self.registered = True
                contacts = _contacts(prm.rdata.wholeMsg)
                emit(
                    "registered",
                    port=self.port,
                    contact=_contact_of(contacts, self.args.bind, self.port),
                    bindings=len(contacts),
                    code=code,
                    expires=int(prm.expiration),
                )
        elif not self.registered and (code >= 300 or code == 0 or not info.regIsActive):
            emit("register_failed", code=code, reason=prm.reason)

    def on_incoming(self, prm: pj.OnIncomingCallParam) -> None:
        call = DeviceCall(self, prm.callId)
        self.calls.append(call)
        ci = call.getInfo()
        call.sip_call_id = ci.callIdString
        emit("incoming", call_id=ci.callIdString, **{"from": ci.remoteUri, "to": ci.localUri})
        if self.args.reject is not None:
            self.answer(call, self.args.reject)
            emit("rejected", call_id=call.sip_call_id, code=self.args.reject)
            return
        self.answer(call, 180)
        emit("ringing", call_id=call.sip_call_id)
        if self.args.answer_after is not None:
            self.after(self.args.answer_after, lambda: self.pick_up(call))

    def pick_up(self, call: DeviceCall) -> None:
        if call.over:
            return
        self.answer(call, 200)
        emit("answered", call_id=call.sip_call_id)

    @staticmethod
    def answer(call: DeviceCall, code: int) -> None:
        op = pj.CallOpParam(True)
        op.statusCode = code
        call.answer(op)

    def busy(self) -> bool:
        return any(not c.over for c in self.calls)

    def release(self) -> None:
        self.calls.clear()
        with _quiet():
            self.account.shutdown()
        del self.account


class CallerCall(pj.Call):  # type: ignore[misc]
    def __init__(self, caller: Caller) -> None:
        super().__init__(caller.account)
        self.caller = caller
        self.confirmed = False
        self.media_seen = False
        self.progress: set[int] = set()

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        ci = self.getInfo()
        code = int(ci.lastStatusCode)
        if ci.state == pj.PJSIP_INV_STATE_EARLY and code not in self.progress:
            self.progress.add(code)
            emit("progress", code=code, call_id=ci.callIdString)
        elif ci.state == pj.PJSIP_INV_STATE_CONFIRMED and not self.confirmed:
            self.confirmed = True
            emit("confirmed", code=code, call_id=ci.callIdString)
            self.caller.after(self.caller.args.hangup_after, self.caller.hang_up)
        elif ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.caller.finished(code, ci.lastReason, self.confirmed)

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        ci = self.getInfo()
        active = any(
            m.type == pj.PJMEDIA_TYPE_AUDIO and m.status == pj.PJSUA_CALL_MEDIA_ACTIVE
            for m in ci.media
        )
        if active and not self.media_seen:
            self.media_seen = True
            emit("media", call_id=ci.callIdString)


class Caller(Phone):
    """Calls one URI through the node at --proxy, and reports how the call ended."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        acfg = self.account_config(args.user, args.domain, args.proxy)
        self.account = pj.Account()
        self.account.create(acfg)
        self.final: tuple[int, str] | None = None
        self.confirmed = False
        self.first_final: int | None = None  # the first final answer to our INVITE
        self.invite_call_id = ""
        self.answers: set[str] = set()  # To tags of the 2xx answers to our INVITE
        self.call = CallerCall(self)
        op = pj.CallOpParam(True)
        self.call.makeCall(args.uri, op)
        self.invite_call_id = self.call.getInfo().callIdString
        emit("calling", call_id=self.invite_call_id)
        if args.cancel_after is not None:
            self.after(args.cancel_after, self.cancel)

    def cancel(self) -> None:
        if self.final is None and not self.call.confirmed:
            emit("cancelling")
            self.call.hangup(pj.CallOpParam(True))

    def hang_up(self) -> None:
        if self.final is None:
            self.call.hangup(pj.CallOpParam(True))

    def finished(self, code: int, reason: str, confirmed: bool) -> None:
        if self.final is not None:
            return
        self.final = (code, reason)
        self.confirmed = confirmed
        # Stray 2xx from other branches may still come: look a little longer before telling.
        self.after(self.args.linger, self.report)

    def report(self) -> None:
        assert self.final is not None
        emit(
            "result",
            code=self.first_final or self.final[0],
            last_code=self.final[0],
            reason=self.final[1],
            confirmed=self.confirmed,
            answers_2xx=len(self.answers),
        )
        self.stop = "call over"

    def on_rx(self, message: dict[str, Any]) -> None:
        """A received message: note the final answers to our INVITE."""
        super().on_rx(message)
        line, cseq = message["line"], message["cseq"] or ""
        if not line.startswith("SIP/2.0 ") or not cseq.endswith("INVITE"):
            return
        if message["call_id"] != self.invite_call_id:
            return
        code = int(line.split()[1])
        if code >= 200 and self.first_final is None:
            self.first_final = code
        if 200 <= code < 300 and message["to_tag"]:
            self.answers.add(message["to_tag"])

    def busy(self) -> bool:
        return self.final is None

    def release(self) -> None:
        del self.call
        with _quiet():
            self.account.shutdown()
        del self.account


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], pj.Error)  # type: ignore[arg-type]


def _contacts(response: str) -> list[str]:
    """The bindings a 200 to REGISTER lists (one Contact value each)."""
    found: list[str] = []
    head = response.replace("\r\n", "\n").split("\n\n", 1)[0]
    for line in head.split("\n")[1:]:
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() in ("contact", "m"):
            found += [v.strip() for v in re.split(r",(?=\s*<)", value) if v.strip()]
    return found


def _contact_of(contacts: list[str], host: str, port: int) -> str | None:
    """Our own binding among them (over TCP pjsua's Contact names the port it published,
    which need not be the one the transport reports: then the one with our address)."""
    exact = next((c for c in contacts if f"{host}:{port}" in c), None)
    return exact or next((c for c in contacts if f"@{host}:" in c), None)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    device = sub.add_parser("device", help="register one contact and answer as told")
    device.add_argument("--registrar", required=True, metavar="HOST:PORT")
    device.add_argument("--instance", default=None, metavar="URN", help="+sip.instance")
    device.add_argument("--q", default="1.0")
    device.add_argument("--expires", type=int, default=300)
    device.add_argument(
        "--hangup-after",
        dest="device_hangup_after",
        type=int,
        default=None,
        metavar="MS",
        help="hang up an answered call itself, MS after it is confirmed",
    )
    how = device.add_mutually_exclusive_group(required=True)
    how.add_argument("--answer-after", type=int, metavar="MS")
    how.add_argument("--ring-forever", action="store_true", help="ring until cancelled")
    how.add_argument("--reject", type=int, metavar="CODE")
    caller = sub.add_parser("call", help="call URI and report how the call ended")
    caller.add_argument("uri")
    caller.add_argument("--proxy", required=True, metavar="HOST:PORT")
    caller.add_argument("--cancel-after", type=int, metavar="MS")
    caller.add_argument("--hangup-after", type=int, default=500, metavar="MS")
    caller.add_argument(
        "--linger", type=int, default=1000, metavar="MS", help="after the end: stray answers"
    )
    for p in (device, caller):
        p.add_argument("--user", required=True)
        p.add_argument("--domain", required=True)
        p.add_argument("--port", type=int, default=0)
        p.add_argument("--bind", default="127.0.0.1", metavar="ADDR", help="our SIP/RTP address")
        p.add_argument("--transport", choices=("udp", "tcp", "tls"), default="udp")
        p.add_argument("--ca", metavar="FILE", help="over TLS: check the node's certificate")
        p.add_argument("--lifetime", type=float, default=60.0, metavar="SECONDS")
        p.add_argument("--log-file", default=None)
        p.add_argument("--log-level", type=int, default=5)
        p.add_argument(
            "--ignore-stdin",
            dest="stdin_closes",
            action="store_false",
            help="do not exit when stdin closes",
        )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    global _events
    args = parse(argv)
    _events = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)

    def on_signal(signum: int, frame: object) -> None:
        global _signalled
        _signalled = _signalled or signal.Signals(signum).name

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    phone: Phone = Device(args) if args.mode == "device" else Caller(args)
    try:
        phone.run()
    finally:
        if isinstance(phone, Caller) and phone.final is None:
            emit("result", code=None, reason=phone.stop, confirmed=False, answers_2xx=0)
        phone.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
