"""Settings for the shutdown test's web process: the product's, plus a test-only URLconf."""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "tests.workers.shutdown_urls"
