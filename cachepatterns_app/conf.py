"""
Read the ``CACHEPATTERNS`` settings dict, merged over the defaults.

Everything in the app reads settings through :func:`get_settings`, so tests that
use ``override_settings(CACHEPATTERNS=...)`` see their values at once: the
cached copy is dropped on Django's ``setting_changed`` signal.

Computing them is also the app's "first use": if ``cachepatterns_app`` is missing
from ``INSTALLED_APPS`` the managers and decorators still work, but its checks,
its migration and its commands silently do not, so that is said loudly, once.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

__all__ = ["DEFAULTS", "Settings", "get_settings"]

logger = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "CACHE_ALIAS": "default",
    "KEY_PREFIX": "cp",
    "DEFAULT_TTL": 3600,
    "TTL_JITTER": 0.1,
    "SERIALIZER": "json",
    "MAX_VALUE_BYTES": 1_048_576,
    "DEGRADE_ON_FAILURE": True,
    "LOCK_TIMEOUT": 10,
    "STATS": True,
    # Not in the original contract: names this deployment's databases in every key
    # (None: derived from each database's ENGINE/HOST/PORT/NAME; see identity.py).
    "DEPLOYMENT_ID": None,
    # Not in the original contract; added because an outage policy needs both numbers.
    "CIRCUIT_BREAKER": {"THRESHOLD": 1, "COOLDOWN": 5.0},
    "WRITE_BEHIND": {
        "FLUSH_INTERVAL": 5,
        "BATCH_SIZE": 500,
        "MAX_RETRIES": 8,
        "MAX_PENDING": 1_000_000,
        "ON_CACHE_FAILURE": "sync",
        # Not in the original contract: seconds an entry delivered to a worker may stay
        # unacknowledged before another worker reclaims it (the first worker died), and
        # the age of the oldest waiting write that is logged at WARNING.
        "RECLAIM_IDLE": 60,
        "WARN_AFTER": 60,
    },
    "REFRESH_AHEAD": {"FACTOR": 0.2, "XFETCH_BETA": 0.0},
}

#: Keys whose value is itself a dict of sub-settings merged over the defaults.
NESTED = ("CIRCUIT_BREAKER", "WRITE_BEHIND", "REFRESH_AHEAD")


@dataclass(frozen=True)
class Settings:
    """The effective settings, defaults filled in. Validation lives in ``checks``."""

    raw: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.raw[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def cache_alias(self) -> str:
        return str(self.raw["CACHE_ALIAS"])

    @property
    def key_prefix(self) -> str:
        return str(self.raw["KEY_PREFIX"])


def user_settings() -> dict[str, Any]:
    """Return the project's ``CACHEPATTERNS`` dict as written (empty if absent)."""
    value = getattr(settings, "CACHEPATTERNS", None)
    return value if isinstance(value, dict) else {}


def merge(user: dict[str, Any]) -> dict[str, Any]:
    """Return ``user`` merged over :data:`DEFAULTS`, nested dicts merged key by key."""
    merged = copy.deepcopy(DEFAULTS)
    for key, value in user.items():
        if key in NESTED and isinstance(value, dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the effective settings (cached until a setting changes)."""
    _warn_if_not_installed()
    return Settings(merge(user_settings()))


_warned_not_installed = False


def _warn_if_not_installed() -> None:
    global _warned_not_installed
    # Before the app registry is ready INSTALLED_APPS cannot be asked; a later
    # computation (the cache is dropped on every setting change) still can.
    if _warned_not_installed or not apps.apps_ready or apps.is_installed("cachepatterns_app"):
        return
    _warned_not_installed = True
    logger.warning(
        "cachepatterns is used but 'cachepatterns_app' is not in INSTALLED_APPS. Caching "
        "works, but none of its system checks run (a bad CACHEPATTERNS setting goes "
        "unreported), its table for invalidations that failed during a Redis outage does "
        "not exist, and its management commands are missing. Add 'cachepatterns_app' to "
        "INSTALLED_APPS and run `manage.py migrate`."
    )


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting == "CACHEPATTERNS":
        get_settings.cache_clear()
