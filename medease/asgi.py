"""Django's ASGI handler, with the middleware chain and the view in one thread hand-off.

Django's own handler builds the chain for the event loop. Our views are synchronous (DRF)
and so is most middleware: Django's own (security, sessions, common, CSRF, auth, messages,
clickjacking) are "sync and async capable" through ``MiddlewareMixin``, whose async path
runs every ``process_request``/``process_view``/``process_response`` hook in its own
``sync_to_async`` call, and WhiteNoise is sync only. On the loop that is a dozen thread
hand-offs per request, or, with one sync-only middleware in the chain, hops back and forth
between the loop and the worker thread (docs/performance.md, "Where the time goes").

Here the chain is built in sync mode (as under WSGI) and the whole of it runs in one
``sync_to_async`` call: one hand-off per request, as for a bare view. Context variables
(the request state of medease.context, the active time zone) are set and read inside that
one thread, so they reach the view as they would under WSGI.
"""

from __future__ import annotations

from asgiref.sync import markcoroutinefunction, sync_to_async
from django.core.handlers.asgi import ASGIHandler


class OneHopASGIHandler(ASGIHandler):
    """ASGIHandler whose middleware chain is synchronous and runs in one worker thread."""

    def load_middleware(self, is_async: bool = False) -> None:
        # Sync mode whatever the caller asks: every hook and the view are called directly.
        super().load_middleware(is_async=False)

    async def get_response_async(self, request):
        # thread_sensitive: the same per-request thread (ThreadSensitiveContext) that later
        # closes the response, so the request's database connection is the one released.
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)


class ProtocolRouter:
    """Channels' ProtocolTypeRouter without a coroutine of its own per connection.

    ``__call__`` hands the server the protocol's application's coroutine to await instead
    of awaiting it in a frame of its own: a frame that would stay suspended for a
    websocket's whole life (about 0.3 KiB per idle socket; docs/performance.md, "Handshakes
    and idle sockets"). Still an ASGI 3 application to servers and test clients.
    """

    def __init__(self, application_mapping: dict) -> None:
        self.application_mapping = application_mapping

    @markcoroutinefunction
    def __call__(self, scope, receive, send):
        application = self.application_mapping.get(scope["type"])
        if application is None:
            raise ValueError(f"No application configured for scope type {scope['type']!r}")
        return application(scope, receive, send)
