"""Per-request query counts by alias, and noticing replica failures as queries fail."""

from __future__ import annotations

from django.conf import settings
from django.db.backends.signals import connection_created
from django.db.utils import InterfaceError, OperationalError

from medease import context
from medease.db.replicas import PRIMARY, mark_replica_unhealthy


def _failure_is_the_servers(exc: BaseException) -> bool:
    """A lost or refused connection, or a server shutting down (not a bad query)."""
    cause = exc.__cause__ or exc
    sqlstate = getattr(cause, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith(("08", "57P"))


def _track_queries(execute, sql, params, many, context_):
    """Counts queries per alias for the current request, and notices replica failures."""
    alias = context_["connection"].alias
    state = context.current_state()
    if state is not None:
        counts = state.extra.setdefault("db_queries", {})
        counts[alias] = counts.get(alias, 0) + 1
        if sql.lstrip()[:6].upper() == "SELECT":
            selects = state.extra.setdefault("db_selects", {})
            selects[alias] = selects.get(alias, 0) + 1
    try:
        return execute(sql, params, many, context_)
    except (OperationalError, InterfaceError) as exc:
        if alias != PRIMARY:
            if state is not None:
                state.extra["replica_error"] = alias
            if _failure_is_the_servers(exc):
                mark_replica_unhealthy(alias, reason=f"query failed: {exc}"[:200])
        raise


def _install_query_tracking(sender, connection, **kwargs) -> None:
    # Only where it is needed: a wrapper around every query cost 2-6% of a request's CPU
    # (docs/performance.md). Replica connections always (a failing replica must be noticed);
    # the primary's only for the counts of diagnostics (tests, scale runs) or DEBUG.
    needed = connection.alias != PRIMARY or settings.DB_ROUTING_DIAGNOSTICS or settings.DEBUG
    if needed and _track_queries not in connection.execute_wrappers:
        connection.execute_wrappers.append(_track_queries)


connection_created.connect(_install_query_tracking, dispatch_uid="medease.db.track_queries")


def queries_by_alias(*, selects_only: bool = False) -> dict[str, int]:
    """How many queries (or SELECTs) the current request or task ran on each alias so far
    (counted with DB_ROUTING_DIAGNOSTICS or DEBUG on; replicas' queries always)."""
    state = context.current_state()
    if state is None:
        return {}
    return dict(state.extra.get("db_selects" if selects_only else "db_queries", {}))
