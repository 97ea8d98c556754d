"""MedEase settings, read from the environment in this one place.

With no environment variables set MedEase runs on its embedded default: SQLite under
``var/``, a local-memory cache, the in-memory channel layer and a Celery broker that needs
no server. Setting ``DATABASE_URL``, ``REDIS_URL`` and ``CELERY_BROKER_URL`` moves it onto
PostgreSQL, Redis and a real broker. A bad value stops start-up with a clear message.
"""

from __future__ import annotations

import secrets
import zoneinfo
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("MEDEASE_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

env = environ.Env()


def _positive_int(name: str, default: int) -> int:
    value = env.int(name, default=default)
    if value <= 0:
        raise ImproperlyConfigured(f"{name} must be a positive integer, got {value!r}.")
    return value


def _positive_float(name: str, default: float) -> float:
    value = env.float(name, default=default)
    if value <= 0:
        raise ImproperlyConfigured(f"{name} must be a positive number, got {value!r}.")
    return value


DEBUG = env.bool("DEBUG", default=True)
# Tests and CI set this so that a missing PostgreSQL or Redis fails the run instead of
# silently falling back to the embedded SQLite/local-memory defaults.
REQUIRE_SERVICES = env.bool("MEDEASE_REQUIRE_SERVICES", default=False)

# --- Secrets and hosts -------------------------------------------------------------------
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is required when DEBUG is off. Set it to a long random string, "
            "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(50))'`."
        )
    # Development only: a key generated once and kept under var/ so sessions survive restarts.
    _key_file = VAR_DIR / "dev-secret-key"
    if not _key_file.exists():
        _key_file.write_text(secrets.token_urlsafe(50))
    SECRET_KEY = _key_file.read_text().strip()

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[])
if not ALLOWED_HOSTS:
    if not DEBUG:
        raise ImproperlyConfigured(
            "ALLOWED_HOSTS is required when DEBUG is off: a comma-separated list of the "
            "host names MedEase is served on, e.g. `clinic.example.org`."
        )
    ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]", "testserver"]
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
PORT = _positive_int("PORT", 8000)

# --- Applications ------------------------------------------------------------------------
INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "medease",
    "accounts",
    "consultations",
    "messaging",
    "workers",
]

MIDDLEWARE = [
    "medease.middleware.RequestIdMiddleware",
    "medease.metrics.PrometheusMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "medease.middleware.ApiBodySizeMiddleware",
    "medease.db.ReadYourWritesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"
AUTH_USER_MODEL = "accounts.User"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Databases ---------------------------------------------------------------------------
DATABASE_URL = env.str("DATABASE_URL", default="")
DATABASE_REPLICA_URLS = env.list("DATABASE_REPLICA_URLS", default=[])
DATABASE_POOL_MIN_SIZE = env.int("DATABASE_POOL_MIN_SIZE", default=1)
DATABASE_POOL_MAX_SIZE = _positive_int("DATABASE_POOL_MAX_SIZE", 20)
DATABASE_POOL_TIMEOUT = _positive_float("DATABASE_POOL_TIMEOUT", 10.0)


def _postgres_config(url: str, *, alias: str) -> dict:
    config = env.db_url_config(url)
    if config["ENGINE"] not in ("django.db.backends.postgresql",):
        raise ImproperlyConfigured(
            f"{alias}: only PostgreSQL URLs (postgres://...) are supported, got {url!r}."
        )
    # Under ASGI a persistent connection per thread leaks backends (CONN_MAX_AGE > 0), so
    # connections come from psycopg's pool and go back to it at the end of each request.
    config["CONN_MAX_AGE"] = 0
    config["CONN_HEALTH_CHECKS"] = False
    config["OPTIONS"] = {
        **config.get("OPTIONS", {}),
        "pool": {
            "min_size": DATABASE_POOL_MIN_SIZE,
            "max_size": DATABASE_POOL_MAX_SIZE,
            "timeout": DATABASE_POOL_TIMEOUT,
        },
    }
    return config


if DATABASE_URL:
    DATABASES = {"default": _postgres_config(DATABASE_URL, alias="DATABASE_URL")}
    for _index, _url in enumerate(DATABASE_REPLICA_URLS, start=1):
        _replica = _postgres_config(_url, alias=f"DATABASE_REPLICA_URLS[{_index}]")
        # In tests the replica mirrors the primary's test database.
        _replica["TEST"] = {"MIRROR": "default"}
        DATABASES[f"replica{_index}"] = _replica
else:
    if REQUIRE_SERVICES:
        raise ImproperlyConfigured(
            "MEDEASE_REQUIRE_SERVICES is set but DATABASE_URL is not: refusing to fall back "
            "to SQLite."
        )
    if DATABASE_REPLICA_URLS:
        raise ImproperlyConfigured("DATABASE_REPLICA_URLS needs DATABASE_URL (PostgreSQL).")
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "medease.sqlite3",
            # Web, worker and beat share the file: WAL lets readers run beside the writer,
            # IMMEDIATE takes the write lock at BEGIN so two writers queue instead of
            # failing with "database is locked" halfway through a transaction.
            "OPTIONS": {
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            "TEST": {"NAME": VAR_DIR / "test-medease.sqlite3"},
        }
    }

DATABASE_ROUTERS = ["medease.db.PrimaryReplicaRouter"]
# After a write, the same user's requests read from the primary for this long.
READ_YOUR_WRITES_SECONDS = _positive_float("READ_YOUR_WRITES_SECONDS", 5.0)
# A replica further behind than this is skipped until it catches up.
MAX_REPLICA_LAG = _positive_float("MAX_REPLICA_LAG", 2.0)
# How long a replica that failed stays out of rotation before it is tried again.
REPLICA_RETRY_SECONDS = _positive_float("REPLICA_RETRY_SECONDS", 5.0)

