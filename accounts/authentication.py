"""DRF authentication with ``Authorization: Bearer <token>`` against hashed tokens."""

from __future__ import annotations

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed

from accounts import selectors, services
from medease import db as db_routing
from medease.exceptions import NotAuthenticated


class BearerTokenAuthentication(BaseAuthentication):
    """Resolves the token, slides its idle expiry, and applies read-your-writes pinning."""

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
            # One cache round trip for the token's facts and its user's snapshot.
            facts, cached = selectors.token_read(raw=raw)
            # Before the user row is read: a user who just wrote reads the primary.
            db_routing.pin_if_user_wrote_recently(facts.user_id)
            user, token = selectors.token_user(facts=facts, raw=raw, cached=cached)
        except UnicodeDecodeError:
            raise AuthenticationFailed("The token is invalid.", code="invalid_token") from None
        except NotAuthenticated as exc:
            raise AuthenticationFailed(exc.message, code=exc.code) from None
        services.token_touch(token=token)
        return user, token

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'
