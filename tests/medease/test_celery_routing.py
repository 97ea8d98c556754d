"""Celery tasks enqueued after a write read the primary (medease/celery_routing.py); the
same against a real worker and a delayed replica is in tests/scale/test_celery_routing.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from medease import celery_routing, context


@pytest.fixture
def request_state():
    token = context.begin(context.RequestState(request_id="r"))
    yield context.current_state()
    context.end(token)


def test_a_task_published_after_a_write_is_tagged(request_state):
    headers: dict = {}
    celery_routing._tag_tasks_enqueued_after_a_write(headers=headers)
    assert celery_routing.HEADER not in headers
    request_state.wrote = True
    celery_routing._tag_tasks_enqueued_after_a_write(headers=headers)
    assert headers[celery_routing.HEADER] == 1


def _task(**request):
    return SimpleNamespace(request=SimpleNamespace(headers=None, **request))


@pytest.mark.parametrize(("tagged", "expected"), [(True, True), (False, False)])
def test_a_task_runs_with_its_own_routing_state(tagged, expected):
    assert context.current_state() is None
    task = _task(**({celery_routing.HEADER: 1} if tagged else {}))
    celery_routing._begin_task_state(task_id="abc", task=task)
    state = context.current_state()
    assert state.request_id == "abc"
    assert state.use_primary is expected
    celery_routing._end_task_state(task=task)
    assert context.current_state() is None


def test_an_eager_task_inside_a_request_keeps_the_requests_state(request_state):
    task = _task()
    celery_routing._begin_task_state(task_id="abc", task=task)
    assert context.current_state() is request_state
    celery_routing._end_task_state(task=task)
    assert context.current_state() is request_state
