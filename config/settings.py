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
from urllib.parse import urlsplit

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
    # Before the admin: its admin/index.html (the console's home with the front desk's links)
    # extends the admin's own.
    "frontdesk",
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
    # TOTP for clinicians; recovery codes are accounts' own device (hashed, docs/operations.md).
    "django_otp",
    "django_otp.plugins.otp_totp",
    "medease",
    "accounts",
    "consultations",
    "messaging",
    "workers",
    "attachments",
    "visits",
]

MIDDLEWARE = [
    "medease.middleware.RequestIdMiddleware",
    "medease.metrics.PrometheusMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "medease.middleware.ApiBodySizeMiddleware",
    # Outside CommonMiddleware, whose slash-appending redirect must still happen first.
    "medease.middleware.DebugNotFoundMiddleware",
    "medease.db.ReadYourWritesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # request.user.is_verified(): the console session passed the second factor.
    "django_otp.middleware.OTPMiddleware",
    "medease.middleware.ConsoleTimezoneMiddleware",
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
# How long a read waits for a replica connection (connect and pool checkout) before it
# uses the primary instead: a dead replica must cost little, not the primary's timeout.
DATABASE_REPLICA_TIMEOUT = _positive_float("DATABASE_REPLICA_TIMEOUT", 2.0)
# Set when DATABASE_URL points at PgBouncer in transaction mode (docs/scaling.md).
DATABASE_DISABLE_SERVER_SIDE_CURSORS = env.bool(
    "DATABASE_DISABLE_SERVER_SIDE_CURSORS", default=False
)


def _postgres_config(url: str, *, alias: str, replica: bool = False) -> dict:
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
            "timeout": DATABASE_REPLICA_TIMEOUT if replica else DATABASE_POOL_TIMEOUT,
        },
    }
    # Behind PgBouncer in transaction mode a named cursor would not survive its transaction.
    config["DISABLE_SERVER_SIDE_CURSORS"] = DATABASE_DISABLE_SERVER_SIDE_CURSORS
    if replica:
        # libpq rounds connect_timeout to whole seconds (minimum 2).
        config["OPTIONS"].setdefault("connect_timeout", max(2, round(DATABASE_REPLICA_TIMEOUT)))
        # The pool checks a replica connection before handing it out, so one that died
        # with its server is replaced instead of failing the read.
        config["CONN_HEALTH_CHECKS"] = True
    return config


if DATABASE_URL:
    DATABASES = {"default": _postgres_config(DATABASE_URL, alias="DATABASE_URL")}
    for _index, _url in enumerate(DATABASE_REPLICA_URLS, start=1):
        _replica = _postgres_config(_url, alias=f"DATABASE_REPLICA_URLS[{_index}]", replica=True)
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
# How often each process probes its replicas' reachability and lag (keep it at most half
# of MAX_REPLICA_LAG: lag is measured to within one interval).
REPLICA_CHECK_INTERVAL = _positive_float("REPLICA_CHECK_INTERVAL", 1.0)
# Tests only: responses say how many queries ran on each database alias (X-DB-Queries)
# and whether that connection was a replica (X-DB-Recovery). Never in production.
DB_ROUTING_DIAGNOSTICS = env.bool("DB_ROUTING_DIAGNOSTICS", default=False)

# --- Cache, rate limits, channel layer ---------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
CACHE_SOCKET_TIMEOUT = _positive_float("CACHE_SOCKET_TIMEOUT", 0.5)
# After a Redis connection error or timeout, this process skips that Redis for this long
# instead of paying a timeout on every cache call (medease/cache.py); 0 turns it off.
CACHE_CIRCUIT_BREAKER_SECONDS = env.float("CACHE_CIRCUIT_BREAKER_SECONDS", default=3.0)
if CACHE_CIRCUIT_BREAKER_SECONDS < 0:
    raise ImproperlyConfigured("CACHE_CIRCUIT_BREAKER_SECONDS must be 0 or more.")

