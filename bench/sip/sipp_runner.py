"""Drive sipp (and the reference Kamailio) for the SIP interop tests and the SIP benchmark.

Standard library only. The scenarios are swimthor/sip/scenarios/*.xml (first written as
tests/sipp/*.xml; `SCENARIOS` finds either, or $SIPP_SCENARIOS); their conventions (see
bench/sip/README.md): the user is [field0] of an injection file (`-inf`), the domain is
`-key domain D`, the callee of uac.xml is `-s USER`, and the proxy/registrar is sipp's target
host:port. All traffic stays on 127.0.0.1.

    run_sipp(args, timeout)            one sipp run, its final statistics as a SippResult
    step_rate(make_args, rates, ...)   sipp at increasing rates until a step fails
    kamailio(port, workers)            bench/sip/kamailio.cfg in the foreground, killed on exit
    write_users_csv(path, users)       an injection file for -inf
    free_udp_port()                    a port free on 127.0.0.1 for UDP and TCP

Every process started here is bounded in time and killed by its PID (Kamailio by its own
process group, which it leads) when its run ends or times out.

    python -m bench.sip.sipp_runner validate         # 50 calls at 20 cps via Kamailio
    python -m bench.sip.sipp_runner bench            # REGISTER/s and call setups/s
    python -m bench.sip.sipp_runner --target 127.0.0.1:5060 bench   # another server
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from swimthor.ports import free_ports

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def _scenarios() -> Path:
    """The sipp scenarios: $SIPP_SCENARIOS, else swimthor/sip/scenarios (where the package
    ships them), else tests/sipp (where they started)."""
    env = os.environ.get("SIPP_SCENARIOS")
    if env:
        return Path(env)
    for d in (REPO / "swimthor" / "sip" / "scenarios", REPO / "tests" / "sipp"):
        if (d / "register.xml").exists():
            return d
    return REPO / "swimthor" / "sip" / "scenarios"


SCENARIOS = _scenarios()
KAMAILIO_CFG = HERE / "kamailio.cfg"
KAMAILIO_TM_CFG = HERE / "kamailio_tm.cfg"  # transaction-stateful, forks to every contact

SIPP = shutil.which("sipp") or "/usr/bin/sipp"
KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
SIPP_BUFFER = 4 * 1024 * 1024  # -buff_size: sipp's socket send and receive buffers


# ---------------------------------------------------------------------------------------
# ports and files


def free_udp_port(exclude: Sequence[int] = ()) -> int:
    """A port free on 127.0.0.1 for both UDP and TCP (Kamailio listens on both), reserved
    for this process (`swimthor.ports`: never handed out twice, by this run or another)."""
    while True:
        port = free_ports(1)[0]
        if port not in exclude:
            return port


def _free_port_pair() -> int:
    """An even port P with P..P+3 free for UDP (sipp's RTP echo binds -mp and -mp+2)."""
    return free_ports(1, block=4)[0]


def write_users_csv(path: Path | str, users: Sequence[str], order: str = "SEQUENTIAL") -> Path:
    """An injection file for `-inf`: the order line, then one user ([field0]) per line."""
    p = Path(path)
    p.write_text(order + "\n" + "".join(f"{u}\n" for u in users))
    return p


def users(n: int, prefix: str = "user") -> list[str]:
    return [f"{prefix}{i}" for i in range(1, n + 1)]


# ---------------------------------------------------------------------------------------
# one sipp run


@dataclass
class SippResult:
    """The last row of sipp's statistics file (-trace_stat), plus how the process ended."""

    args: list[str]
    returncode: int | None
    timed_out: bool
    wall_s: float
    created: int = 0  # TotalCallCreated
    successful: int = 0  # SuccessfulCall(C)
    failed: int = 0  # FailedCall(C)
    retransmissions: int = 0  # Retransmissions(C)
    current: int = 0  # CurrentCall: calls still open when sipp stopped
    out_of_call: int = 0  # OutOfCallMsgs(C)
    dead_call: int = 0  # DeadCallMsgs(C)
    fatal_errors: int = 0  # FatalErrors(C)
    elapsed_s: float = 0.0  # CurrentTime - StartTime of the last row
    # when the last call was created (s after StartTime), interpolated between the periodic
    # rows (-fd 1); None without periodic rows
    created_by_s: float | None = None
    call_rate: float = 0.0  # CallRate(C), as sipp computes it
    response_time_ms: float | None = None  # ResponseTime1(C): mean, sipp's ms resolution
    response_time_stdev_ms: float | None = None
    # ResponseTimeRepartition1 buckets, {"<1": n, "<2": n, ..., ">=1000": n} (ms)
    response_time_buckets: dict[str, int] = field(default_factory=dict)
    stats: dict[str, str] = field(default_factory=dict)  # the whole last row
    errors: str = ""  # tail of sipp's error file and stderr

    @property
    def achieved_rate(self) -> float:
        """Calls created per second while sipp was creating them (not counting the time the
        last calls took to end, which a few hung calls would stretch to sipp's timeout)."""
        span = self.created_by_s or self.elapsed_s
        return self.created / span if span > 0 else 0.0

    @property
    def bad_fraction(self) -> float:
        """(failed + retransmissions + calls left open) / created; 1.0 when nothing was
        created."""
        if self.created == 0:
            return 1.0
        return (self.failed + self.retransmissions + self.current) / self.created

    def response_time_pct_ms(self, q: float) -> float | None:
        """Upper bound (bucket edge, ms) of the q-quantile of response time 1."""
        total = sum(self.response_time_buckets.values())
        if total == 0:
            return None
        need = q * total
        seen = 0
        for label, n in self.response_time_buckets.items():
            seen += n
            if seen >= need and n:
                return float(label.lstrip("<>="))
        return None

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("stats")
        d["achieved_rate"] = round(self.achieved_rate, 1)
        d["bad_fraction"] = self.bad_fraction
        d["rt_p50_ms_le"] = self.response_time_pct_ms(0.5)
        d["rt_p99_ms_le"] = self.response_time_pct_ms(0.99)
        return d


def _epoch(stamp: str) -> float:
    # sipp writes "2026-11-26\t10:45:20.462540\t1795689920.462540"
    return float(stamp.split("\t")[-1])


def _duration_ms(value: str) -> float | None:
    # "HH:MM:SS:uuuuuu"
    try:
        h, m, s, us = (int(x) for x in value.split(":"))
    except ValueError:
        return None
    return (h * 3600 + m * 60 + s) * 1000.0 + us / 1000.0


def parse_stat_rows(path: Path | str) -> list[dict[str, str]]:
    """All data rows of a sipp -trace_stat CSV (';'-separated), each as header -> value."""
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f, delimiter=";") if r]
    if len(rows) < 2:
        return []
    header = rows[0]
    return [{h: v for h, v in zip(header, row, strict=False) if h} for row in rows[1:]]


