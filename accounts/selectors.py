"""Reads of accounts data, scoped to the caller where it holds personal data."""

from __future__ import annotations

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from accounts import token_cache
from accounts.models import AuthToken, Role, User
from accounts.tokens import TokenFacts, token_digest
from medease import db as db_routing
from medease.exceptions import NotAuthenticated


def _invalid() -> NotAuthenticated:
    return NotAuthenticated("The token is invalid or has expired.", code="invalid_token")


def token_read(
    *, raw: str, cached: token_cache.Read | None = None
) -> tuple[TokenFacts, token_cache.Read]:
    """The facts of a live token, from the shared cache or else the primary, and what the
    cache held about its user (see token_user).

    The primary, never a replica: a token issued or revoked a moment ago must be seen as
    such. Revocation writes a tombstone that no fill or refresh can overwrite (see
    accounts.token_cache), so a lookup racing with a logout cannot bring a revoked token back.
    With the cache down every lookup reads the primary. ``cached``: what the caller already
    read from the cache for this token (accounts.authentication reads it in a round trip
    with other things).
    """
    digest = token_digest(raw)
    now = timezone.now()
    if cached is None:
        cached = token_cache.read(digest)
    if cached.facts is token_cache.REVOKED:
        raise _invalid()
    if cached.facts is not None:
        if not cached.facts.usable(now):
            raise _invalid()
        return cached.facts, cached
    token = AuthToken.objects.using(db_routing.PRIMARY).filter(digest=digest).first()
    if token is None or token.revoked_at is not None:
        raise _invalid()
    facts = TokenFacts(
        token_id=token.pk,
        user_id=token.user_id,
        created_at=token.created_at,
        expires_at=token.expires_at,
        last_used_at=token.last_used_at,
    )
    if not facts.usable(now):
        raise _invalid()
    token_cache.add(digest, facts)
    return facts, cached


def token_lookup(*, raw: str) -> TokenFacts:
    """The facts of a live token (token_read without the user snapshot)."""
    return token_read(raw=raw)[0]


def token_user(
    *, facts: TokenFacts, raw: str, cached: token_cache.Read | None = None
) -> tuple[User, AuthToken]:
    """The active user behind looked-up token facts, and an AuthToken handle for the request.

    The user comes from the token's cached snapshot when ``cached`` (token_read's) holds a
    current one; else from the primary, and is then cached (a snapshot filled from a lagging
    replica would outlive the lag). With the cache disabled the row is read through the
    router (a replica when one is healthy and the user has not written recently; a replica
    that does not have the user yet falls back to the primary). Tokens older than the user's
    last credential change are refused.
    """
    digest = token_digest(raw)
    user = cached.user if cached is not None else None
    if user is None or user.pk != facts.user_id:
        user = None
        fill = cached is not None and settings.TOKEN_CACHE_SECONDS > 0
        if not fill:
            user = User.objects.select_related("organization").filter(pk=facts.user_id).first()
        if user is None:
            user = (
                User.objects.using(db_routing.PRIMARY)
                .select_related("organization")
                .filter(pk=facts.user_id)
                .first()
            )
        if user is not None and fill:
            token_cache.user_add(digest, user, version=cached.user_version)
    if user is None or not user.is_active or facts.created_at < user.credentials_changed_at:
        raise _invalid()
    token = AuthToken(
        pk=facts.token_id,
        digest=digest,
        user_id=user.pk,
        created_at=facts.created_at,
        expires_at=facts.expires_at,
        last_used_at=facts.last_used_at,
    )
    # Mark it as a row of the primary before attaching the user: assigning a related object
    # to an instance without a database asks the router for a *write* alias, which would
    # pin this read-only request to the primary.
    token._state.db = db_routing.PRIMARY
    token._state.adding = False
    token.user = user
    return user, token


def token_resolve(*, raw: str) -> tuple[User, AuthToken]:
    """The user behind a raw bearer token, or NotAuthenticated."""
    facts, cached = token_read(raw=raw)
    return token_user(facts=facts, raw=raw, cached=cached)


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
