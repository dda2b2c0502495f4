"""Operator output: aligned columns for people and JSON for scripts, serf style.

The formatters (`format_members_text`, `format_status_text`, ...) are pure functions of the
JSON the agent returns, so they are tested without an agent.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

STATES = ("alive", "suspect", "dead", "left")


def _age(seconds: float) -> str:
    """A short age: 42s, 3m07s, 2h05m, 3d04h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _columns(rows: Sequence[Sequence[str]]) -> str:
    """Rows as left-aligned columns two spaces apart; the last column is not padded."""
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _member_sort_key(m: Mapping[str, Any]) -> tuple[str, str]:
    return (str(m.get("name", "")), str(m.get("addr", "")))


def filter_members(
    members: Sequence[Mapping[str, Any]],
    *,
    status: str | None = None,
    dc: str | None = None,
    role: str | None = None,
) -> list[Mapping[str, Any]]:
    """Members matching every filter given (state, datacenter, role)."""
    return [
        m
        for m in members
        if (status is None or m.get("state") == status)
        and (dc is None or m.get("dc") == dc)
        and (role is None or role in (m.get("roles") or ()))
    ]


def format_members_text(members: Sequence[Mapping[str, Any]], now: float) -> str:
    """serf-style columns: NAME ADDR DC ROLES STATE INC SINCE TAGS (SINCE is an age)."""
    rows = [["NAME", "ADDR", "DC", "ROLES", "STATE", "INC", "SINCE", "TAGS"]]
    for m in sorted(members, key=_member_sort_key):
        since = m.get("since")
        tags = m.get("tags") or {}
        rows.append(
            [
                _text(m.get("name")),
                _text(m.get("addr")),
                _text(m.get("dc")),
                ",".join(str(r) for r in m.get("roles") or ()) or "-",
                _text(m.get("state")) + (f" (held: {m['held']})" if m.get("held") else ""),
                _text(m.get("incarnation")),
                _age(now - since) if isinstance(since, int | float) else "-",
                ",".join(f"{k}={v}" for k, v in sorted(tags.items())) or "-",
            ]
        )
    return _columns(rows)


def format_members_json(members: Sequence[Mapping[str, Any]]) -> str:
    """The members as a JSON array, sorted by name, one trailing newline."""
    return json.dumps(sorted(members, key=_member_sort_key), indent=2) + "\n"


def _state_counts(counts: Mapping[str, Any]) -> str:
    """'3 alive, 1 dead': known states in protocol order first, zeros left out."""
    order = [s for s in STATES if s in counts] + sorted(k for k in counts if k not in STATES)
    parts = [f"{counts[s]} {s}" for s in order if counts[s]]
    return ", ".join(parts) or "none"


def _names(value: Any) -> str:
    if isinstance(value, list | tuple) and value:
        return ", ".join(str(v) for v in value)
    return ""


def format_convergence(converged: Mapping[str, Any] | None) -> str:
    """'converged: 5/5 members report the same view', or who does not and why."""
    if not isinstance(converged, Mapping):
        return "converged: unknown"
    agree = int(converged.get("agree", 0))
    disagree = int(converged.get("disagree", 0))
    unknown = int(converged.get("unknown", 0))
    total = agree + disagree + unknown
    if disagree == 0 and unknown == 0:
        return f"converged: {agree}/{total} members report the same view"
    text = f"not converged: {agree}/{total} members report the same view"
    if disagree:
        names = _names(converged.get("members_disagreeing"))
        text += f"; {disagree} disagree" + (f" ({names})" if names else "")
    if unknown:
        names = _names(converged.get("members_unknown"))
        text += f"; {unknown} not heard from yet" + (f" ({names})" if names else "")
    return text


