"""The per-host series of /metrics: the largest hosts kept, the rest folded into "other"."""

from __future__ import annotations

from trafmetuxd.metrics import OTHER, cap_hosts


def test_the_cap_keeps_the_largest_hosts_and_folds_the_rest_into_other_exactly() -> None:
    hosts = {f"10.0.0.{i}": [i * 100, i, i * 10, i] for i in range(1, 8)}
    hosts[OTHER] = [5, 1, 7, 1]  # hosts beyond the monitor's max_hosts, already folded
    capped = cap_hosts(hosts, 3)
    assert list(capped) == ["10.0.0.7", "10.0.0.6", "10.0.0.5", OTHER]
    assert capped["10.0.0.7"] == hosts["10.0.0.7"]
    folded = [hosts[f"10.0.0.{i}"] for i in range(1, 5)] + [hosts[OTHER]]
    assert capped[OTHER] == [sum(col) for col in zip(*folded, strict=True)]
    for i in range(4):  # every column's sum is unchanged
        assert sum(r[i] for r in capped.values()) == sum(r[i] for r in hosts.values())


def test_under_the_cap_nothing_is_folded_and_ties_rank_by_name() -> None:
    hosts = {"10.0.0.2": [50, 1, 50, 1], "10.0.0.1": [100, 1, 0, 0]}
    assert cap_hosts(hosts, 10) == hosts
    assert list(cap_hosts(hosts, 1)) == ["10.0.0.1", OTHER]
    assert cap_hosts(hosts, 0) == {OTHER: [150, 2, 50, 1]}
    assert cap_hosts({}, 5) == {}
