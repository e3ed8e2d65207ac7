"""Keep secrets out of every record and every line runner prints.

A storage URL (``postgresql://user:PASSWORD@host/db``) or a tracking URI
(``https://user:PASSWORD@host``) may carry a password. Everything that leaves
the process as text (MLflow tags and artifacts, the saved config, log lines,
error messages, the end-of-sweep summary) goes through this module first.

The password is dropped, not masked: ``postgresql://user@host/db`` still works
when the password comes from ``PGPASSWORD`` or ``~/.pgpass`` (libpq reads them),
so a recorded URL or command stays reusable and holds nothing secret.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# ``scheme://user:secret@``: the secret is everything up to the last ``@`` before the host, because a
# hand-written password often holds an unescaped ``@`` or ``/``. When unsure, drop more, never less.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^\s:/@'\"]*):(?P<secret>[^\s'\"]*)@")
_SECRET_KEYS = {"password", "passwd", "pwd", "token", "access_token", "secret", "api_key", "apikey"}
# ``?password=...`` in a query (libpq accepts it) or any other secret-named parameter.
_SECRET_PARAM = re.compile(r"(?P<key>[?&;](?:" + "|".join(_SECRET_KEYS) + r")=)[^&;\s'\"]*", re.IGNORECASE)
_PLAIN_SCHEMES = ("http", "https", "file", "s3", "gs", "ftp", "wasbs", "abfss")
# Terminal control sequences and other non-printing characters a name or tag from a store could carry.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def redact_url(url: str) -> str:
    """``url`` without its password or secret query parameters; never shown raw, even when unparsable.

    The text scrub runs first: a hand-written password with a raw ``@`` or ``/`` in it
    fools a URL parser into taking part of it for the host. Then the URL is parsed
    (SQLAlchemy's ``make_url`` for databases, ``urllib.parse`` for the rest) to drop
    what a scrub of the text cannot see for sure, such as ``?password=`` in a query.
    """
    cleaned = redact_text(url)
    if "://" not in cleaned:
        return cleaned
    try:
        if cleaned.split("://", 1)[0].split("+", 1)[0].lower() in _PLAIN_SCHEMES:
            parts = urlsplit(cleaned)
            query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _secret(k)])
            return urlunsplit(parts._replace(query=query))
        from sqlalchemy.engine import make_url

        parsed = make_url(cleaned)
        query = {k: v for k, v in parsed.query.items() if not _secret(k)}
        # render_as_string(hide_password=True) would show "***"; no password at all stays usable.
        return parsed._replace(password=None).set(query=query).render_as_string(hide_password=False)
    except Exception:  # noqa: BLE001 - whatever a broken URL raises, the text scrub above already applied
        return cleaned


def redact_text(text: str) -> str:
    """Any text (a command line, an error message, a YAML file) with every URL's password removed."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['key']}***", text)


def _secret(key: str) -> bool:
    return key.lower() in _SECRET_KEYS


def redact_argv(argv: list[str]) -> list[str]:
    """A command line without secrets, argument by argument (``--storage URL`` and ``--storage=URL``)."""
    return [redact_text(arg) for arg in argv]


def printable(text: object) -> str:
    """``text`` safe for a terminal: no password, no escape sequences or other control characters."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", redact_text(str(text)))


class RedactingFilter(logging.Filter):
    """A logging filter that removes passwords from each record's final message.

    Installed on runner's log handler, so no log line (ours or a library's) shows a password,
    whichever module formatted it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact_text(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
