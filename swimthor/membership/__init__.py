"""Cluster membership by SWIM gossip with the Lifeguard extensions.

The protocol core (`Membership`) is sans-IO; `runtime.MembershipRuntime` drives it with trio.
"""

from ..keyring import Keyring, KeyringFileError, SealError
from ._core import Membership, StreamRequest
from ._events import (
    Event,
    Joined,
    JoinFailed,
    KeyringChanged,
    MemberEvent,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberRecovered,
    MemberSuspected,
    MemberUpdated,
    NameConflict,
    Rejected,
)
from ._member import Addr, Member, State
from ._query import (
    QueryError,
    key_op_frame,
    query_frame,
    read_key_op_reply,
    read_query_reply,
)
from ._stats import MembershipStats
from ._status import ClusterRow, Convergence, StatusReply, member_json

__all__ = [
    "Addr",
    "ClusterRow",
    "Convergence",
    "Event",
    "JoinFailed",
    "Joined",
    "Keyring",
    "KeyringChanged",
    "KeyringFileError",
    "Member",
    "MemberEvent",
    "MemberFailed",
    "MemberJoined",
    "MemberLeft",
    "MemberRecovered",
    "MemberSuspected",
    "MemberUpdated",
    "Membership",
    "MembershipStats",
    "NameConflict",
    "QueryError",
    "Rejected",
    "SealError",
    "State",
    "StatusReply",
    "StreamRequest",
    "key_op_frame",
    "member_json",
    "query_frame",
    "read_key_op_reply",
    "read_query_reply",
]
