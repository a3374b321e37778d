"""The MongoDB backend's URL and database name, checked before anything connects."""

from __future__ import annotations

from urllib.parse import unquote_plus

from taskd.config import redact_url
from taskd.errors import ConfigError

_BAD_DATABASE_CHARS = frozenset('/\\. "$\0')


def parse_url(url: str, key: str, source: str | None = None) -> tuple[str, set[str]]:
    """The URL's database ("" if none) and its option names (lower case), with no DNS
    lookup for ``mongodb+srv://``; ConfigError naming ``key`` for a malformed URL."""
    from pymongo.errors import ConfigurationError, InvalidURI
    from pymongo.uri_parser import parse_uri, split_hosts, split_options

    try:
        if url.startswith("mongodb+srv://"):  # checked here; resolved when first used
            address, _, query = url.partition("://")[2].partition("?")
            hosts, _, database = address.partition("/")
            nodes = split_hosts(hosts.rpartition("@")[2], default_port=None)
            if len(nodes) != 1 or nodes[0][1] is not None:
                raise InvalidURI("mongodb+srv:// takes one host name and no port")
            options = split_options(query) if query else {}
            database = unquote_plus(database).partition(".")[0]
        else:
            parsed = parse_uri(url)
            database, options = parsed["database"] or "", parsed["options"]
    except (InvalidURI, ConfigurationError, ValueError) as exc:
        raise ConfigError(key, f"{redact_url(url)!r}: {exc}", source) from None
    return database, {name.lower() for name in options}


def check_database(name: str, key: str, source: str | None = None) -> str:
    if not name or len(name.encode()) > 63 or not _BAD_DATABASE_CHARS.isdisjoint(name):
        raise ConfigError(key, f"{name!r} is not a MongoDB database name", source)
    return name
