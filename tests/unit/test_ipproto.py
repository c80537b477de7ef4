"""One table of IP protocol names: the config, flows, top and the flow log agree."""

from __future__ import annotations

import pytest

from trafmetuxd import config_values, flowlog, ipproto


def test_flow_log_names_are_the_table_upper_case() -> None:
    assert {n: flowlog.protocol_name(n) for n in ipproto.NAMES} == {
        n: name.upper() for n, name in ipproto.NAMES.items()
    }
    assert flowlog.protocol_name(253) == "253"  # no name: the number


@pytest.mark.parametrize(("number", "name"), [(58, "icmpv6"), (2, "igmp"), (6, "tcp")])
def test_every_table_name_is_accepted_by_the_config(number: int, name: str) -> None:
    assert config_values.protocol(name) == number
    assert config_values.protocol(name.upper()) == number
    assert ipproto.name(number) == name


def test_config_accepts_every_name_the_reports_print() -> None:
    assert all(config_values.protocol(name) == n for n, name in ipproto.NAMES.items())


def test_a_protocol_without_a_name_is_its_number() -> None:
    assert ipproto.name(253) == "253"
