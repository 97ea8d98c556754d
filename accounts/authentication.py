"""DRF authentication with ``Authorization: Bearer <token>`` against hashed tokens."""

from __future__ import annotations

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed

from accounts import selectors, services, token_cache
from accounts.tokens import token_digest
from medease import db as db_routing
from medease import ratelimit
from medease.exceptions import NotAuthenticated


class BearerTokenAuthentication(BaseAuthentication):
    """Resolves the token, slides its idle expiry, and applies read-your-writes pinning.

    For a token this process has seen before, the token's cache entries, the request's
    ``api_user`` rate-limit event and the user's read-your-writes marker are one Redis
    round trip (accounts.token_cache.read_counting); ApiUserThrottle then only decides.
    """

    keyword = b"bearer"

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        # DRF only handles its own APIException inside authentication (it then marks the
        # request anonymous), so failures are raised as AuthenticationFailed.
        if len(parts) != 2:
            raise AuthenticationFailed(
                "Malformed Authorization header; expected 'Bearer <token>'.",
                code="invalid_token",
            )
        try:
            raw = parts[1].decode("ascii")
            digest = token_digest(raw)
            user_id = token_cache.user_of(digest)
            counter = counted = None
            if user_id is not None:
                counter = ratelimit.counter("api_user", str(user_id))
                if counter is not None:
                    counted = token_cache.read_counting(
                        digest,
                        counter_key=counter.key,
                        counter_ttl_ms=counter.ttl_ms,
                        marker_key=db_routing.marker_key_to_read(user_id),
                    )
            # One cache round trip for the token's facts and its user's snapshot.
            facts, cached = selectors.token_read(
                raw=raw, cached=counted.read if counted is not None else None
            )
            # Before the user row is read: a user who just wrote reads the primary.
            if counted is not None and counted.marker is not None:
                db_routing.pin_if_marked(counted.marker)
            else:
                db_routing.pin_if_user_wrote_recently(facts.user_id)
            user, token = selectors.token_user(facts=facts, raw=raw, cached=cached)
        except UnicodeDecodeError:
            raise AuthenticationFailed("The token is invalid.", code="invalid_token") from None
        except NotAuthenticated as exc:
            raise AuthenticationFailed(exc.message, code=exc.code) from None
        services.token_touch(token=token)
        if counted is not None and counted.count is not None:
            # Counted already: the throttle only compares (medease.ratelimit.ApiUserThrottle).
            setattr(request, ratelimit.API_USER_COUNTED, counter.usage(counted.count))
        token_cache.remember_user(digest, user.pk)
        return user, token

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'
