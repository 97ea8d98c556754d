"""Read-your-writes for Celery tasks.

A task enqueued by a request (or task) that wrote is usually about that write: "send the
booking confirmation for consultation 42". On a worker it would read a replica that may
not have replayed the write yet ("Consultation matching query does not exist"). So:

* when a task is published from code whose reads go to the primary (it wrote, or it runs
  inside ``use_primary()``), the message carries the ``medease_primary`` header;
* on the worker, each task runs with its own routing state (the request id in logs is the
  task id); with the header, all its reads go to the primary, and without it they go to
  a replica until the task itself writes, like a request.

The flag is not timed out on purpose: a worker's clock is not the publisher's, and tasks
that follow writes are small. Periodic jobs, which are not caused by a write, read
replicas. Connected from config/celery.py.
"""

from __future__ import annotations

from celery.signals import before_task_publish, task_postrun, task_prerun

from medease import context
from medease import db as db_routing

HEADER = "medease_primary"
_CONTEXT_ATTR = "_medease_routing_context"


@before_task_publish.connect(dispatch_uid="medease.celery_routing.publish")
def _tag_tasks_enqueued_after_a_write(sender=None, headers=None, **kwargs) -> None:
    if headers is not None and db_routing.primary_forced():
        headers[HEADER] = 1


def _header(task) -> bool:
    request = task.request
    value = getattr(request, HEADER, None)
    if value is None and isinstance(getattr(request, "headers", None), dict):
        value = request.headers.get(HEADER)
    return bool(value)


@task_prerun.connect(dispatch_uid="medease.celery_routing.prerun")
def _begin_task_state(sender=None, task_id=None, task=None, **kwargs) -> None:
    if task is None or context.current_state() is not None:
        # Eager execution inside a request: the request's own state already applies.
        return
    state = context.RequestState(request_id=str(task_id or "-"), use_primary=_header(task))
    setattr(task.request, _CONTEXT_ATTR, context.begin(state))


@task_postrun.connect(dispatch_uid="medease.celery_routing.postrun")
def _end_task_state(sender=None, task=None, **kwargs) -> None:
    token = getattr(task.request, _CONTEXT_ATTR, None) if task is not None else None
    if token is not None:
        setattr(task.request, _CONTEXT_ATTR, None)
        context.end(token)
