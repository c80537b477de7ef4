"""Address text: the fast formatter agrees with ipaddress on every address."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trafmetuxd.addresses import address_text

V6 = st.one_of(
    st.integers(0, 2**128 - 1),
    st.integers(0, 2**48),  # ::/80: where libc and ipaddress could disagree
    st.integers(0, 2**32 - 1).map(lambda v: 0xFFFF << 32 | v),  # IPv4-mapped
    st.integers(0, 2**64 - 1).map(lambda v: v << 64),  # zero runs in the low half
)


@given(st.integers(0, 2**32 - 1))
def test_ipv4_text_is_dotted_quad(value: int) -> None:
    assert address_text(4, value) == str(ipaddress.IPv4Address(value))


@given(V6)
def test_ipv6_text_matches_ipaddress_everywhere(value: int) -> None:
    assert address_text(6, value) == str(ipaddress.IPv6Address(value))


def test_known_forms() -> None:
    assert address_text(6, int(ipaddress.IPv6Address("2001:db8::1"))) == "2001:db8::1"
    assert address_text(6, int(ipaddress.IPv6Address("::ffff:1.2.3.4"))) == str(
        ipaddress.IPv6Address("::ffff:1.2.3.4")
    )
    assert address_text(4, 0xC0A8BE3E) == "192.168.190.62"


def test_an_out_of_range_value_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="is not an IPv4 address"):
        address_text(4, 2**40)
    with pytest.raises(ValueError, match="is not an IPv6 address"):
        address_text(6, 2**130)
