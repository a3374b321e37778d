"""machinery's Redis URLs, read into redis-py's connection arguments.

``redis://[[user]:password@]host:port/db`` (a bare userinfo is the password, as machinery reads
it), ``rediss://`` for TLS (its options in the query: ``taskd.tls``), and
``redis+socket://[[user:]password@]/path.sock[:/db]``. With ``redis.master_name`` the hosts
are Redis Sentinels, several separated by commas (``redis://:pw@s1:26379,s2:26379/0``), as
machinery's go-redis client takes them; the user and password are the master's.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from taskd.credentials import redact_url
from taskd.errors import ConfigError
from taskd.tls import TLS_OPTIONS, split_query

DEFAULT_PORT = 6379
SENTINEL_PORT = 26379

Address = tuple[str, int]


def connection_kwargs(url: str, key: str, source: str | None = None) -> dict[str, Any]:
    """redis-py connection arguments for a machinery Redis URL naming one server."""
    addresses, kwargs = parse_url(url, key, source)
    if len(addresses) > 1:
        raise ConfigError(
            key,
            f"{redact_url(url)!r} names several hosts: they are Redis Sentinels only with"
            " redis.master_name (taskd has no Redis Cluster support)",
            source,
        )
    if addresses:
        kwargs["host"], kwargs["port"] = addresses[0]
    return kwargs


def parse_url(
    url: str, key: str, source: str | None = None, *, default_port: int = DEFAULT_PORT
) -> tuple[list[Address], dict[str, Any]]:
    """The servers a URL names (none for a Unix socket), and redis-py's arguments for the
    rest of it: credentials, database, socket path, TLS. ConfigError names ``key``."""

    def refuse(why: str) -> ConfigError:
        return ConfigError(key, f"{redact_url(url)!r} {why}", source)

    scheme, _, rest = url.partition("://")
    userinfo, at, location = rest.rpartition("@")
    if not at:
        userinfo, location = "", rest
    username, colon, password = userinfo.partition(":")
    if not colon:  # machinery: redis://password@host
        username, password = "", userinfo
    kwargs: dict[str, Any] = {
        "username": unquote(username) or None,
        "password": unquote(password) or None,
    }
    if scheme == "redis+socket":
        path, _, db = location.partition(":")
        if not path:
            raise refuse("names no socket path")
        kwargs.update(unix_socket_path=path, db=_db(db.lstrip("/"), refuse))
        return [], kwargs
    parts = urlsplit(f"redis://{location}")
    addresses = [_address(host, default_port, refuse) for host in parts.netloc.split(",")]
    tls, unknown = split_query(url, parts.query, scheme == "rediss", key, source)
    if unknown:
        names = ", ".join(dict.fromkeys(name for name, _ in parse_qsl(unknown)))
        raise refuse(
            f"has an unknown option {names}; a Redis URL takes only the TLS options"
            f" {', '.join(TLS_OPTIONS)}"
        )
    kwargs.update(
        db=_db(parts.path.lstrip("/"), refuse), **(tls.redis_kwargs() if tls else {"ssl": False})
    )
    return addresses, kwargs


def _address(text: str, default_port: int, refuse: Any) -> Address:
    parts = urlsplit(f"redis://{text}")
    if not parts.hostname:
        raise refuse("names no host")
    try:
        return parts.hostname, parts.port or default_port
    except ValueError:
        raise refuse("has an invalid port") from None


def _db(text: str, refuse: Any) -> int:
    if not text:
        return 0
    if not text.isdigit():
        raise refuse(f"has a database {text!r} that is not a number")
    return int(text)
