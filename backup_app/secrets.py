"""Keep secrets out of messages: every known secret value is replaced by ``********``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .conf import SECRET_WORDS, URL_PASSWORD
from .settings import app_settings

MASK = "********"


def _walk(value, secret: bool) -> Iterable[str]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(item, secret or bool(SECRET_WORDS.search(str(key))))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _walk(item, secret)
    elif secret and isinstance(value, str | int) and len(str(value)) >= 3:
        yield str(value)


def known_secrets() -> list[str]:
    """Secret values found in the settings: database passwords, storage keys, passphrases."""
    from django.conf import settings

    if not settings.configured:
        return []
    found: set[str] = set()
    for db in getattr(settings, "DATABASES", {}).values():
        found.update(_walk(db, False))
        found.update(_walk({"password": db.get("PASSWORD")}, False))
    options = app_settings.storage_options
    found.update(_walk(options, False))
    for text in _walk(options, True):
        found.update(m.group(2) for m in URL_PASSWORD.finditer(text) if len(m.group(2)) >= 3)
    for alias in getattr(settings, "DATABASES", {}):
        found.update(_walk(app_settings.connector_options(alias), False))
    if app_settings.gpg_passphrase:
        found.add(app_settings.gpg_passphrase)
    if getattr(settings, "EMAIL_HOST_PASSWORD", ""):
        found.add(settings.EMAIL_HOST_PASSWORD)
    return sorted(found, key=len, reverse=True)


def redact(value: object) -> str:
    """``str(value)`` on one line with every known secret masked."""
    text = " ".join(str(value).split()) if not isinstance(value, str) else value
    for secret in known_secrets():
        text = text.replace(secret, MASK)
    return " ".join(text.split())