if REDIS_URL:
    _redis_options = {
        "SOCKET_CONNECT_TIMEOUT": CACHE_SOCKET_TIMEOUT,
        "SOCKET_TIMEOUT": CACHE_SOCKET_TIMEOUT,
        "REDIS_CLIENT_CLASS": "medease.cache.CircuitBreakerRedis",
        # One client object per pool for the process, not one per request (docs/performance.md).
        "CONNECTION_FACTORY": "medease.redis_clients.SharedClientConnectionFactory",
    }
    CACHES = {
        # Hot reads: a Redis outage degrades to the database instead of failing requests.
        "default": {
            # django-redis's RedisCache, one per process (medease/redis_clients.py).
            "BACKEND": "medease.redis_clients.SharedRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "medease",
            "OPTIONS": {**_redis_options, "IGNORE_EXCEPTIONS": True},
        },
        # Rate-limit counters: errors must surface so each limit decides to fail open or
        # closed (see medease/ratelimit.py and docs/adr/0003-rate-limits.md).
        "ratelimit": {
            "BACKEND": "medease.redis_clients.SharedRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "medease",
            "OPTIONS": {**_redis_options, "IGNORE_EXCEPTIONS": False},
        },
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

# --- Audit write path (docs/adr/0007-audit-write-path.md) -------------------------------
# "stream": a request appends its audit events to a Redis Stream (one XADD, before the
# response) and `manage.py audit_flush` moves them into PostgreSQL in batches; "sync": one
# INSERT per call. An event inside a transaction always joins it, and a Redis failure
# falls back to the synchronous INSERT. The stream needs a Redis that persists (AOF) and
# never evicts, which the cache's Redis is not: AUDIT_REDIS_URL names it explicitly (it may
# be REDIS_URL's server when that one is configured so), and its presence turns the stream
# on. See docs/operations.md, "Audit log".
AUDIT_REDIS_URL = env.str("AUDIT_REDIS_URL", default="")
AUDIT_WRITE_PATH = env.str("AUDIT_WRITE_PATH", default="stream" if AUDIT_REDIS_URL else "sync")
if AUDIT_WRITE_PATH not in ("sync", "stream"):
    raise ImproperlyConfigured('AUDIT_WRITE_PATH must be "sync" or "stream".')
if AUDIT_WRITE_PATH == "stream" and not AUDIT_REDIS_URL:
    raise ImproperlyConfigured('AUDIT_WRITE_PATH="stream" needs AUDIT_REDIS_URL.')
AUDIT_STREAM_KEY = env.str("AUDIT_STREAM_KEY", default="medease:audit")
AUDIT_STREAM_SOCKET_TIMEOUT = _positive_float("AUDIT_STREAM_SOCKET_TIMEOUT", 0.5)
# The flusher: events per INSERT, how long one read waits for new events, and how long an
# entry may sit unacknowledged with a consumer before another flusher claims it.
AUDIT_FLUSH_BATCH = _positive_int("AUDIT_FLUSH_BATCH", 500)
AUDIT_FLUSH_BLOCK_MS = _positive_int("AUDIT_FLUSH_BLOCK_MS", 1000)
AUDIT_FLUSH_CLAIM_IDLE_SECONDS = _positive_float("AUDIT_FLUSH_CLAIM_IDLE_SECONDS", 30.0)
# After a batch smaller than AUDIT_FLUSH_BATCH the flusher waits this long before reading
# again, so that under light load it writes a few events per transaction, not one (0: no wait).
AUDIT_FLUSH_LINGER_MS = env.int("AUDIT_FLUSH_LINGER_MS", default=100)
if AUDIT_FLUSH_LINGER_MS < 0:
    raise ImproperlyConfigured("AUDIT_FLUSH_LINGER_MS must be 0 or more.")

RATELIMIT_USE_CACHE = "ratelimit"
RATELIMIT_ENABLE = env.bool("RATELIMIT_ENABLE", default=True)
# Proxies whose X-Forwarded-For is believed (comma list of IPs or CIDRs). Empty trusts
# none, not even loopback; the client is the right-most untrusted hop (medease.ratelimit).
TRUSTED_PROXIES = env.list("TRUSTED_PROXIES", default=[])
for _proxy in TRUSTED_PROXIES:
    import ipaddress  # only this setting needs it

    try:
        ipaddress.ip_network(_proxy, strict=False)
    except ValueError as _exc:
        raise ImproperlyConfigured(
            f"TRUSTED_PROXIES: {_proxy!r} is not an IP address or network (e.g. 10.0.0.0/8)."
        ) from _exc
RATE_LIMITS = {
    # name: (rate, fail_open when the cache is unreachable)
    "login_account": (env.str("RATE_LOGIN_ACCOUNT", default="10/15m"), False),
    "login_ip": (env.str("RATE_LOGIN_IP", default="100/15m"), False),
    "register_ip": (env.str("RATE_REGISTER_IP", default="200/h"), False),
    "booking_user": (env.str("RATE_BOOKING_USER", default="30/h"), True),
    "message_user": (env.str("RATE_MESSAGE_USER", default="20/10s"), True),
    "api_user": (env.str("RATE_API_USER", default="1200/m"), True),
    # Wrong MFA codes per account (API and console share it), on top of django-otp's own
    # exponential back-off per device.
    "mfa_user": (env.str("RATE_MFA_USER", default="10/15m"), False),
}

# --- Authentication ----------------------------------------------------------------------
# Django's ModelBackend, loading the session's user with what the console's MFA gate reads.
AUTHENTICATION_BACKENDS = ["accounts.backends.AccountsBackend"]
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
# Token look-ups are cached this long in the shared cache (0 turns the cache off); a
# revoked token is tombstoned there at once (docs/adr/0002-api-tokens.md).
TOKEN_CACHE_SECONDS = env.int("TOKEN_CACHE_SECONDS", default=60)
if TOKEN_CACHE_SECONDS < 0:
    raise ImproperlyConfigured("TOKEN_CACHE_SECONDS must be 0 or more.")
# last_used_at is written at most this often per token, so reads stay reads.
TOKEN_TOUCH_INTERVAL = timedelta(seconds=_positive_int("TOKEN_TOUCH_INTERVAL_SECONDS", 60))
# Multi-factor authentication (accounts/mfa.py): the name authenticator apps show, how long
# the password step's mfa_token (API) or pending console login lasts, and how many
# single-use recovery codes a user gets.
OTP_TOTP_ISSUER = env.str("OTP_TOTP_ISSUER", default="MedEase")
MFA_TOKEN_SECONDS = _positive_int("MFA_TOKEN_SECONDS", 300)
MFA_RECOVERY_CODES = _positive_int("MFA_RECOVERY_CODES", 10)

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
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.BearerTokenAuthentication",
        # The visit page's session (CSRF enforced), for its own consultation's call, chat
        # and websocket ticket only: never the console's session, never other endpoints.
        "visits.session.VisitSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        # A clinic's mfa_required: its clinicians enrol before anything else.
        "accounts.permissions.MfaEnrolled",
    ],
    "DEFAULT_PAGINATION_CLASS": "medease.pagination.CursorPagination",
    # DRF's JSON, written by orjson (medease/renderers.py).
    "DEFAULT_RENDERER_CLASSES": ["medease.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["medease.parsers.JSONParser"],
    "DEFAULT_THROTTLE_CLASSES": ["medease.ratelimit.ApiUserThrottle"],
    "EXCEPTION_HANDLER": "medease.exceptions.api_exception_handler",
    # Tags, paged lists and error answers of every operation: medease/schema.py.
    "DEFAULT_SCHEMA_CLASS": "medease.schema.AutoSchema",
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
    # The visit page's session (visits/session.py) is that page's, not a client contract.
    "AUTHENTICATION_WHITELIST": ["accounts.authentication.BearerTokenAuthentication"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "medease.schema.postprocess",
    ],
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
    "filters": {
        "request_id": {"()": "medease.logging.RequestIdFilter"},
        "redact": {"()": "medease.logging.RedactSecretsFilter"},
    },
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
            "filters": ["request_id", "redact"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "daphne": {"level": "WARNING"},
        # Route uvicorn's own lines through our handler: JSON, and tickets redacted.
        "uvicorn": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}

# --- Clinic core (consultations) ---------------------------------------------------------
# How many days ahead the beat job keeps slots materialized.
SLOTS_MATERIALIZE_DAYS = _positive_int("SLOTS_MATERIALIZE_DAYS", 28)
# Cached open slots expire after this even without an invalidation (a safety net).
SLOTS_CACHE_SECONDS = _positive_int("SLOTS_CACHE_SECONDS", 60)
# The widest start..end window the slots endpoint answers.
SLOTS_MAX_WINDOW_DAYS = _positive_int("SLOTS_MAX_WINDOW_DAYS", 31)
DASHBOARD_CACHE_SECONDS = _positive_int("DASHBOARD_CACHE_SECONDS", 30)
PROVIDERS_CACHE_SECONDS = _positive_int("PROVIDERS_CACHE_SECONDS", 300)
# Patients may cancel or reschedule until this many minutes before the start (0: until it).
CONSULTATION_CANCEL_CUTOFF_MINUTES = env.int("CONSULTATION_CANCEL_CUTOFF_MINUTES", default=0)
if CONSULTATION_CANCEL_CUTOFF_MINUTES < 0:
    raise ImproperlyConfigured("CONSULTATION_CANCEL_CUTOFF_MINUTES must be 0 or more.")
# A scheduled consultation never started this many minutes after its end is a no-show.
CONSULTATION_NO_SHOW_GRACE_MINUTES = _positive_int("CONSULTATION_NO_SHOW_GRACE_MINUTES", 15)
# A walk-in entry still waiting after this many minutes expires.
QUEUE_ENTRY_STALE_MINUTES = _positive_int("QUEUE_ENTRY_STALE_MINUTES", 240)
# The wait estimate is the median of this many recent consultations within this many days.
QUEUE_WAIT_HISTORY = _positive_int("QUEUE_WAIT_HISTORY", 20)
QUEUE_WAIT_HISTORY_DAYS = _positive_int("QUEUE_WAIT_HISTORY_DAYS", 30)

# --- Notifications -----------------------------------------------------------------------
# The outbox (workers/): retries, the lease that recovers a row whose worker died mid-send,
# the sweeper and reminders. workers/services.py explains how these make delivery
# exactly-once; the checks below refuse combinations that would break that argument.
NOTIFICATION_MAX_ATTEMPTS = _positive_int("NOTIFICATION_MAX_ATTEMPTS", 6)
# Backoff after failed attempt n: min(MAX, BASE * 2**(n-1)), jittered down to half of it.
NOTIFICATION_RETRY_BASE_SECONDS = _positive_float("NOTIFICATION_RETRY_BASE_SECONDS", 30.0)
NOTIFICATION_RETRY_MAX_SECONDS = _positive_float("NOTIFICATION_RETRY_MAX_SECONDS", 3600.0)
# Hard time limit of one delivery task (the soft limit is 80% of it). The SMTP timeout must
# fit inside the soft limit, and the lease must outlast the hard limit: a worker that is
# alive is never mistaken for a dead one.
NOTIFICATION_TASK_TIME_LIMIT = _positive_float("NOTIFICATION_TASK_TIME_LIMIT", 60.0)
NOTIFICATION_LEASE_SECONDS = _positive_float("NOTIFICATION_LEASE_SECONDS", 300.0)
EMAIL_TIMEOUT = _positive_float("EMAIL_TIMEOUT", 20.0)
# The sweeper's period; rows whose delivery task has not shown up this long after it was
# enqueued (broker down at commit time, message lost) are enqueued again; rows per run.
NOTIFICATION_SWEEP_SECONDS = _positive_float("NOTIFICATION_SWEEP_SECONDS", 60.0)
NOTIFICATION_RENUDGE_SECONDS = _positive_float("NOTIFICATION_RENUDGE_SECONDS", 120.0)
NOTIFICATION_SWEEP_BATCH = _positive_int("NOTIFICATION_SWEEP_BATCH", 500)
# The reminders job's period and how many consultations one run handles (catch-up after
# downtime proceeds in batches instead of one flood).
NOTIFICATION_REMINDERS_SECONDS = _positive_float("NOTIFICATION_REMINDERS_SECONDS", 60.0)
NOTIFICATION_REMINDERS_BATCH = _positive_int("NOTIFICATION_REMINDERS_BATCH", 500)
# At most one unread-messages email per consultation and participant in this window.
NOTIFICATION_UNREAD_WINDOW_SECONDS = _positive_int("NOTIFICATION_UNREAD_WINDOW_SECONDS", 900)
# Absolute base URL of the web front end, for every link in e-mails and notifications. Set
# it wherever links are rendered (the worker too): its own PORT is not the web's.
SITE_URL = env.str("SITE_URL", default=f"http://127.0.0.1:{PORT}").rstrip("/")
_site = urlsplit(SITE_URL)
try:
    _site_port_ok = _site.port is None or _site.port > 0
except ValueError:
    _site_port_ok = False
if (
    _site.scheme not in ("http", "https")
    or not _site.hostname
    or _site.path
    or _site.query
    or _site.fragment
    or _site.username is not None
    or not _site_port_ok
):
    raise ImproperlyConfigured(
        "SITE_URL must be an http(s) URL with a host and no path, query or credentials, "
        f"e.g. https://clinic.example.org, got {SITE_URL!r}."
    )
# Nothing is enqueued with a countdown longer than this (retries, deferred deliveries);
# work due later is left to the sweeper. With a Redis broker an unacknowledged message is
# redelivered after the visibility timeout, which must therefore exceed every countdown.
CELERY_MAX_COUNTDOWN_SECONDS = _positive_float("CELERY_MAX_COUNTDOWN_SECONDS", 600.0)
CELERY_BROKER_VISIBILITY_TIMEOUT = _positive_float("CELERY_BROKER_VISIBILITY_TIMEOUT", 7200.0)
# On SIGTERM a worker lets running tasks finish for this long, then hands them back to the
# broker; 0 hands them back at once. Keep it well under the supervisor's stop timeout
# (`make run`: 10 s in all; systemd: TimeoutStopSec).
CELERY_WORKER_SOFT_SHUTDOWN_SECONDS = env.float("CELERY_WORKER_SOFT_SHUTDOWN_SECONDS", default=2.0)
if not 0 <= CELERY_WORKER_SOFT_SHUTDOWN_SECONDS <= 300:
    raise ImproperlyConfigured(
        "CELERY_WORKER_SOFT_SHUTDOWN_SECONDS must be between 0 and 300, got "
        f"{CELERY_WORKER_SOFT_SHUTDOWN_SECONDS!r}."
    )
# Prefix for every broker key in Redis, to share one Redis database between deployments.
CELERY_BROKER_KEY_PREFIX = env.str("CELERY_BROKER_KEY_PREFIX", default="")
# One OpenAPI name for the notification kinds (the list and the preferences share them).
SPECTACULAR_SETTINGS.setdefault("ENUM_NAME_OVERRIDES", {})["NotificationKindEnum"] = (
    "workers.models.NotificationKind"
)

if NOTIFICATION_LEASE_SECONDS <= NOTIFICATION_TASK_TIME_LIMIT:
    raise ImproperlyConfigured(
        "NOTIFICATION_LEASE_SECONDS must exceed NOTIFICATION_TASK_TIME_LIMIT, or a slow but "
        "live delivery could be taken over and the email sent twice."
    )
if EMAIL_TIMEOUT >= NOTIFICATION_TASK_TIME_LIMIT * 0.8:
    raise ImproperlyConfigured(
        "EMAIL_TIMEOUT must be below the delivery task's soft time limit "
        "(80% of NOTIFICATION_TASK_TIME_LIMIT)."
    )
if CELERY_BROKER_VISIBILITY_TIMEOUT <= CELERY_MAX_COUNTDOWN_SECONDS:
    raise ImproperlyConfigured(
        "CELERY_BROKER_VISIBILITY_TIMEOUT must exceed CELERY_MAX_COUNTDOWN_SECONDS, or Redis "
        "redelivers scheduled tasks before they are due."
    )

# --- Attachments -------------------------------------------------------------------------
# Files live in object storage, never in the database (attachments/, docs/scaling.md
# "Storage"). Unset STORAGE_URL: the filesystem under VAR_DIR/attachments with URLs MedEase
# signs itself. Set: any S3-compatible store, e.g.
# s3+http://KEY:SECRET@127.0.0.1:8333/bucket?region=us-east-1 (s3:// or s3+https:// for TLS).
STORAGE_URL = env.str("STORAGE_URL", default="")


def _storage_url_config(url: str) -> dict:
    from urllib.parse import parse_qs, unquote, urlsplit

    parts = urlsplit(url)
    schemes = {"s3": "https", "s3+https": "https", "s3+http": "http"}
    bucket = parts.path.strip("/")
    try:
        port = parts.port
    except ValueError as exc:
        raise ImproperlyConfigured(f"STORAGE_URL: bad port in {parts.netloc!r}.") from exc
    if parts.scheme not in schemes or not parts.hostname or not bucket or "/" in bucket:
        raise ImproperlyConfigured(
            "STORAGE_URL must look like s3://KEY:SECRET@host[:port]/bucket?region=REGION "
            "(s3+http:// for a store without TLS)."
        )
    if not parts.username or not parts.password:
        raise ImproperlyConfigured("STORAGE_URL needs the access key and secret: s3://KEY:SECRET@…")
    netloc = parts.hostname if port is None else f"{parts.hostname}:{port}"
    return {
        "endpoint_url": f"{schemes[parts.scheme]}://{netloc}",
        "bucket": bucket,
        "access_key": unquote(parts.username),
        "secret_key": unquote(parts.password),
        "region": parse_qs(parts.query).get("region", ["us-east-1"])[0],
    }


ATTACHMENT_STORAGE = _storage_url_config(STORAGE_URL) if STORAGE_URL else None
ATTACHMENT_DIR = VAR_DIR / "attachments"
# Signed URLs are valid this long: the client starts its upload/download within it.
ATTACHMENT_UPLOAD_URL_SECONDS = _positive_int("ATTACHMENT_UPLOAD_URL_SECONDS", 300)
ATTACHMENT_DOWNLOAD_URL_SECONDS = _positive_int("ATTACHMENT_DOWNLOAD_URL_SECONDS", 120)
ATTACHMENT_MAX_BYTES = _positive_int("ATTACHMENT_MAX_BYTES", 20 * 1024 * 1024)
ATTACHMENT_TYPES = env.list(
    "ATTACHMENT_TYPES", default=["application/pdf", "image/jpeg", "image/png", "text/plain"]
)
# Total bytes one organization may keep (pending and ready files), default 200 GiB.
ATTACHMENT_ORG_QUOTA_BYTES = _positive_int("ATTACHMENT_ORG_QUOTA_BYTES", 200 * 1024**3)
# Uploads never completed are removed this long after they were requested.
ATTACHMENT_PENDING_TTL_SECONDS = _positive_int("ATTACHMENT_PENDING_TTL_SECONDS", 24 * 60 * 60)
ATTACHMENT_CLEANUP_SECONDS = _positive_int("ATTACHMENT_CLEANUP_SECONDS", 60 * 60)
# Dotted path to a malware scanner called on completion (attachments/scanning.py says what
# it receives and returns); the default accepts every file.
ATTACHMENT_SCANNER = env.str("ATTACHMENT_SCANNER", default="attachments.scanning.accept_all")
if ATTACHMENT_PENDING_TTL_SECONDS <= ATTACHMENT_UPLOAD_URL_SECONDS:
    raise ImproperlyConfigured(
        "ATTACHMENT_PENDING_TTL_SECONDS must exceed ATTACHMENT_UPLOAD_URL_SECONDS, or an "
        "upload still in flight could be removed."
    )

# --- Messaging ---------------------------------------------------------------------------
# Chat (messaging/): websocket tickets, frame and rate limits, presence, offline
# notifications, partitions, and the channel layer the chat fans out through.
# A websocket ticket is single use and valid this long after POST ws-ticket.
MESSAGING_TICKET_TTL_SECONDS = _positive_int("MESSAGING_TICKET_TTL_SECONDS", 30)
# Largest inbound websocket text frame the consumer accepts (a 10,000-character body in
# UTF-8 fits); the ASGI server's own limit (Procfile --ws-max-size) caps what it buffers.
MESSAGING_WS_MAX_FRAME_BYTES = _positive_int("MESSAGING_WS_MAX_FRAME_BYTES", 64 * 1024)
# Per-connection budget of inbound events: more than EVENTS in WINDOW seconds are answered
# with an error event (the connection stays open). Sends also count against
# RATE_LIMITS["message_user"], shared with the REST send and across nodes.
MESSAGING_WS_RATE_EVENTS = _positive_int("MESSAGING_WS_RATE_EVENTS", 30)
MESSAGING_WS_RATE_WINDOW_SECONDS = _positive_float("MESSAGING_WS_RATE_WINDOW_SECONDS", 10.0)
# At most one typing event per connection is fanned out in this interval; extras are dropped.
MESSAGING_TYPING_INTERVAL_SECONDS = _positive_float("MESSAGING_TYPING_INTERVAL_SECONDS", 3.0)
# A connection's presence entry expires this long after its last heartbeat (a node that
# dies leaves no one "online" for longer); heartbeats run every third of it.
MESSAGING_PRESENCE_TTL_SECONDS = _positive_int("MESSAGING_PRESENCE_TTL_SECONDS", 30)
# A participant with no open socket gets one unread-messages notification per idle period:
# again only after they read the chat or this long after the previous one.
MESSAGING_OFFLINE_NOTIFY_SECONDS = _positive_int("MESSAGING_OFFLINE_NOTIFY_SECONDS", 3600)
# Origins (scheme://host[:port]) from which a browser may open a websocket authenticated by
# its session cookie; empty means "hosts in ALLOWED_HOSTS". Ticket connections carry no
# ambient credential, so they are accepted from any origin.
MESSAGING_WS_ALLOWED_ORIGINS = env.list("MESSAGING_WS_ALLOWED_ORIGINS", default=[])

# The web process's garbage collector (config/asgi.py): thresholds for generations 0, 1, 2.
# CPython's 700 allocations per young collection promote whatever is in flight at that
# moment into the old generation, so with thousands of sockets open a full collection
# (hundreds of milliseconds: every socket's objects walked) came every few seconds under
# load and stalled every socket's delivery. Larger batches leave the in-flight objects
# time to die young.
WEB_GC_THRESHOLDS = tuple(env.list("WEB_GC_THRESHOLDS", cast=int, default=[50_000, 20, 10]))
if len(WEB_GC_THRESHOLDS) != 3 or min(WEB_GC_THRESHOLDS) <= 0:
    raise ImproperlyConfigured(
        f"WEB_GC_THRESHOLDS must be three positive integers, got {WEB_GC_THRESHOLDS!r}."
    )

# --- Video visits ----------------------------------------------------------------------------
# WebRTC calls (visits/): media flows browser to browser; MedEase relays the signaling and
# hands out TURN credentials in the TURN REST form (coturn's use-auth-secret). No TURN_URLS:
# an empty ice_servers list (the embedded default, loopback only).
TURN_URLS = env.list("TURN_URLS", default=[])
TURN_SECRET = env.str("TURN_SECRET", default="")
if TURN_URLS and not TURN_SECRET:
    raise ImproperlyConfigured("TURN_URLS is set but TURN_SECRET (the static auth secret) is not.")
for _turn_url in TURN_URLS:
    if not _turn_url.startswith(("turn:", "turns:", "stun:")):
        raise ImproperlyConfigured(f"TURN_URLS: {_turn_url!r} is not a turn:, turns: or stun: URL.")
# How long handed-out TURN credentials stay valid.
TURN_TTL_SECONDS = _positive_int("TURN_TTL_SECONDS", 3600)
# Largest call.signal payload (its "data", as JSON) relayed; larger ones answer too_large.
VISIT_SIGNAL_MAX_BYTES = _positive_int("VISIT_SIGNAL_MAX_BYTES", 64 * 1024)
# A patient who never joined the video call this long after the scheduled end is a no-show.
VISIT_NO_SHOW_GRACE_MINUTES = _positive_int("VISIT_NO_SHOW_GRACE_MINUTES", 15)
# A join link in a reminder e-mail (visits/links.py) works until this long after the
# visit's scheduled end.
VISIT_LINK_SECONDS = _positive_int("VISIT_LINK_SECONDS", 24 * 60 * 60)
# The visit page offers only relayed (TURN) candidates to its RTCPeerConnection; for tests
# and for networks that must never expose peer addresses (a page's ?relay=1 does the same).
VISIT_ICE_RELAY_ONLY = env.bool("VISIT_ICE_RELAY_ONLY", default=False)
# Monthly message partitions (PostgreSQL) kept ready ahead of the current month.
MESSAGING_PARTITION_MONTHS_AHEAD = _positive_int("MESSAGING_PARTITION_MONTHS_AHEAD", 3)
# A fan-out that takes longer than this is abandoned (the message is stored; clients
# resync with ?after=), so a hung channel layer never holds up a send.
MESSAGING_FANOUT_TIMEOUT_SECONDS = _positive_float("MESSAGING_FANOUT_TIMEOUT_SECONDS", 2.0)

# The channel layer may live on its own Redis (CHANNEL_LAYER_REDIS_URL, default REDIS_URL).
# CHANNEL_LAYER_BACKEND picks channels_redis' list-based layer ("core") or its pub/sub
# layer ("pubsub"); docs/adr/0005-chat-transport.md has the figures behind the default.
CHANNEL_LAYER_REDIS_URL = env.str("CHANNEL_LAYER_REDIS_URL", default="") or REDIS_URL
CHANNEL_LAYER_BACKEND = env.str("CHANNEL_LAYER_BACKEND", default="core")
# Pending events one channel may hold (core layer): all sockets of a process share one
# Redis queue, and each socket has a local buffer of the same size. Above it events are
# dropped, never silently: the sockets concerned are closed with 4408 and replay with
# ?after= (messaging.events.ChatChannelLayer, docs/adr/0005-chat-transport.md).
CHANNEL_LAYER_CAPACITY = _positive_int("CHANNEL_LAYER_CAPACITY", 1000)
# Redis connections per process for the layer. The pool waits (up to 10 s) for a free one
# rather than failing, so a burst of group_discard calls (thousands of sockets closing at
# once) queues instead of raising MaxConnectionsError.
CHANNEL_LAYER_MAX_CONNECTIONS = _positive_int("CHANNEL_LAYER_MAX_CONNECTIONS", 100)
# Read timeout of the layer's Redis connections. It must exceed the 5 s blocking pop
# (BZPOPMIN) of channels_redis' receive loop: redis-py 8 defaults socket_timeout to 5 s,
# which tears down every idle consumer every few seconds (django/channels_redis#422).
CHANNEL_LAYER_SOCKET_TIMEOUT = _positive_float("CHANNEL_LAYER_SOCKET_TIMEOUT", 15.0)
if CHANNEL_LAYER_SOCKET_TIMEOUT <= 5:
    raise ImproperlyConfigured(
        "CHANNEL_LAYER_SOCKET_TIMEOUT must exceed channels_redis' 5 s blocking receive."
    )
if CHANNEL_LAYER_BACKEND not in ("core", "pubsub"):
    raise ImproperlyConfigured("CHANNEL_LAYER_BACKEND must be 'core' or 'pubsub'.")
if CHANNEL_LAYER_REDIS_URL:
    _layer_hosts = [
        {
            "address": CHANNEL_LAYER_REDIS_URL,
            "socket_timeout": CHANNEL_LAYER_SOCKET_TIMEOUT,
            # A Redis that is down is noticed at once, not after the read timeout.
            "socket_connect_timeout": 2,
        }
    ]
    if CHANNEL_LAYER_BACKEND == "pubsub":
        CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                "CONFIG": {"hosts": _layer_hosts, "prefix": "medease:asgi"},
            }
        }
    else:
        CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "messaging.events.ChatChannelLayer",
                "CONFIG": {
                    "hosts": _layer_hosts,
                    "prefix": "medease:asgi",
                    "capacity": CHANNEL_LAYER_CAPACITY,
                    "max_connections": CHANNEL_LAYER_MAX_CONNECTIONS,
                },
            }
        }
else:
    # Embedded mode (no Redis): one process, so an in-memory layer is enough.
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
