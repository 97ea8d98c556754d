"""One Redis client object per connection pool for the whole process (django-redis).

Django keeps cache backends per request context, and django-redis builds a new
``redis.Redis`` for each new backend: under ASGI that is every request, and each build
fills a table of a few hundred response callbacks. The connection pools are already
process-wide (django-redis keeps them in a class attribute); this factory keeps the
clients on those pools too. A ``redis.Redis`` is safe to share between threads: each
command takes a connection from the pool.
"""

from __future__ import annotations

import threading

from django_redis.pool import ConnectionFactory


class SharedClientConnectionFactory(ConnectionFactory):
    """django-redis's ConnectionFactory, returning the same client for the same pool."""

    _clients: dict[tuple, object] = {}
    _clients_lock = threading.Lock()

    def get_connection(self, params):
        pool = self.get_or_create_connection_pool(params)
        # Pools live in the process-wide ConnectionFactory._pools for good: id() is stable.
        key = (id(pool), self.redis_client_cls, repr(sorted(self.redis_client_cls_kwargs.items())))
        client = self._clients.get(key)
        if client is None:
            with self._clients_lock:
                client = self._clients.get(key)
                if client is None:
                    client = self.redis_client_cls(
                        connection_pool=pool, **self.redis_client_cls_kwargs
                    )
                    self._clients[key] = client
        return client