def parse_stat_file(path: Path | str) -> dict[str, str]:
    """The last data row of a sipp -trace_stat CSV: the cumulative counters at exit."""
    rows = parse_stat_rows(path)
    return rows[-1] if rows else {}


def _created_by(rows: list[dict[str, str]]) -> float | None:
    """Seconds from StartTime until TotalCallCreated reached its final value, interpolated
    linearly between the two periodic rows around that moment."""
    try:
        points = [
            (_epoch(r["CurrentTime"]) - _epoch(r["StartTime"]), int(r["TotalCallCreated"]))
            for r in rows
        ]
    except (KeyError, ValueError, IndexError):
        return None
    if not points or points[-1][1] == 0:
        return None
    final = points[-1][1]
    prev_t, prev_c = 0.0, 0
    for t, c in points:
        if c >= final:
            if c == prev_c:
                return t
            return prev_t + (final - prev_c) / (c - prev_c) * (t - prev_t)
        prev_t, prev_c = t, c
    return points[-1][0]


def _fill(result: SippResult, stats: dict[str, str]) -> None:
    def num(key: str) -> int:
        try:
            return int(float(stats.get(key, "0") or 0))
        except ValueError:
            return 0

    result.stats = stats
    result.created = num("TotalCallCreated")
    result.successful = num("SuccessfulCall(C)")
    result.failed = num("FailedCall(C)")
    result.retransmissions = num("Retransmissions(C)")
    result.current = num("CurrentCall")
    result.out_of_call = num("OutOfCallMsgs(C)")
    result.dead_call = num("DeadCallMsgs(C)")
    result.fatal_errors = num("FatalErrors(C)")
    try:
        result.elapsed_s = _epoch(stats["CurrentTime"]) - _epoch(stats["StartTime"])
    except (KeyError, ValueError, IndexError):
        result.elapsed_s = 0.0
    try:
        result.call_rate = float(stats.get("CallRate(C)", "0") or 0)
    except ValueError:
        result.call_rate = 0.0
    if "ResponseTime1(C)" in stats:
        result.response_time_ms = _duration_ms(stats["ResponseTime1(C)"])
        result.response_time_stdev_ms = _duration_ms(stats.get("ResponseTime1StDev(C)", ""))
    prefix = "ResponseTimeRepartition1_"
    result.response_time_buckets = {
        k[len(prefix) :]: int(v or 0) for k, v in stats.items() if k.startswith(prefix)
    }


