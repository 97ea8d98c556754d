"""The per-connection inbound budget: a sliding window of MESSAGING_WS_RATE_EVENTS events per
MESSAGING_WS_RATE_WINDOW_SECONDS, answered with whole seconds to wait (at least 1)."""

from __future__ import annotations

from types import SimpleNamespace

from messaging import consumers
from messaging.consumers import ConsultationChatConsumer


def test_the_window_slides_and_refused_events_do_not_count(settings, monkeypatch):
    settings.MESSAGING_WS_RATE_EVENTS = 3
    settings.MESSAGING_WS_RATE_WINDOW_SECONDS = 10
    now = [0.0]
    monkeypatch.setattr(consumers, "time", SimpleNamespace(monotonic=lambda: now[0]))
    socket = ConsultationChatConsumer()

    def event_at(when: float) -> int | None:
        now[0] = when
        return socket._take_inbound_budget()

    assert [event_at(t) for t in (100.0, 101.0, 104.5)] == [None, None, None]
    # Full: the oldest event (100) leaves the window at 110.
    assert event_at(105.0) == 5
    assert event_at(109.9) == 1  # a fraction of a second is still a whole one
    # The event at 100 is out at 110 exactly; the two refused ones never counted.
    assert event_at(110.0) is None
    assert event_at(110.5) == 1  # now 101 is the oldest
    # Everything at or before 110 has left the window by 120.
    assert [event_at(t) for t in (120.0, 120.0, 120.0)] == [None, None, None]
    assert event_at(120.0) == 10


def test_each_socket_has_its_own_budget(settings, monkeypatch):
    settings.MESSAGING_WS_RATE_EVENTS = 1
    settings.MESSAGING_WS_RATE_WINDOW_SECONDS = 10
    monkeypatch.setattr(consumers, "time", SimpleNamespace(monotonic=lambda: 50.0))
    first, second = ConsultationChatConsumer(), ConsultationChatConsumer()
    assert first._take_inbound_budget() is None
    assert first._take_inbound_budget() == 10
    assert second._take_inbound_budget() is None
