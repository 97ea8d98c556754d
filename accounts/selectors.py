"""Reads of accounts data, scoped to the caller where it holds personal data."""

from __future__ import annotations

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import AuthToken, Role, User
from accounts.services import token_digest
from medease import db as db_routing
from medease.exceptions import NotAuthenticated


def token_resolve(*, raw: str) -> tuple[User, AuthToken]:
    """The user behind a raw bearer token, or NotAuthenticated.

    Read from the primary: a token issued or revoked a moment ago must be seen as such,
    whatever a replica has replayed yet.
    """
    token = (
        AuthToken.objects.using(db_routing.PRIMARY)
        .select_related("user", "user__organization")
        .filter(digest=token_digest(raw))
        .first()
    )
    now = timezone.now()
    if (
        token is None
        or token.revoked_at is not None
        or token.expires_at <= now
        or token.last_used_at + settings.TOKEN_IDLE_TIMEOUT <= now
        or not token.user.is_active
        or token.created_at < token.user.credentials_changed_at
    ):
        raise NotAuthenticated("The token is invalid or has expired.", code="invalid_token")
    return token.user, token


def token_idle_expiry(*, token: AuthToken):
    """When the token expires if it is not used again (never after its absolute expiry)."""
    return min(token.expires_at, token.last_used_at + settings.TOKEN_IDLE_TIMEOUT)


def providers_list(*, specialty: str | None = None, organization: int | None = None) -> QuerySet:
    """Active providers with their profile and organization, for the providers list."""
    queryset = User.objects.filter(role=Role.PROVIDER, is_active=True).select_related(
        "provider_profile", "organization"
    )
    if specialty:
        queryset = queryset.filter(provider_profile__specialty__iexact=specialty)
    if organization:
        queryset = queryset.filter(organization_id=organization)
    return queryset.order_by("id")


def organization_members(*, organization_id: int) -> QuerySet:
    return User.objects.filter(organization_id=organization_id).order_by("id")
