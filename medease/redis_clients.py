"""One Redis cache backend and client per configuration for the whole process (django-redis).

Django keeps cache backends per request context, and django-redis builds a new backend,
client wrapper and ``redis.Redis`` for each: under ASGI (a new thread and context per
request) that is every request, and building a ``redis.Redis`` fills a table of a few
hundred response callbacks (0.3-0.8 ms of CPU per request for our two caches, measured).
The connection pools are already process-wide (django-redis keeps them in a class
attribute); ``SharedRedisCache`` and ``SharedClientConnectionFactory`` keep the backend
and the client on those pools too. Both are safe to share between threads: a command
takes a connection from the pool, and the backend holds no per-request state.
"""

from __future__ import annotations

import threading

from django_redis.cache import RedisCache
from django_redis.pool import ConnectionFactory


class SharedRedisCache(RedisCache):
    """django-redis's RedisCache, built once per (location, parameters) in the process."""

    _instances: dict[tuple, SharedRedisCache] = {}
    _instances_lock = threading.Lock()

    def __new__(cls, server, params):
        key = (cls, repr(server), repr(params))
        instance = cls._instances.get(key)
        if instance is None:
            with cls._instances_lock:
                instance = cls._instances.get(key)
                if instance is None:
                    instance = super().__new__(cls)
                    RedisCache.__init__(instance, server, params)
                    cls._instances[key] = instance
        return instance

    def __init__(self, server, params) -> None:
        # Python calls __init__ on whatever __new__ returns: the instance is set up already
        # (once, in __new__), and setting it up again would drop its client.
        pass


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
