"""A task for the scale tests' Celery worker (loaded with ``--include``): it reads one row
through the router, like any task would, and reports what it saw and where it read it."""

from __future__ import annotations

import json
import os

from celery import shared_task

from medease import db as db_routing

QUEUE = "scale_probe"


@shared_task(name="scale_probe.read_full_name", queue=QUEUE, ignore_result=True)
def read_full_name(user_id: int, out_path: str) -> None:
    from accounts.models import User

    full_name = User.objects.filter(pk=user_id).values_list("full_name", flat=True).first()
    report = {
        "full_name": full_name,
        "selects": db_routing.queries_by_alias(selects_only=True),
    }
    partial = f"{out_path}.part"
    with open(partial, "w") as handle:
        json.dump(report, handle)
    os.replace(partial, out_path)  # the test polls for the file: never show it half-written
