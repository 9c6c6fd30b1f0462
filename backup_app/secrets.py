"""Keep secrets out of messages: every known secret value is replaced by ``********``.

What counts as a secret is decided by :func:`backup_app.conf.redact_value` and :func:`~backup_app.conf.secret_values`
(the rules sit in ``conf`` so that the loader's own messages follow them): values of keys named like a secret
(``PASSWORD``, ``secret_key``, ``MYSQL_PWD``...), every value of a connector's ``ENV``/``DUMP_ENV``/``RESTORE_ENV``,
``-pSECRET`` / ``--password=SECRET`` in its prefixes and suffixes, URL passwords, ``AccountKey=``/``sig=`` in texts.
Here they are applied to the settings in force: :func:`known_secrets` collects the values, :func:`redact` masks
them in any text (an error, a tool's stderr, a mail).
"""

from __future__ import annotations

from .conf import MASK, secret_values
from .settings import app_settings

__all__ = ["MASK", "known_secrets", "redact"]

#: Shorter values are not masked inside texts: they would mask every such piece of any word.
MIN_LENGTH = 3


def known_secrets() -> list[str]:
    """Secret values found in the settings (databases, storage and connector options, passphrase, mail), longest
    first."""
    from django.conf import settings

    if not settings.configured:
        return []
    found: set[str] = set()
    databases = getattr(settings, "DATABASES", {})
    for alias, db in databases.items():
        found |= secret_values(db, key=alias)
        found |= secret_values({"password": db.get("PASSWORD")})
        found |= secret_values(app_settings.connector_options(alias), key="connector")
    found |= secret_values(app_settings.storage_options, key="OPTIONS")
    found |= secret_values({"passphrase": app_settings.gpg_passphrase})
    found |= secret_values({"password": getattr(settings, "EMAIL_HOST_PASSWORD", "")})
    config = app_settings.config
    if config is not None:
        for res in config.values.values():
            found |= secret_values(res.value, res.key.secret, key=res.key.name)
    found |= {s.strip() for s in found}  # as a tool may print it
    return sorted((s for s in found if len(s) >= MIN_LENGTH), key=len, reverse=True)


def redact(value: object) -> str:
    """``str(value)`` on one line with every known secret masked.

    A secret holding a line break is masked before the text is joined into one line, and each of its lines
    too: a tool that quotes the tail of a broken option (``unknown option '--Tail...'``) shows none of it.
    """
    text = str(value)
    secrets = known_secrets()
    for secret in secrets:
        text = text.replace(secret, MASK)
    pieces = {line.strip() for secret in secrets if "\n" in secret or "\r" in secret for line in secret.splitlines()}
    for piece in sorted((p for p in pieces if len(p) >= MIN_LENGTH), key=len, reverse=True):
        text = text.replace(piece, MASK)
    return " ".join(text.split())
