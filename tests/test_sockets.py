"""swimthor.sockets: what the front-ends share. `is_ip` decides whether a target is sent to at
once or resolved first; it must agree with `ipaddress` on every string."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from swimthor.sockets import is_ip


def _reference(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@given(
    st.ip_addresses().map(str)
    | st.lists(st.integers(0, 300).map(str), min_size=3, max_size=5).map(".".join)
    | st.lists(st.sampled_from(["0", "00", "01", "1", "255", "256", "a", ""]), min_size=4,
               max_size=4).map(".".join)
    | st.text(alphabet="0123456789abcdef.:%[]x ", max_size=20)
)  # fmt: skip
def test_is_ip_agrees_with_ipaddress(host: str) -> None:
    assert is_ip(host) == _reference(host), host


def test_is_ip_on_what_sip_targets_look_like() -> None:
    for host in ("192.0.2.7", "10.0.0.1", "::1", "2001:db8::5", "fe80::1%eth0"):
        assert is_ip(host), host
    for host in ("sip.example.com", "1.example.com", "[::1]", "192.0.2.7:5060", "1.2.3", ""):
        assert not is_ip(host), host
