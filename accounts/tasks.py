"""Accounts' periodic jobs."""

from __future__ import annotations

from celery import shared_task

from accounts import services


@shared_task(name="accounts.purge_expired_tokens", queue="default", ignore_result=True)
def purge_expired_tokens() -> int:
    """Delete expired and long-revoked tokens (idempotent)."""
    return services.tokens_purge_expired()