def _stop(proc: subprocess.Popen[Any], grace: float = 3.0, group: bool = False) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds: the process (or the group it leads)."""
    if proc.poll() is not None:
        return

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                os.kill(proc.pid, sig)

    send(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait(5)
    if group:
        # children left behind by a killed leader (Kamailio's workers) share its group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _has(args: Sequence[str], flag: str) -> bool:
    return flag in args


def sipp_base_args(local_port: int | None = None) -> list[str]:
    """Options every run here needs: loopback, no stdin, private control and media ports.

    sipp's defaults are shared by every sipp on the machine (control port 8888, RTP echo
    6000, SIP 5060 first): concurrent runs would collide, so each run gets free ones.
    sipp's socket buffers default to 64 KiB, which overflow under load long before the
    server is busy (most "retransmissions" at 20,000+ msg/s were drops in sipp's own receive
    buffer), so they are 4 MiB here (the kernel caps them at net.core.rmem_max/wmem_max)."""
    args = ["-i", "127.0.0.1", "-nostdin", "-buff_size", str(SIPP_BUFFER)]
    args += ["-p", str(local_port if local_port is not None else free_udp_port())]
    args += ["-cp", str(free_udp_port()), "-mp", str(_free_port_pair())]
    return args


def start_sipp(
    args: Sequence[str], workdir: Path, name: str = "sipp", timeout: float | None = None
) -> tuple[subprocess.Popen[Any], Path, Path]:
    """Start sipp (not waiting): -trace_stat into workdir, -trace_err, -timeout if given.

    Returns (process, statistics file, error file). Stop it with `finish_sipp`."""
    stf = workdir / f"{name}.stat.csv"
    err = workdir / f"{name}.errors.log"
    full = [SIPP, *args]
    if not _has(args, "-nostdin"):
        full.append("-nostdin")
    full += ["-trace_stat", "-stf", str(stf), "-fd", "1"]
    full += ["-trace_err", "-error_file", str(err)]
    if timeout is not None and not _has(args, "-timeout"):
        # sipp's own deadline, so it stops by itself and still writes its final statistics
        full += ["-timeout", f"{max(1, int(timeout))}s"]
    out = open(workdir / f"{name}.screen.log", "wb")  # noqa: SIM115 - closed with the process
    try:
        proc = subprocess.Popen(
            full, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=workdir
        )
    finally:
        out.close()
    return proc, stf, err


def finish_sipp(
    proc: subprocess.Popen[Any],
    stf: Path,
    err: Path,
    timeout: float,
    started: float | None = None,
    stop: bool = False,
) -> SippResult:
    """Wait up to `timeout` for sipp (or stop it now if `stop`), kill it if it is still there,
    and read its final statistics."""
    started = time.monotonic() if started is None else started
    timed_out = False
    if stop:
        # SIGUSR1 is sipp's soft exit (like 'q'): stop, close calls, write the statistics
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGUSR1)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            _stop(proc)
    else:
        try:
            proc.wait(max(0.0, timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop(proc)
    result = SippResult(
        args=list(proc.args) if isinstance(proc.args, list) else [str(proc.args)],
        returncode=proc.returncode,
        timed_out=timed_out,
        wall_s=time.monotonic() - started,
    )
    if stf.exists():
        rows = parse_stat_rows(stf)
        if rows:
            _fill(result, rows[-1])
            result.created_by_s = _created_by(rows)
    tail = []
    if err.exists():
        tail.append(err.read_text(errors="replace")[-2000:])
    screen = err.with_name(err.name.replace(".errors.log", ".screen.log"))
    if screen.exists() and not result.stats:
        tail.append(screen.read_text(errors="replace")[-1500:])
    result.errors = "\n".join(t for t in tail if t.strip())
    return result


def run_sipp(args: list[str], timeout: float, workdir: Path | str | None = None) -> SippResult:
    """Run sipp with `args` (target, -sf, -inf, -m, ...) for at most `timeout` seconds.

    sipp gets `-timeout` of its own (so it ends by itself and writes its statistics) and is
    killed if it outlives `timeout` + 5 s. The statistics come from `-trace_stat -stf`, the
    last row: cumulative (C) counters at exit."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="sipp-"))
        wd = Path(workdir)
        started = time.monotonic()
        proc, stf, err = start_sipp(args, wd, name=f"run-{uuid.uuid4().hex[:8]}", timeout=timeout)
        return finish_sipp(proc, stf, err, timeout + 5.0, started)


