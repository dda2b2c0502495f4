"""Our own roles, weight and tags against the wire's limits (`_messages.check_metadata`),
without a network."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from swimthor.membership import MAX_ROLE, MAX_ROLES, check_metadata


def _check(
    roles: Sequence[str] = (),
    weight: float = 1.0,
    tags: dict[str, str] | None = None,
    room: int = 1400,
) -> None:
    check_metadata("node-1", "dc1", tuple(roles), weight, dict(tags or {}), max_tags=4,
                   max_tag_bytes=16, room=room)  # fmt: skip


def test_metadata_within_the_limits_is_taken() -> None:
    _check(["sip", "dns"], 0.0, {"zone": "a", "rack": "r1"})
    _check(["x" * MAX_ROLE] * MAX_ROLES, 1e6, {f"k{i}": "v" * 16 for i in range(4)})


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"roles": ["r"] * (MAX_ROLES + 1)}, "roles"),
        ({"roles": [""]}, "roles"),
        ({"roles": ["x" * (MAX_ROLE + 1)]}, "roles"),
        ({"roles": ["a\nb"]}, "roles"),
        ({"weight": -1.0}, "weight"),
        ({"weight": float("nan")}, "weight"),
        ({"weight": 1e6 + 1}, "weight"),
        ({"tags": {f"k{i}": "v" for i in range(5)}}, "at most 4 tags"),
        ({"tags": {"": "v"}}, "16 bytes"),
        ({"tags": {"k": "é" * 9}}, "16 bytes"),  # 18 bytes in UTF-8
        ({"tags": {"k": "a\tb"}}, "printable"),
    ],
)
def test_metadata_past_a_limit_is_refused(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _check(**kw)


def test_metadata_must_fit_one_packet() -> None:
    tags = {f"k{i}": "v" * 16 for i in range(4)}
    _check(["sip"], 1.0, tags, room=200)
    with pytest.raises(ValueError, match="too large"):
        _check(["sip"], 1.0, tags, room=100)
