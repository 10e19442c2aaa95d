"""The per-connection rate limits, on a hand-driven clock."""

from __future__ import annotations

from liveloop.config import Settings
from liveloop.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(**overrides: object) -> tuple[RateLimiter, Clock]:
    clock = Clock()
    return RateLimiter(Settings(**overrides), clock), clock  # type: ignore[arg-type]


def test_request_room_once_per_five_seconds() -> None:
    limits, clock = limiter()
    assert limits.check("request-room") is None
    assert limits.check("request-room") == 5.0
    clock.now += 3.2
    assert limits.check("request-room") == 1.8
    clock.now += 1.8
    assert limits.check("request-room") is None
    clock.now += 4.9999
    assert limits.check("request-room") == 0.001  # rounded up, never early


def test_refused_request_is_not_counted() -> None:
    limits, clock = limiter()
    assert limits.check("request-room") is None
    clock.now += 4
    assert limits.check("request-room") == 1.0
    clock.now += 1
    assert limits.check("request-room") is None


def test_ten_messages_per_sliding_minute() -> None:
    limits, clock = limiter()
    for _ in range(10):
        assert limits.check("newMessage") is None
        clock.now += 1
    assert limits.check("newMessage") == 50.0  # the first one leaves the window at +60
    clock.now += 50
    assert limits.check("newMessage") is None
    assert limits.check("newMessage") == 1.0


def test_ice_and_others_unlimited() -> None:
    limits, _ = limiter()
    for _ in range(1000):
        assert limits.check("send-new-ice-candidates") is None
        assert limits.check("negotiation-call-offer") is None


def test_limits_are_independent() -> None:
    limits, _ = limiter()
    assert limits.check("request-room") is None
    for _ in range(10):
        assert limits.check("newMessage") is None


def test_settings_change_the_limits() -> None:
    limits, clock = limiter(request_room_per=1.0, messages_per_minute=2)
    assert limits.check("request-room") is None
    clock.now += 1
    assert limits.check("request-room") is None
    assert limits.check("newMessage") is None
    assert limits.check("newMessage") is None
    assert limits.check("newMessage") == 60.0


def test_zero_messages_allowed() -> None:
    limits, _ = limiter(messages_per_minute=0)
    assert limits.check("newMessage") == 60.0


def test_rate_limits_off() -> None:
    limits, _ = limiter(rate_limits=False)
    for _ in range(100):
        assert limits.check("request-room") is None
        assert limits.check("newMessage") is None


def test_ice_servers_ten_per_sliding_minute_apart_from_messages() -> None:
    limits, clock = limiter(ice_servers_per_minute=3)
    for _ in range(3):
        assert limits.check("get-ice-servers") is None
        clock.now += 10
    assert limits.check("get-ice-servers") == 30.0
    assert limits.check("newMessage") is None  # a budget of its own
    clock.now += 30
    assert limits.check("get-ice-servers") is None
    assert Settings().ice_servers_per_minute == 10


def test_limits_carry_to_another_clock() -> None:
    """What a recovery record keeps: the counts go on in another process, whose clock
    reads something else entirely."""
    here, clock = limiter()
    assert here.check("request-room") is None
    for _ in range(10):
        assert here.check("newMessage") is None
        clock.now += 1
    state = here.carry()
    there, other = limiter()
    other.now = 77.0
    there.resume(state)
    assert there.check("request-room") is None  # 10 s have passed since: allowed again
    assert there.check("newMessage") == 50.0  # the first of the ten left 10 s ago
    other.now += 50
    assert there.check("newMessage") is None
    fresh, _ = limiter()
    fresh.resume(limiter()[0].carry())  # nothing counted travels as nothing
    assert fresh.check("request-room") is None


def test_relay_budget_carries_to_another_clock() -> None:
    from liveloop.ratelimit import RelayBudget

    clock, other = Clock(), Clock()
    here = RelayBudget(Settings(relay_budget=3), clock)
    assert here.carry() is None  # nothing taken: nothing to carry
    for _ in range(3):
        assert here.take() is None
    there = RelayBudget(Settings(relay_budget=3), other)
    other.now = 500.0
    there.resume(here.carry())
    assert there.take() is not None  # spent here, spent there
    other.now += 4  # a token refills (3 per 10 s)
    assert there.take() is None
