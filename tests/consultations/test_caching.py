"""Hot-read caching (consultations/caching.py) against the real Redis: one round trip on a
hit, invalidation hides older entries, and concurrent misses of one entry in a process
build it once."""

from __future__ import annotations

import threading

import pytest

from consultations import caching

pytestmark = [pytest.mark.django_db, pytest.mark.redis]

WAIT = 10  # seconds: a bound for the test to fail instead of hanging, not a delay


def test_an_invalidated_scope_hides_its_entries():
    builds = []

    def build():
        builds.append(1)
        return {"n": len(builds)}

    def read():
        return caching.cached(scopes=["cons:v:test:a"], key="k", timeout=60, build=build)

    assert read() == {"n": 1}
    assert read() == {"n": 1}
    caching.invalidate(["cons:v:test:a"])
    assert read() == {"n": 2}


def test_concurrent_misses_build_once_and_get_copies():
    scopes, key = ["cons:v:test:b"], "shared"
    started, release = threading.Event(), threading.Event()
    builds, results = [], {}

    def build():
        builds.append(threading.current_thread().name)
        started.set()
        assert release.wait(WAIT)
        return {"rows": [1, 2, 3]}

    def read(name):
        results[name] = caching.cached(scopes=scopes, key=key, timeout=60, build=build)

    first = threading.Thread(target=read, args=("first",), name="first")
    first.start()
    assert started.wait(WAIT)
    second = threading.Thread(target=read, args=("second",), name="second")
    second.start()
    # The second request missed too and waits for the first one's fill.
    flight = caching._flights[next(iter(caching._flights))]
    for _ in range(1000):
        if flight.waiters == 2:
            break
        threading.Event().wait(0.01)
    assert flight.waiters == 2
    release.set()
    first.join(WAIT)
    second.join(WAIT)
    assert builds == ["first"]
    assert results["first"] == results["second"] == {"rows": [1, 2, 3]}
    results["second"]["rows"].append(4)  # each caller owns its copy
    assert results["first"] == {"rows": [1, 2, 3]}
    assert caching._flights == {}
