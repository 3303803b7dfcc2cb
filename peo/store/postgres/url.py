"""PostgreSQL store URLs: ``postgresql://user@host:port/db?schema=NAME`` (no driver needed)."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

from ...errors import UsageError

__all__ = ["DEFAULT_SCHEMA", "display_url", "parse_postgres_url"]

DEFAULT_SCHEMA = "peo"
# An unquoted-style identifier; at most 59 characters so that the notification channel
# "peo_<schema>" stays within PostgreSQL's 63-byte identifier limit. "pg_" names are
# reserved for system schemas.
_SCHEMA_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,58}")


def parse_postgres_url(url: str) -> tuple[str, str, str, int]:
    """``postgresql://user@host:port/db?schema=NAME`` -> (dsn for asyncpg, schema, host, port).

    The ``schema`` option is ours and is removed from the DSN (asyncpg would send it to the
    server as a setting); every other option (sslmode...) is passed through.
    """
    parsed = urlparse(url)
    if parsed.scheme not in ("postgresql", "postgres"):
        raise UsageError(f"not a PostgreSQL store URL: {url!r} (expected postgresql://user@host:port/db)")
    query = parse_qsl(parsed.query, keep_blank_values=True)
    schemas = [v for k, v in query if k == "schema"]
    schema = schemas[-1] if schemas else DEFAULT_SCHEMA
    if not _SCHEMA_RE.fullmatch(schema) or schema.lower().startswith("pg_"):
        raise UsageError(
            f"invalid PostgreSQL schema name {schema!r}: use letters, digits and underscores"
            " (at most 59, not starting with a digit or 'pg_')"
        )
    try:
        port = parsed.port or 5432
    except ValueError:
        raise UsageError(f"invalid port in PostgreSQL store URL {url!r}") from None
    host = parsed.hostname or "localhost"
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    dsn = urlunparse(parsed._replace(query=rest))
    return dsn, schema, host, port


def display_url(url: str) -> str:
    """``url`` fit to show in a message: a password in it is replaced by ``***``."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunparse(parsed._replace(netloc=f"{user}:***@{netloc[2]}"))
