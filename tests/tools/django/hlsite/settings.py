"""Settings of the Django project tests/tools_django.rs migrates and writes on a live HarmonyLite cluster.

Environment:
    HL_DJANGO_DB       the SQLite database: the node's own file (required)
    HL_DJANGO_RELEASE  the release of the application code, 1 or 2 (default 2, the newest). Migrations are not
                       selected by it: `migrate` applies what its targets say. The models follow it, as the code
                       of a rolling deploy does: release 1 is the code before `library.0002` (no
                       `Book.edition`, `Book.title` at 200 characters) and before `catalog.0002` (no
                       `Entry.summary`); release 2 the code shipped with those migrations.
"""
import os

from django.core.exceptions import ImproperlyConfigured

try:
    _db = os.environ["HL_DJANGO_DB"]
except KeyError:
    raise ImproperlyConfigured("set HL_DJANGO_DB to the SQLite database of the node") from None

HL_RELEASE = int(os.environ.get("HL_DJANGO_RELEASE", "2"))
if HL_RELEASE not in (1, 2):
    raise ImproperlyConfigured(f"HL_DJANGO_RELEASE must be 1 or 2, not {HL_RELEASE}")

SECRET_KEY = "harmonylite-tests-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = []

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "library",
    "shelf",
    "catalog",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": _db,
        "OPTIONS": {
            # Seconds the driver waits for a lock (the node's applier holds one while it writes).
            "timeout": 10,
            # BEGIN IMMEDIATE: a transaction takes the write lock (waiting up to `timeout`) before it reads, so
            # it never fails with "database is locked" when another connection wrote after its first read.
            "transaction_mode": "IMMEDIATE",
        },
    }
}

USE_TZ = True
TIME_ZONE = "Europe/Berlin"
LANGUAGE_CODE = "en-us"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
