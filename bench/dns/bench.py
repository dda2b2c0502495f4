"""The DNS benchmark: queries per second over UDP from one swimthor node, Knot DNS and dnslib's
own server, measured by the same dnsperf runs in one go.

    python -m bench.dns.bench                 # 10 s per measurement, about 3 minutes
    python -m bench.dns.bench --quick         # 3 s per measurement, about a minute
    python -m bench.dns.bench --no-knot --no-dnslib --rates 20000,40000

What it measures (the DNS front-end issue):

1. **swimthor**: a three-node loopback cluster (`swimthor join --role sip --sip ... --dns ...`,
   zone example.com, insecure gossip, `--profile local`); dnsperf queries ONE node (n1's DNS
   port) for `_sip._udp.example.com SRV` (three SRV records, their three A records in the
   additional section) and for `n1.node.example.com A`.
2. **Knot DNS** (Debian `knot`, run as `knotd -c` with bench/dns/knot.conf: two UDP workers,
   one TCP and one background worker; its service is never enabled or started) serving a
   static zone built from swimthor's own answers (SOA, NS, NAPTR, apex A, both SRV sets, the
   node A records), so the answers carry the same records and are the same size.
3. **dnslib**: `dnslib.server.DNSServer` (threaded UDP) in a child Python process answering
   the same records (bench/dns/dnslib_server.py): the pure-Python peer.

Each target is first checked: its SRV answer must hold the three SRV records with the three A
records in the additional section (NOERROR, AA), and its A answer n1's address. Then, per query
type, dnsperf runs unthrottled (`-q` queries outstanding, `-c` client sockets) for the highest
rate, then at each fixed `--rates` step (`-Q`) for loss and latency at that rate. Each run
records dnsperf's queries per second, lost queries, average latency, the response size, the
server's CPU (from /proc, all its threads) and the kernel's receive-buffer drops on the
server's sockets (/proc/net/udp). dnsperf and the server share the machine's cores.

Figures go to stdout, bench/results/dns.json (everything, with versions) and
bench/results/DNS.md. The issue's targets: swimthor >= 20,000 SRV queries/s over UDP on one
node process, and at least a quarter of Knot's rate in the same run.

dnsperf (Debian `dnsperf`) and Knot are installed with apt-get when missing and we are root;
without dnsperf nothing is measured, without Knot its part is skipped. Every process started
here is stopped by its PID; the work directory (node logs included) is removed at the end,
unless something failed or --keep is given.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dnslib
from dnslib import QTYPE, DNSRecord

from bench._harness import free_port
from bench._procs import AgentProcess, ProcessExited, stop_process
from bench._procs import wait_until as _wait_until
from swimthor.control import ControlError, call
from swimthor.ports import free_ports

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RESULTS = REPO / "bench" / "results"
KNOT_CONF = HERE / "knot.conf"
ZONE = "example.com"
HOST = "127.0.0.1"
NODES = 3
# What is measured: key -> (name, type).
QUERIES: dict[str, tuple[str, str]] = {
    "SRV": (f"_sip._udp.{ZONE}", "SRV"),
    "A": (f"n1.node.{ZONE}", "A"),
}


# ---------------------------------------------------------------- Debian tools


def ensure_deb(command: str, package: str) -> bool:
    """`command` is there, or install `package` (apt-get, as root) and never enable or start
    its service. True if the command is there now."""
    if _which(command):
        return True
    if os.geteuid() != 0:
        print(f"{command} is missing and we are not root: apt-get install {package} first")
        return False
    print(f"installing {package} (apt-get) for {command}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        print(f"apt-get install {package} failed: {e}")
        return False
    if done.returncode != 0:
        print(f"apt-get install {package} failed:\n{done.stderr[-1000:]}")
    # The package may have enabled its unit: this benchmark runs the daemon itself.
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["systemctl", "disable", "--now", package], capture_output=True, timeout=30)
    return _which(command) is not None


def _which(command: str) -> str | None:
    found = shutil.which(command)
    if found:
        return found
    for d in ("/usr/sbin", "/usr/bin"):
        if Path(d, command).exists():
            return str(Path(d, command))
    return None


def _version(argv: Sequence[str], pattern: str) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(pattern, out.stdout + out.stderr)
    return m.group(1) if m else None


# ---------------------------------------------------------------- DNS over UDP


def ask(port: int, name: str, qtype: str, timeout: float = 1.0, tries: int = 3) -> DNSRecord:
    return DNSRecord.parse(ask_raw(port, name, qtype, timeout, tries))


def ask_raw(port: int, name: str, qtype: str, timeout: float = 1.0, tries: int = 3) -> bytes:
    """One query over UDP (no EDNS, as dnsperf sends them), retried; the answer as received.
    Raises TimeoutError."""
    query = DNSRecord.question(name, qtype)
    query.header.rd = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        for _ in range(tries):
            s.sendto(query.pack(), (HOST, port))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    data = s.recv(65_535)
                except TimeoutError:
                    break
                if data[:2] == query.pack()[:2]:
                    return data
    raise TimeoutError(f"no answer to {name} {qtype} from {HOST}:{port}")


def _rdatas(rrs: Sequence[Any], rtype: int) -> list[str]:
    return sorted(f"{rr.rname} {rr.rdata}".lower() for rr in rrs if rr.rtype == rtype)


def check(port: int, expected: dict[str, DNSRecord] | None = None) -> dict[str, Any]:
    """The SRV answer has NODES SRV records and their A records as additional data, the A
    answer one address; with `expected` (swimthor's answers), the same records."""
    out: dict[str, Any] = {"ok": True, "problems": []}
    for key, (name, qtype) in QUERIES.items():
        wire = ask_raw(port, name, qtype)
        reply = DNSRecord.parse(wire)
        srv = _rdatas(reply.rr, QTYPE.SRV)
        a = _rdatas(reply.rr, QTYPE.A)
        extra = _rdatas(reply.ar, QTYPE.A)
        entry = {
            "rcode": dnslib.RCODE.get(reply.header.rcode),
            "aa": bool(reply.header.aa),
            "answer": len(reply.rr),
            "additional": len(reply.ar),
            "size": len(wire),
        }
        out[key] = entry
        problems = []
        if reply.header.rcode != 0 or not reply.header.aa:
            problems.append(f"{key}: rcode {entry['rcode']}, aa {entry['aa']}")
        if key == "SRV" and (len(srv) != NODES or len(extra) != NODES):
            problems.append(f"SRV: {len(srv)} SRV records and {len(extra)} additional A")
        if key == "A" and len(a) != 1:
            problems.append(f"A: {len(a)} A records")
        if expected is not None and (ref := expected.get(f"{name} {qtype}")) is not None:
            pairs = (("answer", reply.rr, ref.rr), ("additional", reply.ar, ref.ar))
            for section, mine, theirs in pairs:
                for rtype in (QTYPE.SRV, QTYPE.A):
                    if _rdatas(mine, rtype) != _rdatas(theirs, rtype):
                        what = f"{section} {QTYPE.get(rtype)}"
                        problems.append(f"{key}: {what} differs from swimthor's")
        out["problems"] += problems
    out["ok"] = not out["problems"]
    return out


# ---------------------------------------------------------------- processes


@dataclass
class Server:
    """One DNS server under test: its process (stopped by PID), port and log."""

    label: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float | None:
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def udp_drops(self) -> int | None:
        return udp_drops(self.port)


def spawn(argv: Sequence[str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=cwd
        )


def stop(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM to the PID, SIGKILL after `grace` seconds; reaped either way."""
    stop_process(proc, signal.SIGTERM, grace)


def udp_drops(port: int) -> int | None:
    """The kernel's receive drops summed over the UDP sockets bound to HOST:port."""
    local = f"{socket.htonl(0x7F000001):08X}:{port:04X}"  # /proc/net/udp: 0100007F:1F73
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return None
    total, seen = 0, False
    for line in lines:
        cols = line.split()
        if len(cols) >= 13 and cols[1].upper() == local:
            total += int(cols[12])
            seen = True
    return total if seen else None


def wait_until(
    cond: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[Any] | None = None
) -> None:
    """bench/_procs.py's wait, every 0.2 s; a query not answered (or not parsed) yet is not
    an error; ProcessExited at once if `proc` ends."""

    def check() -> bool:
        if proc is not None and proc.poll() is not None:
            raise ProcessExited(f"{what}: the process exited with {proc.returncode}")
        return cond()

    _wait_until(check, timeout, what, interval=0.2, transient=(OSError, dnslib.DNSError))


# ---------------------------------------------------------------- the three servers


@contextlib.contextmanager
def swimthor_cluster(wd: Path) -> Iterator[tuple[Server, list[subprocess.Popen[bytes]]]]:
    """NODES `swimthor join` agents with SIP and DNS on loopback; yields n1 as the server under
    test (and every agent's process); every agent is stopped by PID on exit."""
    agents: list[AgentProcess] = []
    procs: list[subprocess.Popen[bytes]] = []
    ports = free_ports(3 * NODES)
    gossip, sip, dns = ports[:NODES], ports[NODES : 2 * NODES], ports[2 * NODES :]
    try:
        for i in range(NODES):
            name = f"n{i + 1}"
            argv = [
                sys.executable, "-m", "swimthor", "join",
                "--name", name,
                "--bind", f"{HOST}:{gossip[i]}",
                "--insecure", "--profile", "local",
                "--role", "sip", "--sip", f"{HOST}:{sip[i]}", "--domain", ZONE,
                "--sip-auth", "off",
                "--dns", f"{HOST}:{dns[i]}",
                "--control", str(wd / f"{name}.sock"),
                "--data-dir", str(wd / name),
                "--log-format", "json", "--log-level", "warning",
            ]  # fmt: skip
            if i:
                argv.append(f"{HOST}:{gossip[0]}")
            agents.append(AgentProcess(argv, wd / f"{name}.log", str(wd / f"{name}.sock")))
            agents[-1].spawn()
            assert agents[-1].proc is not None
            procs.append(agents[-1].proc)
            if i == 0:
                wait_until(lambda: ask(dns[0], ZONE, "SOA", 0.3, 1) is not None, 20,
                           "n1's DNS front-end", procs[0])  # fmt: skip
        n1 = Server("swimthor", dns[0], procs[0], wd / "n1.log")
        n1.extra = {"nodes": NODES, "control": str(wd / "n1.sock"), "sip_ports": sip}
        wait_until(
            lambda: len(ask(dns[0], *QUERIES["SRV"], 0.3, 1).rr) == NODES, 30,
            f"n1 to list {NODES} SRV targets", procs[0],
        )  # fmt: skip
        yield n1, procs
    finally:
        for agent in agents:
            agent.stop()


@contextlib.contextmanager
def knot(wd: Path, zonefile: Path) -> Iterator[Server]:
    """knotd in the foreground with bench/dns/knot.conf on a free port; stopped by PID."""
    port = free_port()
    rundir, storage = wd / "knot-run", wd / "knot-storage"
    rundir.mkdir()
    storage.mkdir()
    conf = wd / "knot.conf"
    conf.write_text(
        string.Template(KNOT_CONF.read_text()).substitute(
            rundir=rundir, storage=storage, address=HOST, port=port, zone=ZONE, zonefile=zonefile
        )
    )
    knotc = _which("knotc")
    if knotc:
        checked = subprocess.run(
            [knotc, "-c", str(conf), "conf-check"], capture_output=True, text=True, timeout=20
        )
        if checked.returncode != 0:
            raise RuntimeError(f"knot.conf: {(checked.stdout + checked.stderr)[-1000:]}")
    knotd = _which("knotd") or "/usr/sbin/knotd"
    proc = spawn([knotd, "-c", str(conf)], wd / "knot.log", cwd=rundir)
    try:
        wait_until(lambda: ask(port, ZONE, "SOA", 0.3, 1).header.rcode == 0, 20, "knotd", proc)
        yield Server("Knot", port, proc, wd / "knot.log", {"config": str(conf)})
    finally:
        stop(proc)


@contextlib.contextmanager
def dnslib_server(wd: Path, answers: Path) -> Iterator[Server]:
    port = free_port()
    argv = [sys.executable, "-m", "bench.dns.dnslib_server", "--port", str(port),
            "--answers", str(answers), "--zone", ZONE]  # fmt: skip
    proc = spawn(argv, wd / "dnslib.log", cwd=REPO)
    try:
        wait_until(lambda: ask(port, ZONE, "SOA", 0.3, 1).header.rcode == 0, 20, "dnslib", proc)
        yield Server("dnslib", port, proc, wd / "dnslib.log")
    finally:
        stop(proc)


# ---------------------------------------------------------------- the static zone


def capture(port: int) -> dict[str, bytes]:
    """swimthor's answers (as received) to every name of the zone that the static copies
    serve."""
    names = [(ZONE, t) for t in ("SOA", "NS", "NAPTR", "A")]
    names += [(f"_sip._udp.{ZONE}", "SRV"), (f"_sip._tcp.{ZONE}", "SRV")]
    out = {f"{n} {t}": ask_raw(port, n, t) for n, t in names}
    for rr in DNSRecord.parse(out[f"_sip._udp.{ZONE} SRV"]).rr:
        target = str(rr.rdata.target).rstrip(".")
        out[f"{target} A"] = ask_raw(port, target, "A")
    return out


def zone_file(captured: dict[str, DNSRecord]) -> str:
    """Every record of the answer sections, once each (an RRset holds no duplicates: RFC 2181
    §5), in master-file form; the SOA first."""
    seen: set[str] = set()
    lines = [f"$ORIGIN {ZONE}.", ""]
    records = sorted(
        (rr for record in captured.values() for rr in record.rr),
        key=lambda rr: (rr.rtype != QTYPE.SOA, str(rr.rname)),
    )
    for rr in records:
        text = rr.toZone()
        if text not in seen:
            seen.add(text)
            lines.append(text)
    return "\n".join(lines) + "\n"


def duplicates(captured: dict[str, DNSRecord]) -> list[str]:
    """Answers that repeat a record (same owner, type and data) within one RRset."""
    out = []
    for key, record in captured.items():
        texts = [rr.toZone() for rr in record.rr]
        if len(texts) != len(set(texts)):
            out.append(f"{key}: {len(texts)} records, {len(set(texts))} distinct")
    return out


# ---------------------------------------------------------------- dnsperf


_FIELDS = {
    "sent": r"Queries sent:\s+(\d+)",
    "completed": r"Queries completed:\s+(\d+)",
    "lost": r"Queries lost:\s+(\d+)",
    "interrupted": r"Queries interrupted:\s+(\d+)",
    "run_time_s": r"Run time \(s\):\s+([\d.]+)",
    "qps": r"Queries per second:\s+([\d.]+)",
    "latency_avg_s": r"Average Latency \(s\):\s+([\d.]+)",
    "latency_min_s": r"Average Latency \(s\):\s+[\d.]+\s+\(min\s+([\d.]+)",
    "latency_max_s": r"Average Latency \(s\):.*max\s+([\d.]+)\)",
    "latency_stddev_s": r"Latency StdDev \(s\):\s+([\d.]+)",
    "request_bytes": r"Average packet size:\s+request\s+(\d+)",
    "response_bytes": r"Average packet size:.*response\s+(\d+)",
}


def parse_dnsperf(text: str) -> dict[str, Any]:
    """dnsperf's final statistics as numbers (a field it did not print is left out)."""
    out: dict[str, Any] = {}
    for key, pattern in _FIELDS.items():
        m = re.search(pattern, text)
        if m:
            value = float(m.group(1))
            out[key] = int(value) if value.is_integer() and "." not in m.group(1) else value
    m = re.search(r"Response codes:\s+(.+)", text)
    if m:
        out["rcodes"] = {
            code: int(n) for code, n in re.findall(r"([A-Z]+)\s+(\d+)\s+\([\d.]+%\)", m.group(1))
        }
    if out.get("sent"):
        out["lost_fraction"] = out.get("lost", 0) / out["sent"]
    return out


@dataclass
class Perf:
    binary: str
    duration: float
    clients: int
    outstanding: int
    timeout: float
    workdir: Path
    runs: int = 0

    def run(self, server: Server, key: str, rate: int | None) -> dict[str, Any]:
        """One dnsperf run of query `key` against `server` (unthrottled when rate is None),
        with the server's CPU and socket drops over the run."""
        name, qtype = QUERIES[key]
        qfile = self.workdir / f"query-{key}.txt"
        qfile.write_text(f"{name} {qtype}\n")
        self.runs += 1
        argv = [
            self.binary, "-s", HOST, "-p", str(server.port), "-d", str(qfile),
            "-l", f"{self.duration:g}", "-c", str(self.clients), "-q", str(self.outstanding),
            "-t", f"{self.timeout:g}", "-O", "suppress=timeouts,unexpected,congestion",
        ]  # fmt: skip
        if rate is not None:
            argv += ["-Q", str(rate)]
        cpu0, drops0, t0 = server.cpu_seconds(), server.udp_drops(), time.monotonic()
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=self.duration + self.timeout + 30
            )
            text, rc = done.stdout + done.stderr, done.returncode
        except subprocess.TimeoutExpired as e:  # subprocess.run kills it
            text, rc = str(e.stdout or "") + "\n(timed out)", None
        wall = time.monotonic() - t0
        cpu1, drops1 = server.cpu_seconds(), server.udp_drops()
        stats = parse_dnsperf(text)
        entry: dict[str, Any] = {
            "target": server.label,
            "query": key,
            "qname": f"{name} {qtype}",
            "mode": "max" if rate is None else f"Q{rate}",
            "max_qps": rate,
            "command": " ".join(argv),
            "returncode": rc,
            "wall_s": round(wall, 2),
            **stats,
            "server_cpu_percent": (
                round((cpu1 - cpu0) / wall * 100, 1)
                if cpu0 is not None and cpu1 is not None
                else None
            ),
            "server_socket_drops": (
                drops1 - drops0 if drops0 is not None and drops1 is not None else None
            ),
            "server_alive": server.alive(),
        }
        if "qps" not in stats:
            entry["output_tail"] = text[-1500:]
        (self.workdir / f"dnsperf-{self.runs:02d}-{server.label}-{key}.txt").write_text(text)
        return entry


def _row(e: dict[str, Any]) -> str:
    qps = f"{e['qps']:,.0f}" if "qps" in e else "-"
    lost = f"{100 * e['lost_fraction']:.2f}" if "lost_fraction" in e else "-"
    lat = f"{1000 * e['latency_avg_s']:.2f}" if "latency_avg_s" in e else "-"
    cpu = f"{e['server_cpu_percent']:.0f}" if e.get("server_cpu_percent") is not None else "-"
    drops = str(e["server_socket_drops"]) if e.get("server_socket_drops") is not None else "-"
    size = str(e.get("response_bytes", "-"))
    mode = "unthrottled" if e["max_qps"] is None else f"-Q {e['max_qps']:,}"
    return f"| {e['target']} | {e['query']} | {mode} | {qps} | {lost} | {lat} | {cpu} | {drops} | {size} |"  # noqa: E501


TABLE_HEAD = (
    "| target | query | dnsperf | queries/s | lost % | avg latency ms | server CPU % "
    "| socket drops | response bytes |\n"
    "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
)


# ---------------------------------------------------------------- node logs


def log_findings(paths: Sequence[Path], limit: int = 10) -> dict[str, Any]:
    """Warnings and errors in the agents' JSON logs (and any line that is not JSON)."""
    found: list[str] = []
    count = 0
    for path in paths:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if not line.strip():
                continue
            try:
                level = str(json.loads(line).get("level", "")).lower()
            except (ValueError, AttributeError):
                level = "raw"
            if level in ("warning", "error", "critical", "exception", "raw"):
                count += 1
                if len(found) < limit:
                    found.append(f"{path.name}: {line[:300]}")
    return {"count": count, "first": found}


# ---------------------------------------------------------------- main


def measure(perf: Perf, server: Server, rates: Sequence[int], out: list[dict[str, Any]]) -> None:
    print(TABLE_HEAD)
    for key in QUERIES:
        for rate in (None, *rates):
            if not server.alive():
                print(f"  {server.label} is gone (exit {server.proc.returncode}); stopping")
                return
            e = perf.run(server, key, rate)
            out.append(e)
            print(_row(e))
            time.sleep(0.5)


def _checked(label: str, result: dict[str, Any]) -> dict[str, Any]:
    sizes = ", ".join(f"{k} {result[k]['size']} bytes" for k in QUERIES if k in result)
    verdict = "ok" if result["ok"] else "; ".join(result["problems"])
    print(f"check {label}: {verdict} ({sizes})")
    return result


def _best(runs: list[dict[str, Any]], target: str, key: str) -> float | None:
    mine = [r for r in runs if r["target"] == target and r["query"] == key]
    qps = [float(r["qps"]) for r in mine if r.get("qps") is not None]
    return max(qps) if qps else None


def main(argv: Sequence[str] | None = None) -> int:
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # progress as it happens, also into a file
    ap = argparse.ArgumentParser(prog="python -m bench.dns.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="3 s per measurement")
    ap.add_argument("--duration", type=float, help="seconds per dnsperf run (default 10, quick 3)")
    ap.add_argument("--rates", default="20000",
                    help="fixed rates (-Q) after the unthrottled run; '' for none")  # fmt: skip
    ap.add_argument("--clients", type=int, default=4, help="dnsperf -c: client sockets")
    ap.add_argument("--outstanding", type=int, default=200, help="dnsperf -q")
    ap.add_argument("--timeout", type=float, default=2.0, help="dnsperf -t: seconds per query")
    ap.add_argument("--no-knot", action="store_true", help="skip Knot DNS")
    ap.add_argument("--no-dnslib", action="store_true", help="skip dnslib's DNSServer")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--json", default=str(RESULTS / "dns.json"))
    ap.add_argument("--md", default=str(RESULTS / "DNS.md"))
    args = ap.parse_args(argv)
    duration = args.duration or (3.0 if args.quick else 10.0)
    rates = [int(x) for x in args.rates.split(",") if x.strip()]
    t0 = time.monotonic()
    out: dict[str, Any] = {
        "zone": ZONE,
        "quick": args.quick,
        "duration_per_run_s": duration,
        "dnsperf_clients": args.clients,
        "dnsperf_outstanding": args.outstanding,
        "dnsperf_timeout_s": args.timeout,
        "rates": rates,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "dnslib": getattr(dnslib, "version", None),
        "skipped": {},
        "checks": {},
        "runs": [],
    }
    if not ensure_deb("dnsperf", "dnsperf"):
        print("dnsperf is not available: nothing can be measured")
        out["skipped"]["all"] = "dnsperf missing"
        _write(args, out, [])
        return 1
    dnsperf = _which("dnsperf") or "dnsperf"
    out["dnsperf_version"] = _version([dnsperf, "-h"], r"Version\s+(\S+)")
    use_knot = not args.no_knot and ensure_deb("knotd", "knot")
    if args.no_knot:
        out["skipped"]["knot"] = "--no-knot"
    elif not use_knot:
        print("Knot DNS is not available: its part is skipped")
        out["skipped"]["knot"] = "knot could not be installed"
    if use_knot:
        out["knot_version"] = _version([_which("knotd") or "knotd", "-V"], r"version\s+(\S+)")
    if args.no_dnslib:
        out["skipped"]["dnslib"] = "--no-dnslib"

    wd = Path(tempfile.mkdtemp(prefix="swimthor-dns-bench-"))
    print(f"work directory (node logs, dnsperf output): {wd}")
    perf = Perf(dnsperf, duration, args.clients, args.outstanding, args.timeout, wd)
    runs: list[dict[str, Any]] = out["runs"]
    failed = False
    try:
        with swimthor_cluster(wd) as (n1, procs):
            wire = capture(n1.port)
            captured = {k: DNSRecord.parse(v) for k, v in wire.items()}
            (wd / "example.com.zone").write_text(zone_file(captured))
            answers = {k: v.hex() for k, v in wire.items()}
            (wd / "answers.json").write_text(json.dumps(answers, indent=1))
            out["swimthor_answers"] = {k: str(r) for k, r in captured.items()}
            out["swimthor_duplicate_records"] = duplicates(captured)
            for dup in out["swimthor_duplicate_records"]:
                print(f"note: swimthor repeats a record in an RRset: {dup}")
            out["checks"]["swimthor"] = _checked("swimthor", check(n1.port))
            measure(perf, n1, rates, runs)
            try:
                status = call(str(wd / "n1.sock"), "status", timeout=3.0)
                out["swimthor_dns_status"] = dns = status.get("dns") or {}
                print(f"n1's DNS counters: {json.dumps(dns.get('transport'))}")
            except ControlError as e:
                print(f"n1's status could not be read: {e}")
            alive = [p.poll() is None for p in procs]
            out["swimthor_agents_alive_after"] = alive
            if not all(alive):
                print(f"an agent exited during the runs: alive {alive}")
                failed = True
        findings = log_findings([wd / f"n{i + 1}.log" for i in range(NODES)])
        out["swimthor_log_findings"] = findings
        print(f"agent log lines at warning or above: {findings['count']}")
        for line in findings["first"]:
            print(f"  {line}")
        if use_knot:
            try:
                with knot(wd, wd / "example.com.zone") as k:
                    out["checks"]["Knot"] = _checked("Knot", check(k.port, captured))
                    measure(perf, k, rates, runs)
            except Exception as e:  # reported, and the other targets still run
                print(f"Knot DNS could not be measured: {e}")
                out["skipped"]["knot"] = str(e)
                failed = True
        if not args.no_dnslib:
            try:
                with dnslib_server(wd, wd / "answers.json") as d:
                    out["checks"]["dnslib"] = _checked("dnslib", check(d.port, captured))
                    measure(perf, d, rates, runs)
            except Exception as e:  # reported, and the other targets still run
                print(f"dnslib's server could not be measured: {e}")
                out["skipped"]["dnslib"] = str(e)
                failed = True
    except Exception as e:
        failed = True
        print(f"FAILED: {type(e).__name__}: {e}")
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        failed |= not all(c.get("ok") for c in out["checks"].values())
        if args.keep or failed:
            print(f"kept {wd} (node logs, zone, dnsperf output)")
            out["workdir"] = str(wd)
        else:
            shutil.rmtree(wd, ignore_errors=True)
    out["wall_s"] = round(time.monotonic() - t0, 1)
    _write(args, out, runs)
    return 1 if failed else 0


def _write(args: argparse.Namespace, out: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    srv, knot_srv = _best(runs, "swimthor", "SRV"), _best(runs, "Knot", "SRV")
    at = [r for r in runs if r["target"] == "swimthor" and r["query"] == "SRV" and r["max_qps"]]
    summary: dict[str, Any] = {
        "swimthor_srv_qps": srv,
        "knot_srv_qps": knot_srv,
        "dnslib_srv_qps": _best(runs, "dnslib", "SRV"),
        "swimthor_a_qps": _best(runs, "swimthor", "A"),
        "knot_a_qps": _best(runs, "Knot", "A"),
        "swimthor_over_knot_srv": round(srv / knot_srv, 3) if srv and knot_srv else None,
        "swimthor_srv_at_rates_lost_percent": {
            r["max_qps"]: round(100 * r.get("lost_fraction", 1.0), 3) for r in at
        },
        "target_20000_srv_qps": None if srv is None else srv >= 20_000,
        "target_quarter_of_knot": None if not (srv and knot_srv) else srv >= knot_srv / 4,
        "checks_ok": {k: v.get("ok") for k, v in out["checks"].items()},
    }
    out["summary"] = summary

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else "met" if ok else "NOT met"

    def rate(qps: float | None) -> str:
        return "not measured" if qps is None else f"{qps:,.0f} q/s"

    line = (
        f"swimthor SRV {rate(srv)} vs Knot SRV {rate(knot_srv)}: ratio "
        f"{summary['swimthor_over_knot_srv']} (targets: >= 20,000 q/s "
        f"{verdict(summary['target_20000_srv_qps'])}, >= 1/4 of Knot "
        f"{verdict(summary['target_quarter_of_knot'])})"
    )
    if runs:
        print("\n".join(["", TABLE_HEAD, *(_row(r) for r in runs), ""]))
    print(line)
    print(json.dumps(summary, indent=2))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
    md = [
        "# DNS: queries per second over UDP (dnsperf)",
        "",
        f"`python -m bench.dns.bench{' --quick' if out['quick'] else ''}`:"
        f" {out['duration_per_run_s']:g} s per run, dnsperf {out.get('dnsperf_version')}"
        f" (`-c {out['dnsperf_clients']} -q {out['dnsperf_outstanding']}`),"
        f" Knot {out.get('knot_version', '-')} (2 UDP workers), dnslib {out.get('dnslib')},"
        f" {out['cpus']} CPUs shared by dnsperf and the server.",
        "swimthor: one node (n1) of a three-node loopback cluster. SRV: `_sip._udp.example.com SRV`"
        " (3 SRV + 3 additional A); A: `n1.node.example.com A`.",
        "",
        TABLE_HEAD,
        *(_row(r) for r in runs),
        "",
        line,
        "",
    ]  # fmt: skip
    if out["skipped"]:
        md += [f"Skipped: {json.dumps(out['skipped'])}", ""]
    Path(args.md).write_text("\n".join(md))
    print(f"wrote {args.json} and {args.md}")


if __name__ == "__main__":
    sys.exit(main())
