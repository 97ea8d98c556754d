"""The query-tracking wrapper (medease/db/tracking.py) is installed only where it is used."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.backends.postgresql.base import DatabaseWrapper

from medease.db.tracking import _track_queries

pytestmark = pytest.mark.postgres


def _wrappers_of_a_new_connection(alias: str) -> list:
    wrapper = DatabaseWrapper({**connection.settings_dict}, alias=alias)
    try:
        wrapper.ensure_connection()  # sends connection_created
        return list(wrapper.execute_wrappers)
    finally:
        wrapper.close()
        if alias != "default":  # its own pool (the default one is the tests' own)
            wrapper.close_pool()


def test_the_primary_is_not_wrapped_without_diagnostics(db, settings):
    settings.DB_ROUTING_DIAGNOSTICS = False
    settings.DEBUG = False
    assert _track_queries not in _wrappers_of_a_new_connection("default")


def test_the_primary_is_wrapped_for_diagnostics(db, settings):
    settings.DB_ROUTING_DIAGNOSTICS = True
    assert _track_queries in _wrappers_of_a_new_connection("default")


def test_a_replica_is_always_wrapped_so_its_failures_are_noticed(db, settings):
    settings.DB_ROUTING_DIAGNOSTICS = False
    settings.DEBUG = False
    assert _track_queries in _wrappers_of_a_new_connection("replica1")
