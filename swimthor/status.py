"""The `status` reply's type, shared by everything that makes or reads it: the membership
core makes its part (`StatusReply`), the agent adds its sections (`AgentStatus`), the control
socket sends it, the CLI prints it and the metrics are read from it.

The agent's sections are the front-ends' own status objects (`SipService.status`,
`DnsService.status`), present when the agent runs that front-end. The CLI gets the reply as
JSON from an agent that may run another version, so it reads it as a plain mapping, taking
what it knows with `.get`; this type is the contract it reads against.
"""

from __future__ import annotations

from typing import Any, NotRequired

from .membership import StatusReply

__all__ = ["AgentStatus", "StatusReply"]


class AgentStatus(StatusReply):
    """What `swimthor status --format json` prints: the core's reply and the agent's."""

    runtime: dict[str, int]  # the membership runtime's counters
    routing: dict[str, Any]  # the routing epoch and key-space shares (`agent.routing_status`)
    sip: NotRequired[dict[str, Any]]  # agents with the sip role
    dns: NotRequired[dict[str, Any]]  # agents with --dns