# ---------------------------------------------------------------------------------------
# load steps


@dataclass
class Step:
    rate: int
    calls: int
    result: SippResult
    passed: bool
    why: str
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the UAS's own counters
    note: str = ""  # a second line for the step's log (not in its row)

    def row(self) -> dict[str, Any]:
        r = self.result
        return {
            "rate": self.rate,
            "calls": self.calls,
            "created": r.created,
            "successful": r.successful,
            "failed": r.failed,
            "retransmissions": r.retransmissions,
            "open": r.current,
            "elapsed_s": round(r.elapsed_s, 3),
            "created_by_s": None if r.created_by_s is None else round(r.created_by_s, 3),
            "achieved_rate": round(r.achieved_rate, 1),
            "bad_fraction": round(r.bad_fraction, 5),
            "rt_mean_ms": r.response_time_ms,
            "rt_p50_ms_le": r.response_time_pct_ms(0.5),
            "rt_p99_ms_le": r.response_time_pct_ms(0.99),
            "passed": self.passed,
            "why": self.why,
            **self.extra,
        }


@dataclass
class StepRateResult:
    steps: list[Step]
    best_rate: int | None  # highest rate of a passing step before the first failing one

    def rows(self) -> list[dict[str, Any]]:
        return [s.row() for s in self.steps]


def judge(
    result: SippResult,
    rate: int,
    calls: int,
    limit_fraction: float,
    min_rate_fraction: float,
) -> tuple[bool, str]:
    """A step passes when every call was made, (failed + retransmissions + calls still open
    at the end)/created is at most `limit_fraction`, and sipp really offered the rate asked
    for (at least `min_rate_fraction` of it: on a shared 2-core machine the generator can be
    the limit). sipp killed after its deadline fails the step."""
    if result.timed_out:
        return False, "sipp outlived its deadline and was killed"
    if result.created < calls:
        return False, f"only {result.created}/{calls} calls made"
    if result.bad_fraction > limit_fraction:
        return False, (
            f"(failed {result.failed} + retrans {result.retransmissions} + open"
            f" {result.current})/{result.created} = {result.bad_fraction:.4f} > {limit_fraction}"
        )
    if result.achieved_rate < min_rate_fraction * rate:
        return False, f"offered only {result.achieved_rate:.0f}/s of {rate}/s"
    return True, "ok"


def step_rate(
    make_args: Callable[[int], list[str]],
    rates: Sequence[int],
    duration_per_step: float,
    limit_fraction: float = 0.005,
    *,
    min_rate_fraction: float = 0.9,
    settle_s: float = 1.0,
    before_step: Callable[[int], None] | None = None,
    after_step: Callable[[Step], None] | None = None,
    log: Callable[[str], None] | None = print,
    workdir: Path | str | None = None,
    step_timeout: float | None = None,
) -> StepRateResult:
    """sipp at each rate in turn (`make_args(rate)` + `-r RATE -m RATE*duration`), stopping at
    the first step that fails `judge`. Each step is bounded by `step_timeout` (default 2 x its
    duration + 5 s; sipp is killed 5 s after that if it has not ended).
    `before_step(rate)` runs before each step and `after_step(step)` after it (it may fail
    the step: set `passed` and `why`, and add to `extra`); sipp's files go to `workdir` if
    given (kept, for a look at a failed step), else to a temporary directory."""
    steps: list[Step] = []
    best: int | None = None
    for rate in rates:
        if before_step is not None:
            before_step(rate)
        calls = max(1, int(rate * duration_per_step))
        args = [*make_args(rate), "-r", str(rate), "-m", str(calls)]
        if not _has(args, "-l"):
            # open calls at most: a few seconds' worth, under sipp's open-files limit (20000)
            args += ["-l", str(min(15000, max(1000, rate * 3)))]
        timeout = step_timeout if step_timeout is not None else 2 * duration_per_step + 5
        result = run_sipp(args, timeout=timeout, workdir=workdir)
        ok, why = judge(result, rate, calls, limit_fraction, min_rate_fraction)
        step = Step(rate, calls, result, ok, why)
        if after_step is not None:
            after_step(step)
            ok, why = step.passed, step.why
        steps.append(step)
        if log is not None:
            row = step.row()
            log(
                f"  rate {rate:>6}/s  calls {calls:>6}  ok {row['successful']:>6}"
                f"  failed {row['failed']:>5}  retrans {row['retransmissions']:>5}"
                f"  open {row['open']:>4}"
                f"  achieved {row['achieved_rate']:>8.1f}/s  rt p50<={row['rt_p50_ms_le']}ms"
                f" p99<={row['rt_p99_ms_le']}ms  {'PASS' if ok else 'FAIL: ' + why}"
            )
            if step.note:
                log("    " + step.note)
            if not ok and result.errors and not result.created:
                log("    " + result.errors.strip().replace("\n", "\n    ")[-600:])
        if not ok:
            break
        best = rate
        time.sleep(settle_s)
    return StepRateResult(steps, best)


