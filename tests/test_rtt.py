"""The round-trip-time estimator that sets how long a first attempt waits."""

from dhtmesh.node.wire.rtt import MIN_TIMEOUT, RttEstimator

PEER = ("127.0.0.1", 4000)
OTHER = ("127.0.0.1", 4001)


def test_without_samples_the_configured_timeout_applies() -> None:
    assert RttEstimator(1.0).timeout(PEER) == 1.0


def test_a_measured_peer_gets_a_few_round_trips_but_never_less_than_the_floor() -> None:
    estimator = RttEstimator(2.0)
    for _ in range(20):
        estimator.observe(PEER, 0.3)
    assert 0.3 <= estimator.timeout(PEER) < 0.6
    fast = RttEstimator(2.0)
    fast.observe(PEER, 0.0002)
    assert fast.timeout(PEER) == MIN_TIMEOUT


def test_an_unmeasured_peer_waits_twice_the_overall_estimate_within_the_cap() -> None:
    estimator = RttEstimator(1.0)
    for _ in range(20):
        estimator.observe(PEER, 0.2)
    assert estimator.timeout(OTHER) > estimator.timeout(PEER)
    assert estimator.timeout(OTHER) <= 1.0
    for _ in range(20):
        estimator.observe(PEER, 5.0)
    assert estimator.timeout(PEER) == 1.0, "the configured timeout caps every wait"


def test_variation_widens_the_wait() -> None:
    steady, jittery = RttEstimator(5.0), RttEstimator(5.0)
    for index in range(40):
        steady.observe(PEER, 0.3)
        jittery.observe(PEER, 0.1 if index % 2 else 0.5)
    assert jittery.timeout(PEER) > steady.timeout(PEER)