def _health(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"health {value}" + (" (healthy)" if value == 0 else " (degraded, 0 is healthy)")
    if isinstance(value, Mapping):
        return "health " + " ".join(f"{k}={v}" for k, v in value.items())
    return f"health {_text(value)}"


def format_status_text(status: Mapping[str, Any]) -> str:
    """This node, its incarnation and health; counts by state and datacenter; convergence;
    the protocol counters."""
    node = [_text(status.get("name"))]
    for key in ("addr", "dc"):
        if status.get(key):
            node.append(str(status[key]))
    lines = [
        f"node:       {'  '.join(node)}",
        f"            incarnation {_text(status.get('incarnation'))}, "
        f"{_health(status.get('health'))}",
    ]
    counts = status.get("counts")
    if isinstance(counts, Mapping):
        lines.append(f"members:    {_state_counts(counts)}")
    by_dc = status.get("by_dc")
    if isinstance(by_dc, Mapping) and by_dc:
        width = max(9, *(len(str(dc)) + 1 for dc in by_dc))
        for dc in sorted(by_dc):
            per = by_dc[dc]
            text = _state_counts(per) if isinstance(per, Mapping) else _text(per)
            lines.append(f"  {str(dc) + ':':<{width}} {text}")
    cluster = status.get("cluster")
    if isinstance(cluster, list) and cluster:
        lines.extend(format_cluster_table(cluster))
    digest = status.get("view_digest")
    if digest:
        lines.append(f"view:       digest {str(digest)[:16]}")
    lines.append(format_convergence(status.get("converged")))
    routing = status.get("routing")
    if isinstance(routing, Mapping):
        lines.append(f"routing:    epoch {_text(routing.get('epoch'))}")
        shares = routing.get("shares")
        if isinstance(shares, Mapping):
            for role in sorted(shares):
                per = shares[role]
                if isinstance(per, Mapping) and per:
                    text = "  ".join(f"{n} {float(v):.1%}" for n, v in sorted(per.items()))
                    lines.append(f"  key space ({role}): {text}")
    sip = status.get("sip")
    if isinstance(sip, Mapping):
        domains = sip.get("domains")
        domain_text = ", ".join(str(d) for d in domains) if isinstance(domains, list) else "?"
        lines.append(
            f"sip:        {_text(sip.get('address'))}  domains {domain_text}  "
            f"R={_text(sip.get('replicas'))}"
        )
        held = (
            f"            {_text(sip.get('bindings'))} bindings of "
            f"{_text(sip.get('aors'))} addresses-of-record"
        )
        if sip.get("subscribers") is not None:
            held += f", {_text(sip.get('subscribers'))} subscribers"
        held += " held here"
        if sip.get("sync") is not None:
            held += f" ({_text(sip.get('sync'))})"
        lines.append(held)
        flows = sip.get("flows")
        if isinstance(flows, Mapping):
            lines.append(
                "            flows: "
                + "  ".join(
                    f"{t} {_text(flows.get(t))}" for t in ("udp", "tcp", "tls", "ws", "wss")
                )
            )
        kept = sip.get("keepalive")
        if isinstance(kept, Mapping):
            lines.append(
                f"            keepalives: udp pings {_text(kept.get('udp_pings'))} answered "
                f"{_text(kept.get('udp_answers'))} lost {_text(kept.get('udp_lost'))}, stun "
                f"{_text(kept.get('udp_stun'))}; pongs "
                + "  ".join(
                    f"{t} {_text(kept.get(f'{t}_pongs'))}" for t in ("tcp", "tls", "ws", "wss")
                )
            )
    dns = status.get("dns")
    if isinstance(dns, Mapping):
        servers = dns.get("servers")
        targets = dns.get("sip_targets")
        lines.append(
            f"dns:        {_text(dns.get('address'))}  zone {_text(dns.get('zone'))}  "
            f"ttl {_text(dns.get('ttl'))}s"
        )
        lines.append(
            f"            name servers: {', '.join(map(str, servers)) if servers else 'none'}; "
            f"SRV targets: {', '.join(map(str, targets)) if targets else 'none'}"
        )
    for section in ("stats", "runtime"):
        counters = status.get(section)
        if isinstance(counters, Mapping) and counters:
            lines.append(f"{section}:")
            lines.extend(_wrapped_counters(counters))
    if isinstance(sip, Mapping):
        for section in ("proxy", "transport", "replication"):
            counters = sip.get(section)
            if isinstance(counters, Mapping) and counters:
                lines.append(f"sip {section}:")
                lines.extend(_wrapped_counters(counters))
    if isinstance(dns, Mapping):
        for section in ("answers", "transport"):
            counters = dns.get(section)
            if isinstance(counters, Mapping) and counters:
                lines.append(f"dns {section}:")
                lines.extend(_wrapped_counters(counters))
    return "\n".join(lines) + "\n"


def _wrapped_counters(counters: Mapping[str, Any]) -> list[str]:
    items = "  ".join(f"{k}={v}" for k, v in sorted(counters.items()))
    wrapped = textwrap.wrap(items, width=96, break_on_hyphens=False, break_long_words=False)
    return [f"  {line}" for line in wrapped]


def format_cluster_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every member on one line: where it is, its state, health, whether its view matches
    ours, and the load it reports (from its gossiped summary)."""
    table = [["MEMBER", "DC", "STATE", "ROLES", "HEALTH", "VIEW", "SIP REQ", "BINDINGS",
              "FLOWS", "DNS Q", "UP"]]  # fmt: skip
    for row in rows:
        load = row.get("load") if isinstance(row.get("load"), Mapping) else None
        up = load.get("uptime") if load else None

        def n(key: str, load: Mapping[str, Any] | None = load) -> str:
            return "-" if not load or load.get(key) is None else str(load[key])

        table.append(
            [
                str(row.get("name")),
                str(row.get("dc")),
                str(row.get("state")) + (f" (held: {row['held']})" if row.get("held") else ""),
                ",".join(map(str, row.get("roles") or [])) or "-",
                str(row.get("health", "?")),
                str(row.get("view", "?")),
                n("sip_requests"),
                n("bindings"),
                n("flows"),
                n("dns_queries"),
                _age(up) if isinstance(up, int) else "-",
            ]
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    out = ["cluster:"]
    out += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in table]  # fmt: skip
    return out


def format_status_json(status: Mapping[str, Any]) -> str:
    return json.dumps(status, indent=2) + "\n"


def format_location_text(reply: Mapping[str, Any]) -> str:
    """`swimthor location`: a line naming the AOR and its owners (and those that did not
    answer), then one line per binding. ON lists the owners holding its newest version, and
    marks one holding an older copy `:older`, one holding none `:missing`."""
    owners = [str(o) for o in reply.get("owners") or ()]
    head = f"{_text(reply.get('aor'))}  owners: {', '.join(owners) or 'none'}"
    unanswered = [str(o) for o in reply.get("unanswered") or ()]
    if unanswered:
        head += f"  (no answer from {', '.join(unanswered)})"
    bindings = [b for b in reply.get("bindings") or () if isinstance(b, Mapping)]
    if not bindings:
        return head + "\nno bindings\n"
    rows = [["CONTACT", "Q", "EXPIRES", "CALL-ID", "CSEQ", "INSTANCE", "REG-ID", "SOURCE",
             "EDGE", "FLOW", "ORIGIN", "ON", "USER-AGENT"]]  # fmt: skip
    for b in bindings:
        q = b.get("q")
        on = [str(n) for n in b.get("on") or ()]
        on += [f"{n}:older" for n in b.get("older") or ()]
        on += [f"{n}:missing" for n in b.get("missing") or ()]
        rows.append(
            [
                _text(b.get("contact")),
                f"{q:g}" if isinstance(q, int | float) else _text(q),
                _text(b.get("expires")),
                _text(b.get("call_id")),
                _text(b.get("cseq")),
                _text(str(b.get("instance") or "").strip('"')),
                _text(b.get("reg_id") or None),
                _text(b.get("source")),
                _text(b.get("edge") or None),
                _text(b.get("flow") or b.get("transport") or None),
                _text(b.get("origin")),
                ",".join(on) or "-",
                _text(b.get("user_agent")),
            ]
        )
    return head + "\n" + _columns(rows)


def format_keys_text(reply: Mapping[str, Any]) -> str:
    """One key id a line, the primary first and marked."""
    primary = reply.get("primary")
    keys = [k for k in reply.get("keys") or () if k != primary]
    rows = [[str(primary), "primary"]] if primary else []
    rows += [[str(k), ""] for k in keys]
    return _columns(rows) if rows else "no keys (plaintext cluster)\n"


def format_route_text(reply: Mapping[str, Any]) -> str:
    owners = reply.get("owners") or []
    epoch = reply.get("epoch")
    head = f"key {reply.get('key')}" + (f"  (routing epoch {epoch})" if epoch is not None else "")
    if not owners:
        return head + "\nno live member of that role owns it\n"
    rows = [["RANK", "NAME", "ADDRESS", "DC", "WEIGHT"]]
    for i, o in enumerate(owners, 1):
        rows.append(
            [
                str(i),
                _text(o.get("name")),
                _text(o.get("addr")),
                _text(o.get("dc")),
                _text(o.get("weight")),
            ]
        )
    return head + "\n" + _columns(rows)


def format_event(event: Mapping[str, Any]) -> str:
    """One event as a line: time, what, then its fields."""
    import datetime

    when = datetime.datetime.fromtimestamp(float(event.get("time") or 0)).strftime("%H:%M:%S.%f")
    fields = "  ".join(
        f"{k}={v}" for k, v in event.items() if k not in ("seq", "time", "event") and v is not None
    )
    return f"{when[:-3]}  {event.get('event')}  {fields}".rstrip()
