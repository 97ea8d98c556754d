"""Per-table storage settings the migrations give PostgreSQL."""

from __future__ import annotations

import pytest
from django.db import connection

pytestmark = pytest.mark.django_db


@pytest.mark.postgres
def test_the_consultation_table_is_analyzed_after_a_small_share_of_changes():
    """Migration 0006: new providers' ids must reach the planner's statistics soon, or the
    list's page query walks every user (docs/performance.md, "Query plans at size")."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reloptions FROM pg_class WHERE relname = %s", ["consultations_consultation"]
        )
        (options,) = cursor.fetchone()
    assert "autovacuum_analyze_scale_factor=0.005" in options
    assert "autovacuum_analyze_threshold=1000" in options
