"""ASGI entry point: HTTP through Django, websockets through Channels."""

import gc
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Django must be set up before the websocket stack imports models (what
# get_asgi_application does, with our handler: one thread hand-off per request).
django.setup(set_prefix=False)

from django.conf import settings  # noqa: E402

from medease.asgi import OneHopASGIHandler, ProtocolRouter  # noqa: E402

django_asgi_app = OneHopASGIHandler()

from medease.middleware import BodyLengthMiddleware  # noqa: E402
from messaging.middleware import ChatAuthMiddleware  # noqa: E402
from messaging.routing import ChatRouter, websocket_urlpatterns  # noqa: E402

# What start-up made lives as long as the process: out of the collector's sight, so a full
# collection walks only what requests and sockets made (with 5,000 sockets open it paused
# the event loop long enough to show in delivery latency).
gc.freeze()
gc.set_threshold(*settings.WEB_GC_THRESHOLDS)  # why: config/settings.py

application = ProtocolRouter(
    {
        # A chunked body gets its Content-Length here, or a 413 (medease/middleware.py).
        "http": BodyLengthMiddleware(django_asgi_app),
        # Authentication happens here, not in consumers: a single-use ticket from any
        # origin, or a session cookie only from allowed origins (messaging/middleware.py,
        # which loads the session itself, only for sockets without a ticket).
        "websocket": ChatAuthMiddleware(ChatRouter(websocket_urlpatterns)),
    }
)
