"""The visit page's session: who it is, and which visits it opens.

Signing in at ``/visit/sign-in/`` or through a join link does not log the user in to
Django (``request.user`` stays anonymous): it stores a grant in the session,
``{user, hash, all, consultations}``. So the grant never opens the staff console, and a
join link's grant opens that one visit only. The grant dies with a password change (the
session auth hash, as Django's own login checks) and with the user's deactivation.

``VisitSessionAuthentication`` lets the page call the API with that session, CSRF
enforced, but only the endpoints the page needs: the call and the messages of a visit
the grant covers, and ``ws-ticket``. A grant scoped to some visits (a join link's) gets
only tickets bound to one of them: a ticket for the user would open the sockets, and so
the chats, of the user's other visits.
"""

from __future__ import annotations

from django.middleware.csrf import rotate_token
from django.utils.crypto import constant_time_compare
from rest_framework import exceptions, serializers
from rest_framework.authentication import SessionAuthentication

from accounts.models import User

SESSION_KEY = "visit_grant"
# Endpoints the page calls, by URL name; those with a consultation_id must be covered.
_API_NAMES = {"consultation-call", "consultation-messages", "ws-ticket"}
_TICKET = "ws-ticket"
# As the ticket body's own field (messaging.serializers.TicketInput, above this app).
_MAX_ID = 2**63 - 1


class _ScopedTicketInput(serializers.Serializer):
    consultation = serializers.IntegerField(
        min_value=1,
        max_value=_MAX_ID,
        error_messages={
            "required": "This session opens only the visit of its link: name that visit."
        },
    )


def _grant(request) -> dict | None:
    grant = request.session.get(SESSION_KEY)
    return grant if isinstance(grant, dict) else None


def grant_user(request) -> User | None:
    """The user of the session's visit grant while it holds (active, same password)."""
    grant = _grant(request)
    if grant is None:
        return None
    user = User.objects.select_related("organization").filter(pk=grant.get("user")).first()
    if user is None or not user.is_active:
        return None
    if not constant_time_compare(str(grant.get("hash", "")), user.get_session_auth_hash()):
        return None
    return user


def grant_covers(request, consultation_id: int) -> bool:
    """Whether the session's grant opens this visit (all the user's, or this one)."""
    grant = _grant(request) or {}
    return bool(grant.get("all")) or consultation_id in grant.get("consultations", [])


def grant_all(request, *, user: User) -> None:
    """After a full sign-in: every visit of the user (a new session key: no fixation)."""
    request.session.cycle_key()
    rotate_token(request)  # as Django's login() does
    request.session[SESSION_KEY] = {
        "user": user.pk,
        "hash": user.get_session_auth_hash(),
        "all": True,
        "consultations": [],
    }


def grant_one(request, *, user: User, consultation_id: int) -> None:
    """After a join link: this visit, added to a grant of the same user, else a new one."""
    grant = _grant(request)
    if grant is None or grant.get("user") != user.pk:
        grant = {"user": user.pk, "all": False, "consultations": []}
    if consultation_id not in grant["consultations"]:
        grant["consultations"] = [*grant["consultations"], consultation_id]
    grant["hash"] = user.get_session_auth_hash()
    request.session.cycle_key()
    rotate_token(request)
    request.session[SESSION_KEY] = grant


def grant_end(request) -> None:
    """Sign out of the visit pages (the session's other contents, if any, stay)."""
    request.session.pop(SESSION_KEY, None)
    request.session.cycle_key()


class VisitSessionAuthentication(SessionAuthentication):
    """The visit page's session grant, CSRF enforced, for the page's own endpoints."""

    def authenticate(self, request):
        match = getattr(request._request, "resolver_match", None)
        if match is None or match.url_name not in _API_NAMES:
            return None
        if not hasattr(request._request, "session") or _grant(request._request) is None:
            return None
        consultation_id = match.kwargs.get("consultation_id")
        if consultation_id is not None and not grant_covers(request._request, consultation_id):
            return None
        user = grant_user(request._request)
        if user is None:
            return None
        self.enforce_csrf(request)
        if match.url_name == _TICKET:
            _ticket_scope_check(request)
        return user, None


def _ticket_scope_check(request) -> None:
    """A grant scoped to some visits asks for a ticket bound to one of them (400 without
    one, 404 for a visit outside the grant, as for someone else's)."""
    if (_grant(request._request) or {}).get("all"):
        return
    serializer = _ScopedTicketInput(data=request.data)
    serializer.is_valid(raise_exception=True)
    if not grant_covers(request._request, serializer.validated_data["consultation"]):
        raise exceptions.NotFound()
