"""Docent settings, read from the environment.

Development defaults are safe to run on a laptop; `DJANGO_ENV=production` turns on the production mode, which
refuses to start without a real SECRET_KEY and ALLOWED_HOSTS and passes `manage.py check --deploy`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


DJANGO_ENV = env("DJANGO_ENV", "development").lower()
PRODUCTION = DJANGO_ENV == "production"
# pytest sets PYTEST_VERSION for the whole session (pytest >= 8.2), in this process and the ones it spawns.
TESTING = "PYTEST_VERSION" in os.environ or "pytest" in sys.modules

_DEV_SECRET_KEY = "django-insecure-docent-dev-only-key-never-use-in-production-0123456789"
SECRET_KEY = env("SECRET_KEY", "" if PRODUCTION else _DEV_SECRET_KEY)
DEBUG = env_bool("DEBUG", not PRODUCTION)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "" if PRODUCTION else "127.0.0.1,localhost,testserver,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
CSRF_FAILURE_VIEW = "config.api.csrf_failure"

if PRODUCTION:
    if not SECRET_KEY or SECRET_KEY == _DEV_SECRET_KEY or SECRET_KEY.startswith("django-insecure") or len(
        set(SECRET_KEY)
    ) < 5 or len(SECRET_KEY) < 50:
        raise ImproperlyConfigured(
            "DJANGO_ENV=production needs SECRET_KEY: a random string of at least 50 characters "
            "(python -c 'import secrets; print(secrets.token_urlsafe(64))')."
        )
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured("DJANGO_ENV=production needs ALLOWED_HOSTS, e.g. ALLOWED_HOSTS=docent.example.com")
    if DEBUG:
        raise ImproperlyConfigured("DEBUG must be off in production (unset DEBUG or set DEBUG=0).")

DATA_DIR = Path(env("DATA_DIR", str(BASE_DIR / "var"))).resolve()
MEDIA_ROOT = DATA_DIR / "uploads"
MEDIA_URL = "/media/"
PORT = env_int("PORT", 8000)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "servestatic",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "config",
    "accounts",
    "billing",
    "documents",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "servestatic.middleware.ServeStaticMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "config.middleware.RatelimitMiddleware",
    "config.middleware.ContentSecurityPolicyMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = None

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
                "config.context_processors.navigation",
            ],
        },
    },
]

# Database: DATABASE_URL as given, or the embedded PostgreSQL 18 + pgvector under DATA_DIR.
DATABASE_URL = env("DATABASE_URL")
if not DATABASE_URL:
    from config.embedded_db import embedded_database_url

    DATABASE_URL = embedded_database_url(DATA_DIR)

import dj_database_url  # noqa: E402

# Tests run workers and the ASGI server in threads of the test process: connections must close after each
# task/request so the test database can be flushed and dropped.
DATABASES = {
    "default": dj_database_url.parse(DATABASE_URL, conn_max_age=0 if TESTING else env_int("DB_CONN_MAX_AGE", 60))
}
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# Under ASGI every sync view and middleware runs on a thread of its own request, so a persistent connection is
# never reused and each page would open (and Postgres fork) a new one: ~15 ms of CPU between the two processes
# on every request, which is most of what a page costs under load. psycopg's pool hands each request a warm
# connection instead (Django then closes = returns it at the end of every request; CONN_MAX_AGE must be 0).
# Off in tests, which flush and drop their database between sessions.
DB_POOL_MAX_SIZE = env_int("DB_POOL_MAX_SIZE", 0 if TESTING else 20)
if DB_POOL_MAX_SIZE:
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"]["pool"] = {
        "min_size": min(2, DB_POOL_MAX_SIZE),
        "max_size": DB_POOL_MAX_SIZE,
        "timeout": env_int("DB_POOL_TIMEOUT_SECONDS", 30),
        # A process idle this long gives back its extra connections, down to min_size.
        "max_idle": 300,
    }
# Threads a process runs its async code's database calls on (consumers, async views): each keeps a connection,
# so keep this well under DB_POOL_MAX_SIZE, which also serves the sync views' per-request threads.
ASYNC_DB_THREADS = env_int("ASYNC_DB_THREADS", 8)
# A socket directory given as ?host=… belongs in HOST, where Django and its tools look for it.
DATABASES["default"]["HOST"] = DATABASES["default"]["OPTIONS"].pop("host", DATABASES["default"]["HOST"])
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


REDIS_URL = env("REDIS_URL", "redis://127.0.0.1:6379/0")
if TESTING:
    # Tests share the developer's Redis server but never their data, nor another test session's.
    from config.isolation import database_name_for_tests, redis_url_for_tests

    REDIS_URL = redis_url_for_tests(REDIS_URL)
    DATABASES["default"]["TEST"] = {"NAME": database_name_for_tests(DATABASES["default"]["NAME"], REDIS_URL)}

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "docent",
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    }
}

CHANNEL_LAYERS = {
    "default": {
        # The pub/sub layer keeps one connection per process instead of a pool per channel, so hundreds of
        # sockets in one process do not exhaust connections.
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL]},
    }
}

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
if TESTING:
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "home"

EMAIL_BACKEND = env(
    "EMAIL_BACKEND",
    "django.core.mail.backends.smtp.EmailBackend" if PRODUCTION else "django.core.mail.backends.console.EmailBackend",
)
EMAIL_HOST = env("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", "Docent <noreply@localhost>")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = Path(env("STATIC_ROOT", str(DATA_DIR / "static")))
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "servestatic.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# Serve static files straight from the apps in development, so no collectstatic step is needed.
SERVESTATIC_USE_FINDERS = not PRODUCTION
SERVESTATIC_AUTOREFRESH = DEBUG

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.APIKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "config.api.Pagination",
    "PAGE_SIZE": 20,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "config.api.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Docent API",
    "DESCRIPTION": (
        "Upload documents, search them, and chat with an LLM about them. Authenticate with a Docent API key: "
        "`Authorization: Bearer dk_...`.\n\nAn OpenAI-compatible API is served at `/v1/` (`POST /v1/chat/completions`, "
        "`POST /v1/embeddings`, `GET /v1/models`): point the official OpenAI SDKs at `https://<this host>/v1` with a "
        "Docent API key, and answers are grounded in your documents. Docent's options go in a `docent` request field "
        "(`retrieval`, `document_ids`, `store`); citations come back in a `docent` response field."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The interactive docs' JavaScript and CSS come from the drf-spectacular-sidecar package: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Swagger UI would otherwise send the schema to validator.swagger.io from the reader's browser.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    # The streaming (SSE) chat endpoints are async Django views that drf-spectacular cannot see.
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "chat.openapi.sse_endpoints"],
}

# django-ratelimit: brute-force protection for log-in and API-key authentication.
RATELIMIT_VIEW = "accounts.views.ratelimited"
RATELIMIT_USE_CACHE = "default"
LOGIN_RATE = env("LOGIN_RATE", "10/m")
# New accounts per client address: each comes with the free plan's quota, so unlimited sign-ups would multiply it.
SIGNUP_RATE = env("SIGNUP_RATE", "10/h")
API_KEY_FAILURE_RATE = env("API_KEY_FAILURE_RATE", "20/m")

# Celery: two queues, sized for their work (see the Makefile / docker-compose for the worker commands).
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_DEFAULT_QUEUE = "ingest"
CELERY_TASK_ROUTES = {"documents.tasks.*": {"queue": "ingest"}, "chat.tasks.*": {"queue": "llm"}}
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 30 * 60)
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 25 * 60)
CELERY_RESULT_EXPIRES = 3600
# One result backend per process, not one per thread: the llm worker runs 200 task threads, and each built its own
# (~0.8 ms of CPU, under the GIL, on its first task: in a burst of questions, on almost every one). redis-py's
# client and its connection pool are thread-safe.
CELERY_RESULT_BACKEND_THREAD_SAFE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# acks_late tasks are redelivered if unacked for this long; longer than any task may run.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 2 * 3600}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
INGEST_CONCURRENCY = env_int("INGEST_CONCURRENCY", 2)
LLM_CONCURRENCY = env_int("LLM_CONCURRENCY", 200)

# Uploads
MAX_UPLOAD_MB = env_int("MAX_UPLOAD_MB", 50)
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024

# ---- documents (owned by documents/) ----
EMBEDDING_BACKEND = env("EMBEDDING_BACKEND", "local")  # local | openai
EMBEDDING_MODEL = env(
    "EMBEDDING_MODEL", "all-MiniLM-L6-v2" if EMBEDDING_BACKEND == "local" else "text-embedding-3-small"
)
EMBEDDING_DIMENSIONS = env_int("EMBEDDING_DIMENSIONS", 384 if EMBEDDING_BACKEND == "local" else 1536)
EMBEDDING_BATCH_SIZE = env_int("EMBEDDING_BATCH_SIZE", 64)
EMBEDDING_CACHE_DIR = Path(env("EMBEDDING_CACHE_DIR", str(DATA_DIR / "models")))
CHUNK_TOKENS = env_int("CHUNK_TOKENS", 200 if EMBEDDING_BACKEND == "local" else 400)
CHUNK_OVERLAP_TOKENS = env_int("CHUNK_OVERLAP_TOKENS", CHUNK_TOKENS * 15 // 100)
INGEST_MAX_PAGES = env_int("INGEST_MAX_PAGES", 2000)
INGEST_STUCK_AFTER_SECONDS = env_int("INGEST_STUCK_AFTER_SECONDS", 15 * 60)
INGEST_MAX_ATTEMPTS = env_int("INGEST_MAX_ATTEMPTS", 3)
SEARCH_DEFAULT_K = 8
SEARCH_MAX_K = 50
# Chunks written per COPY transaction; each batch is also a progress step.
INGEST_STORE_BATCH = env_int("INGEST_STORE_BATCH", 64)
# Database sessions storing each batch at once (HNSW inserts take a core per session); see documents.services.ingest.
# Tests default to one: most of them ingest inside a test transaction that another session cannot see.
INGEST_STORE_CONNECTIONS = env_int("INGEST_STORE_CONNECTIONS", 1 if TESTING else 2)
INGEST_RETRY_BACKOFF_SECONDS = env_int("INGEST_RETRY_BACKOFF_SECONDS", 30)
INGEST_SWEEP_EVERY_SECONDS = env_int("INGEST_SWEEP_EVERY_SECONDS", 60)
# Progress is saved and pushed when it moved this many points, or this long after the last push.
INGEST_PROGRESS_STEP = 2
INGEST_PROGRESS_SECONDS = 0.5
# Per-list candidates fused by RRF, and the HNSW knobs for filtered (per-owner) scans.
SEARCH_CANDIDATES = env_int("SEARCH_CANDIDATES", 50)
# RRF's k: 60 is the constant of the original paper, for fusing many runs. With two lists a smaller k lets
# each list's top hits count more; on SQuAD (see `manage.py bench documents.retrieval`) k=10 gives answer
# recall@5 0.957 against 0.944 for k=60, and it wins on each half of the articles alike.
SEARCH_RRF_K = env_int("SEARCH_RRF_K", 10)
# HNSW ef_search for a filtered walk: SEARCH_EF_SEARCH while the searched chunks are at least SEARCH_EF_SHARE of
# the table, growing in proportion as they are fewer, up to SEARCH_EF_SEARCH_MAX (see documents.search).
SEARCH_EF_SEARCH = env_int("SEARCH_EF_SEARCH", 200)
SEARCH_EF_SEARCH_MAX = env_int("SEARCH_EF_SEARCH_MAX", 1_000)
SEARCH_EF_SHARE = float(env("SEARCH_EF_SHARE", "0.15"))
SEARCH_SCAN_MEM_MULTIPLIER = env_int("SEARCH_SCAN_MEM_MULTIPLIER", 8)
# How many nearest chunks a filtered HNSW walk returns (at least k); see documents.search.vector_candidate_count.
SEARCH_ANN_CANDIDATES = env_int("SEARCH_ANN_CANDIDATES", 10)
SEARCH_MAX_SCAN_TUPLES = env_int("SEARCH_MAX_SCAN_TUPLES", 50_000)
# Owners with at most this many searchable chunks are scanned exactly through the owner btree (a few ms);
# bigger ones go through HNSW with an iterative scan.
SEARCH_EXACT_MAX_CHUNKS = env_int("SEARCH_EXACT_MAX_CHUNKS", 5_000)
# Words found in more chunks than this are left out of the keyword half (near stop words; bounded latency).
SEARCH_KEYWORD_MAX_DF = env_int("SEARCH_KEYWORD_MAX_DF", 5_000)
# How many chunks the keyword half reads at most: those holding the question's rarest words, rarest first (the
# commoner words are left out of the score). On SQuAD, 1,000 and 2,000 rank identically; at 1M chunks each
# row read is a random heap page.
SEARCH_KEYWORD_CANDIDATE_ROWS = env_int("SEARCH_KEYWORD_CANDIDATE_ROWS", 1_000)
CELERY_BEAT_SCHEDULE = {
    "documents-requeue-stuck": {
        "task": "documents.tasks.requeue_stuck_documents",
        "schedule": float(INGEST_SWEEP_EVERY_SECONDS),
        # Behind busy ingest workers, a sweep not run before the next one is due is dropped, not piled up.
        "options": {"expires": float(INGEST_SWEEP_EVERY_SECONDS)},
    },
}
# ---- end documents ----

# ---- chat (owned by chat/) ----
OPENAI_API_KEY = env("OPENAI_API_KEY")
OPENAI_BASE_URL = env("OPENAI_BASE_URL")
OPENAI_TIMEOUT_SECONDS = float(env("OPENAI_TIMEOUT_SECONDS", "60"))
OPENAI_CONNECT_TIMEOUT_SECONDS = float(env("OPENAI_CONNECT_TIMEOUT_SECONDS", "5"))
# Retries happen only before the first token (429, 5xx, connection errors); after it a retry would repeat text.
OPENAI_MAX_RETRIES = env_int("OPENAI_MAX_RETRIES", 2)
OPENAI_RETRY_BACKOFF_SECONDS = float(env("OPENAI_RETRY_BACKOFF_SECONDS", "0.5"))
OPENAI_RETRY_MAX_WAIT_SECONDS = float(env("OPENAI_RETRY_MAX_WAIT_SECONDS", "8"))
# The extractive provider answers offline from retrieved sentences; it is the default until an LLM is configured.
LLM_PROVIDER = env("LLM_PROVIDER", "openai" if (OPENAI_API_KEY or OPENAI_BASE_URL) else "extractive")
LLM_MODEL = env("LLM_MODEL", "gpt-4o-mini" if LLM_PROVIDER == "openai" else "extractive")
# Answer length: 0 takes the model's default_max_tokens from billing's ModelPrice table.
CHAT_MAX_TOKENS = env_int("CHAT_MAX_TOKENS", 0)
# Prompt size cap whatever the model's window (the reservation charged up front grows with it).
CHAT_MAX_PROMPT_TOKENS = env_int("CHAT_MAX_PROMPT_TOKENS", 8000)
CHAT_CONTEXT_TOKENS = env_int("CHAT_CONTEXT_TOKENS", 3000)
CHAT_RETRIEVAL_K = env_int("CHAT_RETRIEVAL_K", 8)
# An answer whose database or Redis work failed runs again after 1, 2, 4, 8 and 16 s (see chat/tasks.py).
CHAT_TASK_MAX_RETRIES = env_int("CHAT_TASK_MAX_RETRIES", 5)
# The longest an answer may stream; the model is then stopped and the part received kept (error `timeout`).
CHAT_ANSWER_MAX_SECONDS = float(env("CHAT_ANSWER_MAX_SECONDS", "600"))
CHAT_TASK_RETRY_BACKOFF_SECONDS = float(env("CHAT_TASK_RETRY_BACKOFF_SECONDS", "1"))
CHAT_MAX_QUESTION_CHARS = env_int("CHAT_MAX_QUESTION_CHARS", 8000)
# Events of one answer stay in Redis this long after it ends, for late and reconnecting clients.
CHAT_STREAM_TTL_SECONDS = env_int("CHAT_STREAM_TTL_SECONDS", 900)
CHAT_SSE_HEARTBEAT_SECONDS = float(env("CHAT_SSE_HEARTBEAT_SECONDS", "15"))
# POST /api/v1/chat/ without `Accept: text/event-stream` waits this long for the finished answer, then answers
# 202 with the answer so far and a Location to follow the rest (the answer itself carries on).
CHAT_API_WAIT_SECONDS = float(env("CHAT_API_WAIT_SECONDS", "300"))
# How often a long stream renews its concurrency slot with billing (the slot lapses after 120 s without).
CHAT_SLOT_HEARTBEAT_SECONDS = float(env("CHAT_SLOT_HEARTBEAT_SECONDS", "30"))
# A streaming answer's worker renews its lease at least three times within this; an answer whose lease ran out
# lost its worker (killed, out of memory) and the stuck sweep closes it with what it streamed. Without the
# sweep it would wait for the broker's visibility timeout (2 h) to be delivered again.
CHAT_ANSWER_LEASE_SECONDS = env_int("CHAT_ANSWER_LEASE_SECONDS", 120)
# A pending answer no worker has taken for this long (a lost broker message) is sent again, once per period.
CHAT_ANSWER_QUEUE_SECONDS = env_int("CHAT_ANSWER_QUEUE_SECONDS", 300)
# ... and closed with an error once it has waited this long (the asker has stopped waiting; its stream is gone).
CHAT_ANSWER_GIVE_UP_SECONDS = env_int("CHAT_ANSWER_GIVE_UP_SECONDS", 1800)
CHAT_SWEEP_EVERY_SECONDS = env_int("CHAT_SWEEP_EVERY_SECONDS", 60)
CELERY_BEAT_SCHEDULE["chat-recover-stuck"] = {
    "task": "chat.tasks.recover_stuck_answers",
    "schedule": float(CHAT_SWEEP_EVERY_SECONDS),
    # On the llm queue: behind a backlog of questions a few sweeps may wait, but not pile up for good.
    "options": {"expires": float(5 * CHAT_SWEEP_EVERY_SECONDS)},
}
CHAT_CANCEL_POLL_SECONDS = float(env("CHAT_CANCEL_POLL_SECONDS", "0.2"))
# Threads (each with its own DB connection) doing an llm worker's database work and retrieval.
CHAT_WORKER_DB_THREADS = env_int("CHAT_WORKER_DB_THREADS", 6)
# ---- end chat ----

# ---- billing (owned by billing/) ----
STRIPE_SECRET_KEY = env("STRIPE_SECRET_KEY")
STRIPE_WEBHOOK_SECRET = env("STRIPE_WEBHOOK_SECRET")
# A Stripe-compatible API base (e.g. stripe-mock at http://localhost:12111); empty = api.stripe.com.
STRIPE_API_BASE = env("STRIPE_API_BASE")
# Signed webhooks older than this are refused as replays.
STRIPE_WEBHOOK_TOLERANCE_SECONDS = env_int("STRIPE_WEBHOOK_TOLERANCE_SECONDS", 300)
BILLING_LIMITER_KEY_PREFIX = env("BILLING_LIMITER_KEY_PREFIX", "docent:lim:")
# Length of the requests-per-minute and tokens-per-minute windows.
BILLING_RATE_WINDOW_SECONDS = float(env("BILLING_RATE_WINDOW_SECONDS", "60"))
# A stream that neither finishes nor heartbeats for this long (a killed worker) loses its concurrency slot.
BILLING_SLOT_TTL_SECONDS = float(env("BILLING_SLOT_TTL_SECONDS", "120"))
BILLING_QUOTA_WARNING_PERCENT = env_int("BILLING_QUOTA_WARNING_PERCENT", 80)
# How long a process reuses a user's subscription, limits and the model prices when admitting LLM calls
# (a change saved in this process applies at once; other processes see it within this many seconds). Tests
# edit rows behind the ORM's back, as an admin's SQL would, and expect the change at once: 0 there.
BILLING_LIMITS_CACHE_SECONDS = float(env("BILLING_LIMITS_CACHE_SECONDS", "0" if TESTING else "5"))
# ---- end billing ----

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
    SECURE_REFERRER_POLICY = "same-origin"
    X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