# ---------------------------------------------------------------------------------------
# Kamailio


@dataclass
class Kamailio:
    address: str
    port: int
    workers: int
    pid: int
    rundir: Path
    log: Path

    @property
    def target(self) -> str:
        return f"{self.address}:{self.port}"


def sip_options_probe(address: str, port: int, timeout: float = 0.5) -> int | None:
    """Send one OPTIONS to sip:address:port over UDP; the response's status code, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        lport = s.getsockname()[1]
        tag = uuid.uuid4().hex[:10]
        msg = (
            f"OPTIONS sip:{address}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{lport};rport;branch=z9hG4bK-{tag}\r\n"
            f"From: <sip:probe@127.0.0.1>;tag={tag}\r\n"
            f"To: <sip:{address}:{port}>\r\n"
            f"Call-ID: probe-{tag}@127.0.0.1\r\n"
            "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        s.sendto(msg.encode(), (address, port))
        try:
            data = s.recv(65535)
        except OSError:
            return None
    parts = data.split(b" ", 2)
    if len(parts) >= 2 and parts[0] == b"SIP/2.0" and parts[1].isdigit():
        return int(parts[1])
    return None


@contextlib.contextmanager
def kamailio(
    port: int | None = None,
    workers: int = 1,
    address: str = "127.0.0.1",
    cfg: Path | str = KAMAILIO_CFG,
    shm_mb: int = 256,
    pkg_mb: int = 16,
    start_timeout: float = 10.0,
    log_level: int = 1,
    maxbuffer: int | None = None,
) -> Iterator[Kamailio]:
    """Kamailio in the foreground with bench/sip/kamailio.cfg on address:port (UDP and TCP),
    `workers` UDP receivers and TCP workers; ready once it answers an OPTIONS; its whole
    process group (it leads one) is killed on exit. `maxbuffer` raises the UDP receive buffer
    that Kamailio probes for (its default is 256 KiB)."""
    if not Path(KAMAILIO).exists():
        raise RuntimeError("kamailio is not installed (apt-get install kamailio)")
    port = free_udp_port() if port is None else port
    rundir = Path(tempfile.mkdtemp(prefix="kamailio-"))
    log = rundir / "kamailio.log"
    cmd = [
        KAMAILIO,
        "-f", str(cfg),
        "-DD", "-E",
        "-m", str(shm_mb), "-M", str(pkg_mb),
        "-Y", str(rundir), "-w", str(rundir),
        "-P", str(rundir / "kamailio.pid"),
        "-A", f"SIP_ADDR={address}",
        "-A", f"SIP_PORT={port}",
        "-A", f"WORKERS={workers}",
        "-A", f"LOG_LEVEL={log_level}",
    ]  # fmt: skip
    if maxbuffer is not None:
        cmd += ["-A", f"MAXBUFFER={maxbuffer}"]
    out = open(log, "wb")  # noqa: SIM115 - closed below
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            cwd=rundir, start_new_session=True,
        )  # fmt: skip
    finally:
        out.close()
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"kamailio exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
                )
            if sip_options_probe(address, port, timeout=0.2) == 200:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"kamailio not answering on {address}:{port}")
        yield Kamailio(address, port, workers, proc.pid, rundir, log)
    finally:
        _stop(proc, grace=5.0, group=True)
        shutil.rmtree(rundir, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# the scenarios, ready-made


def register_args(
    target: str,
    users_csv: Path,
    domain: str,
    local_port: int | None = None,
    scenario: str = "register.xml",
) -> list[str]:
    """register.xml (or unregister.xml) from local_port, one REGISTER per call."""
    return [
        target, "-sf", str(SCENARIOS / scenario), "-inf", str(users_csv),
        "-key", "domain", domain, *sipp_base_args(local_port),
    ]  # fmt: skip


def uas_args(port: int, scenario: str = "uas.xml") -> list[str]:
    return ["-sf", str(SCENARIOS / scenario), *sipp_base_args(port)]


def register_device_args(
    target: str, users_csv: Path, domain: str, local_port: int, q: str, instance: str
) -> list[str]:
    """register_device.xml from local_port: a Contact with q and +sip.instance (one device of
    a user that has several)."""
    return [
        target, "-sf", str(SCENARIOS / "register_device.xml"), "-inf", str(users_csv),
        "-key", "domain", domain, "-key", "q", q, "-key", "instance", instance,
        *sipp_base_args(local_port),
    ]  # fmt: skip


def read_counts(path: Path) -> dict[str, int]:
    """The last row of a sipp -trace_counts file (`<scenario>_<pid>_counts.csv`): per
    scenario element, how many messages it received, sent, retransmitted, timed out, ...,
    e.g. {"3_CANCEL_Recv": 60, "3_CANCEL_Retrans": 0, ...}; {} if there is none."""
    rows = parse_stat_rows(path) if path.exists() else []
    if not rows:
        return {}
    out = {}
    for k, v in rows[-1].items():
        with contextlib.suppress(ValueError):
            out[k] = int(v)
    return out


def counted(counts: dict[str, int], message: str, what: str) -> int:
    """The sum over the scenario's elements for `message` (a method or a status code) and
    `what` ("Recv", "Retrans", "Sent", "Timeout", "Unexp") of a `read_counts` row."""
    return sum(v for k, v in counts.items() if k.split("_", 1)[-1] == f"{message}_{what}")


def uac_args(
    target: str, users_csv: Path, domain: str, callee: str, pause_ms: int = 0
) -> list[str]:
    args = [
        target, "-sf", str(SCENARIOS / "uac.xml"), "-inf", str(users_csv),
        "-key", "domain", domain, "-s", callee, *sipp_base_args(),
    ]  # fmt: skip
    if pause_ms:
        args += ["-d", str(pause_ms)]
    return args


def register_callee(
    target: str,
    workdir: Path,
    callee: str,
    domain: str,
    port: int,
    timeout: float = 10.0,
    scenario: str = "register.xml",
) -> SippResult:
    """Bind callee to 127.0.0.1:port: register.xml (or `scenario`) sent from that port, which
    is free again once this sipp has exited, so the UAS can bind it next."""
    csvf = write_users_csv(workdir / f"{callee}.csv", [callee])
    return run_sipp([*register_args(target, csvf, domain, port, scenario), "-m", "1"], timeout)


@contextlib.contextmanager
def uas(
    workdir: Path, port: int, max_s: float = 300.0
) -> Iterator[tuple[subprocess.Popen[Any], Path, Path]]:
    """uas.xml listening on 127.0.0.1:port for at most max_s; stopped and killed on exit."""
    proc, stf, err = start_sipp(uas_args(port), workdir, name=f"uas-{port}", timeout=max_s)
    try:
        time.sleep(0.3)
        if proc.poll() is not None:
            raise RuntimeError(f"uas sipp exited at once ({proc.returncode})")
        yield proc, stf, err
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGUSR1)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                _stop(proc)


class StepUas:
    """A fresh uas.xml (or `scenario`) for every step of a call ladder, on the port the callee
    is registered with: a UAS that has carried the previous steps (their calls in timewait,
    thousands of dead-call records) is not the same generator at the next rate. `finish` adds
    the UAS's counters to the step's row (as `{label}_successful`, ...) and fails the step
    when more than `limit_fraction` of its calls did not end successfully at the UAS as well.
    With `counts`, sipp also counts each message of the scenario (-trace_counts), and
    `counts_of_last` holds the last step's final row of them (see `read_counts`)."""

    def __init__(
        self,
        workdir: Path,
        port: int,
        max_s: float,
        limit_fraction: float,
        scenario: str = "uas.xml",
        label: str = "uas",
        counts: bool = False,
    ) -> None:
        self.workdir, self.port, self.max_s = workdir, port, max_s
        self.limit_fraction = limit_fraction
        self.scenario, self.label, self.counts = scenario, label, counts
        self.proc: subprocess.Popen[Any] | None = None
        self.files: tuple[Path, Path] | None = None
        self.n = 0
        self.counts_of_last: dict[str, int] = {}

    def __enter__(self) -> StepUas:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, rate: int) -> None:
        self.stop()
        self.n += 1
        deadline = time.monotonic() + 5
        while True:  # the previous UAS's socket is gone once it has exited; check anyway
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind(("127.0.0.1", self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        args = uas_args(self.port, self.scenario) + (["-trace_counts"] if self.counts else [])
        self.proc, stf, err = start_sipp(
            args, self.workdir, name=f"{self.label}-{self.port}-{self.n}", timeout=self.max_s
        )
        self.files = (stf, err)
        time.sleep(0.3)
        if self.proc.poll() is not None:
            raise RuntimeError(f"the uas sipp exited at once ({self.proc.returncode})")

    def stop(self) -> SippResult | None:
        if self.proc is None or self.files is None:
            return None
        proc, (stf, err) = self.proc, self.files
        self.proc = self.files = None
        if proc.poll() is None:
            time.sleep(0.2)  # the last BYE's 200
        result = finish_sipp(proc, stf, err, 5, stop=proc.poll() is None)
        if self.counts:
            stem = Path(self.scenario).stem
            self.counts_of_last = read_counts(self.workdir / f"{stem}_{proc.pid}_counts.csv")
        return result

    def finish(self, step: Step) -> None:
        u = self.stop()
        if u is None:
            return
        label = self.label
        step.extra.update(
            {
                f"{label}_created": u.created,
                f"{label}_successful": u.successful,
                f"{label}_failed": u.failed,
                f"{label}_retransmissions": u.retransmissions,
                f"{label}_open": u.current,
            }
        )
        missing = max(0, step.calls - u.successful)
        if step.passed and missing > self.limit_fraction * step.calls:
            step.passed = False
            step.why = f"{label}: {u.successful}/{step.calls} successful, {u.failed} failed"


# ---------------------------------------------------------------------------------------
# command line: validation and measurement


def _print_result(label: str, r: SippResult) -> None:
    print(
        f"{label}: rc={r.returncode} created={r.created} ok={r.successful} failed={r.failed}"
        f" retrans={r.retransmissions} open={r.current} elapsed={r.elapsed_s:.2f}s"
        f" rate={r.achieved_rate:.1f}/s timed_out={r.timed_out}"
    )
    if r.errors and (r.failed or r.returncode not in (0, None)):
        # the first events only: sipp's error file repeats whole messages
        print("  " + "\n  ".join(r.errors.strip().splitlines()[:4])[:600])


@contextlib.contextmanager
def _target(args: argparse.Namespace) -> Iterator[str]:
    if args.target:
        yield args.target
    else:
        with kamailio(workers=args.workers, maxbuffer=args.maxbuffer) as k:
            print(f"kamailio pid {k.pid} on {k.target}, {k.workers} worker(s)")
            yield k.target


def cmd_validate(args: argparse.Namespace) -> int:
    ok = True
    with tempfile.TemporaryDirectory(prefix="sipp-validate-") as tmp, _target(args) as target:
        wd = Path(tmp)
        n = args.users
        csvf = write_users_csv(wd / "users.csv", users(n))
        r = run_sipp([*register_args(target, csvf, args.domain), "-r", "200", "-m", str(n)], 30)
        _print_result(f"register {n} users", r)
        ok &= r.successful == n and r.failed == 0
        uas_port = free_udp_port()
        r = register_callee(target, wd, "bob", args.domain, uas_port)
        _print_result(f"register bob at 127.0.0.1:{uas_port}", r)
        ok &= r.successful == 1
        with uas(wd, uas_port, max_s=60) as (proc, stf, err):
            r = run_sipp(
                [*uac_args(target, csvf, args.domain, "bob"), "-r", str(args.cps),
                 "-m", str(args.calls)],
                timeout=args.calls / args.cps + 20,
            )  # fmt: skip
            _print_result(f"uac {args.calls} calls at {args.cps} cps", r)
            ok &= r.successful == args.calls and r.failed == 0
        u = finish_sipp(proc, stf, err, 5)
        _print_result("uas", u)
        ok &= u.successful == args.calls and u.failed == 0
        r = run_sipp(
            [*register_args(target, csvf, args.domain, scenario="unregister.xml"),
             "-r", "200", "-m", str(n)],
            30,
        )  # fmt: skip
        _print_result(f"unregister {n} users", r)
        ok &= r.successful == n
    print("VALIDATION", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


def _parse_rates(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def cmd_bench(args: argparse.Namespace) -> int:
    out: dict[str, Any] = {
        "target": args.target or "kamailio (bench/sip/kamailio.cfg)",
        "workers": None if args.target else args.workers,
        "kamailio_maxbuffer": None if args.target else args.maxbuffer,
        "sipp_buff_size": SIPP_BUFFER,
        "cpus": os.cpu_count(),
        "duration_per_step_s": args.duration,
        "limit_fraction": args.limit,
    }
    with tempfile.TemporaryDirectory(prefix="sipp-bench-") as tmp, _target(args) as target:
        wd = Path(tmp)
        csvf = write_users_csv(wd / "users.csv", users(args.users))
        t0 = time.monotonic()
        if "register" in args.what:
            print(f"REGISTER/s against {target} ({args.users} users, {args.duration}s steps)")
            reg = step_rate(
                lambda rate: register_args(target, csvf, args.domain),
                _parse_rates(args.register_rates),
                args.duration,
                args.limit,
                workdir=args.keep,
            )
            print(f"  highest passing REGISTER rate: {reg.best_rate}/s")
            out["register"] = {"best_rate": reg.best_rate, "steps": reg.rows()}
        if "call" in args.what:
            uas_port = free_udp_port()
            r = register_callee(target, wd, "bob", args.domain, uas_port)
            if r.successful != 1:
                _print_result("register bob", r)
                return 1
            print(f"call setups/s against {target} (uac -> proxy -> uas, {args.duration}s)")
            with StepUas(wd, uas_port, 3 * args.duration + 20, args.limit) as step_uas:
                calls = step_rate(
                    lambda rate: uac_args(target, csvf, args.domain, "bob"),
                    _parse_rates(args.call_rates),
                    args.duration,
                    args.limit,
                    settle_s=0.5,
                    before_step=step_uas.start,
                    after_step=step_uas.finish,
                    workdir=args.keep,
                )
            print(f"  highest passing call rate: {calls.best_rate}/s")
            out["call"] = {"best_rate": calls.best_rate, "steps": calls.rows()}
        out["wall_s"] = round(time.monotonic() - t0, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sip.sipp_runner", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--target", help="host:port of a running registrar/proxy (default: "
                    "start Kamailio with bench/sip/kamailio.cfg on a free port)")  # fmt: skip
    ap.add_argument("--workers", type=int, default=1, help="Kamailio workers (default 1)")
    ap.add_argument("--maxbuffer", type=int, help="Kamailio's maxbuffer (UDP receive buffer)")
    ap.add_argument("--domain", default="example.com")
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="register users, 50 calls at 20 cps, unregister")
    v.add_argument("--users", type=int, default=100)
    v.add_argument("--calls", type=int, default=50)
    v.add_argument("--cps", type=int, default=20)
    b = sub.add_parser("bench", help="step REGISTER and call rates until one fails")
    b.add_argument("--what", default="register,call")
    b.add_argument("--users", type=int, default=10000)
    b.add_argument("--duration", type=float, default=5.0, help="seconds per step (<= 10)")
    b.add_argument("--limit", type=float, default=0.005)
    b.add_argument("--register-rates", default="4000,8000,12000,16000,20000,24000,28000,"
                   "32000,36000,40000,45000,50000")  # fmt: skip
    b.add_argument("--call-rates", default="1000,2000,3000,4000,5000,6000,7000,8000,10000")
    b.add_argument("--json", help="write the figures to this JSON file")
    b.add_argument("--keep", help="keep sipp's statistics, screens and error logs here")
    args = ap.parse_args(argv)
    if args.cmd == "bench" and args.duration > 10:
        ap.error("--duration is at most 10 s per step")
    return cmd_validate(args) if args.cmd == "validate" else cmd_bench(args)


if __name__ == "__main__":
    sys.exit(main())