# --- Cache, rate limits, channel layer ---------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
CACHE_SOCKET_TIMEOUT = _positive_float("CACHE_SOCKET_TIMEOUT", 0.5)

if REDIS_URL:
    _redis_options = {
        "SOCKET_CONNECT_TIMEOUT": CACHE_SOCKET_TIMEOUT,
        "SOCKET_TIMEOUT": CACHE_SOCKET_TIMEOUT,
    }
    CACHES = {
        # Hot reads: a Redis outage degrades to the database instead of failing requests.
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "medease",
            "OPTIONS": {**_redis_options, "IGNORE_EXCEPTIONS": True},
        },
        # Rate-limit counters: errors must surface so each limit decides to fail open or
        # closed (see medease/ratelimit.py and docs/adr/0003-rate-limits.md).
        "ratelimit": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "medease",
            "OPTIONS": {**_redis_options, "IGNORE_EXCEPTIONS": False},
        },
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": "medease:asgi"},
        }
    }
else:
    if REQUIRE_SERVICES:
        raise ImproperlyConfigured(
            "MEDEASE_REQUIRE_SERVICES is set but REDIS_URL is not: refusing to fall back to "
            "the local-memory cache."
        )
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "ratelimit": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "ratelimit",
        },
    }
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

RATELIMIT_USE_CACHE = "ratelimit"
RATELIMIT_ENABLE = env.bool("RATELIMIT_ENABLE", default=True)
# Behind a load balancer set this to the header it writes (e.g. HTTP_X_REAL_IP).
RATELIMIT_IP_META_KEY = env.str("RATELIMIT_IP_META_KEY", default="") or None
RATE_LIMITS = {
    # name: (rate, fail_open when the cache is unreachable)
    "login_account": (env.str("RATE_LOGIN_ACCOUNT", default="10/15m"), False),
    "login_ip": (env.str("RATE_LOGIN_IP", default="100/15m"), False),
    "register_ip": (env.str("RATE_REGISTER_IP", default="200/h"), False),
    "booking_user": (env.str("RATE_BOOKING_USER", default="30/h"), True),
    "message_user": (env.str("RATE_MESSAGE_USER", default="20/10s"), True),
    "api_user": (env.str("RATE_API_USER", default="1200/m"), True),
}

# --- Authentication ----------------------------------------------------------------------
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# API tokens: an idle token expires after TOKEN_IDLE_TIMEOUT, any token after
# TOKEN_ABSOLUTE_LIFETIME (see docs/adr/0002-api-tokens.md).
TOKEN_IDLE_TIMEOUT = timedelta(seconds=_positive_int("TOKEN_IDLE_TIMEOUT_SECONDS", 60 * 60))
TOKEN_ABSOLUTE_LIFETIME = timedelta(
    seconds=_positive_int("TOKEN_ABSOLUTE_LIFETIME_SECONDS", 12 * 60 * 60)
)
# last_used_at is written at most this often per token, so reads stay reads.
TOKEN_TOUCH_INTERVAL = timedelta(seconds=_positive_int("TOKEN_TOUCH_INTERVAL_SECONDS", 60))

# --- Internationalization ----------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
if TIME_ZONE not in zoneinfo.available_timezones():
    raise ImproperlyConfigured(f"TIME_ZONE {TIME_ZONE!r} is not a known IANA time zone.")
USE_I18N = True
USE_TZ = True

# --- Static files ------------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# --- Email -------------------------------------------------------------------------------
EMAIL_URL = env.str("EMAIL_URL", default="")
if EMAIL_URL:
    vars().update(env.email_url_config(EMAIL_URL))
else:
    # Embedded default: each email is written as a file under var/mail/.
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = VAR_DIR / "mail"
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="MedEase <no-reply@medease.test>")

# --- Celery ------------------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="")
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)

# --- REST framework and OpenAPI ----------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "medease.pagination.CursorPagination",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_THROTTLE_CLASSES": ["medease.ratelimit.ApiUserThrottle"],
    "EXCEPTION_HANDLER": "medease.exceptions.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "PAGE_SIZE": 20,
}
if DEBUG:
    REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"].append(
        "rest_framework.renderers.BrowsableAPIRenderer"
    )
SPECTACULAR_SETTINGS = {
    "TITLE": "MedEase API",
    "DESCRIPTION": "Telehealth clinic platform: accounts, scheduling, consultations, chat.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}
# Largest request body accepted under /api/ (answered 413 above it).
API_MAX_BODY_BYTES = _positive_int("API_MAX_BODY_BYTES", 1024 * 1024)
# Optional bearer token that /metrics requires when set.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")

# --- Security ----------------------------------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env.bool("BEHIND_TLS_PROXY", default=False) else None
)
if not DEBUG:
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=60 * 60 * 24 * 365)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
SESSION_COOKIE_AGE = _positive_int("SESSION_COOKIE_AGE", 8 * 60 * 60)

# --- Logging -----------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
LOG_FORMAT = env.str("LOG_FORMAT", default="json")
if LOG_FORMAT not in ("json", "text"):
    raise ImproperlyConfigured("LOG_FORMAT must be 'json' or 'text'.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "medease.logging.RequestIdFilter"}},
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
        "text": {"format": "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "daphne": {"level": "WARNING"},
    },
}
