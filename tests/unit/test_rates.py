"""Live rates from sampled cumulative counters."""

from trafmetuxd.rates import RateSampler


def test_rates_are_the_byte_difference_over_the_window() -> None:
    sampler = RateSampler(window=2)
    sampler.sample(100.0, {"input": (0, 0)})
    sampler.sample(101.0, {"input": (1000, 10)})
    sampler.sample(102.0, {"input": (3000, 50)})
    assert sampler.rates() == {"input": (1500.0, 25.0)}
    sampler.sample(103.0, {"input": (3000, 50)})  # the oldest sample leaves the window
    assert sampler.rates() == {"input": (1000.0, 20.0)}


def test_a_single_sample_gives_zero_rates_not_an_error() -> None:
    sampler = RateSampler()
    assert sampler.rates() == {}
    sampler.sample(5.0, {"ssh": (10, 10)})
    assert sampler.rates() == {"ssh": (0.0, 0.0)}


def test_a_clock_step_back_restarts_the_window_instead_of_giving_negative_rates() -> None:
    sampler = RateSampler()
    sampler.sample(100.0, {"m": (0, 0)})
    sampler.sample(101.0, {"m": (100, 0)})
    sampler.sample(50.0, {"m": (200, 0)})
    sampler.sample(51.0, {"m": (260, 0)})
    assert sampler.rates() == {"m": (60.0, 0.0)}


def test_a_monitor_added_by_reload_starts_from_zero() -> None:
    sampler = RateSampler()
    sampler.sample(0.0, {"a": (0, 0)})
    sampler.sample(2.0, {"a": (10, 0), "b": (40, 4)})
    assert sampler.rates() == {"a": (5.0, 0.0), "b": (20.0, 2.0)}
