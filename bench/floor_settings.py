"""Settings of the bench's floor server: the product's settings with no middleware and one URL.

Same database pool, cache and ASGI stack as the product (config.asgi is still the entry
point), so the only difference the bench measures is the product's own per-request work.
"""

from config.settings import *  # noqa: F403

MIDDLEWARE: list[str] = []
ROOT_URLCONF = "bench.floor_urls"
