"""TLS options in the query of a ``rediss://``, ``amqps://`` or ``memcaches://`` URL, the same
for every driver.

The names are redis-py's (and Celery's): ``ssl_ca_certs`` (a PEM bundle of CAs to trust instead
of the system's), ``ssl_ca_path`` (a directory of them), ``ssl_certfile`` and ``ssl_keyfile`` (a
client certificate, for a server that asks for one), ``ssl_cert_reqs`` (``required``, the
default; ``optional``; ``none``: the server's certificate is not checked at all) and
``ssl_check_hostname`` (``true``, the default; ``false``: any name the CA vouched for). Files are
checked when the driver is built, so ``taskd check-config`` names a missing one.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from taskd.credentials import redact_url
from taskd.errors import ConfigError

CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass(frozen=True, slots=True)
class TLSOptions:
    ssl_ca_certs: str | None = None
    ssl_ca_path: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: str = "required"
    ssl_check_hostname: bool = True

    @property
    def checks_hostname(self) -> bool:
        return self.ssl_check_hostname and self.ssl_cert_reqs != "none"  # none checks nothing

    def redis_kwargs(self) -> dict[str, Any]:
        """redis-py's connection arguments (they bear the same names)."""
        return {
            "ssl": True,
            "ssl_ca_certs": self.ssl_ca_certs,
            "ssl_ca_path": self.ssl_ca_path,
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
            "ssl_cert_reqs": self.ssl_cert_reqs,
            "ssl_check_hostname": self.checks_hostname,
        }

    def context(self) -> ssl.SSLContext:
        """An SSLContext that does what the options say (for pika)."""
        context = ssl.create_default_context(cafile=self.ssl_ca_certs, capath=self.ssl_ca_path)
        if self.ssl_certfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        context.check_hostname = self.checks_hostname
        context.verify_mode = CERT_REQS[self.ssl_cert_reqs]
        return context


TLS_OPTIONS = tuple(TLSOptions.__dataclass_fields__)  # the query's names for them


def split_query(
    url: str, query: str, tls: bool, key: str, source: str | None
) -> tuple[TLSOptions | None, str]:
    """The TLS options in ``query`` (None for a URL without TLS), and the rest of it, for a
    driver with options of its own; ConfigError naming ``key`` for an option a plain URL
    carries, a value that is not one, or a file that cannot be read."""
    found: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in TLS_OPTIONS:
            found[name] = value
        else:
            rest.append((name, value))

    def refuse(why: str) -> ConfigError:
        return ConfigError(key, f"{redact_url(url)!r}: {why}", source)

    if not tls:
        if found:
            scheme = url.partition("://")[0]
            raise refuse(f"{', '.join(found)}: TLS options need {scheme}s://, not {scheme}://")
        return None, urlencode(rest)
    if found.get("ssl_cert_reqs", "required") not in CERT_REQS:
        raise refuse(f"ssl_cert_reqs must be one of {', '.join(CERT_REQS)}")
    if "ssl_check_hostname" in found:
        flag = _BOOLEANS.get(found["ssl_check_hostname"].lower())
        if flag is None:
            raise refuse("ssl_check_hostname must be true or false")
        found["ssl_check_hostname"] = flag
    for name in _FILES:
        if name in found and not os.access(found[name], os.R_OK):
            raise refuse(f"{name} {found[name]!r} cannot be read")
    if "ssl_ca_path" in found and not os.path.isdir(found["ssl_ca_path"]):
        raise refuse(f"ssl_ca_path {found['ssl_ca_path']!r} is not a directory")
    if "ssl_keyfile" in found and "ssl_certfile" not in found:
        raise refuse("ssl_keyfile needs ssl_certfile (the client certificate it belongs to)")
    return TLSOptions(**found), urlencode(rest)
