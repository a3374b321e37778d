"""The Memcache servers of one result backend: which one holds a key, and calls on it.

Keys are spread by rendezvous hashing, pymemcache's own with HashClient's node names, so they
stay where earlier releases (which used HashClient) put them, and a server joining or leaving
the URL moves only its share. Not HashClient itself: after a connection error it answers
from defaults for a while (a stored state read as missing, a write's result None), then
drops the server and hashes its keys to the others, where they are not. A result backend
must fail instead, so that workers ride the outage out and waiting clients see an error,
not a wrong answer.

A connection the server closed (memcached's ``idle_timeout``, a proxy's idle limit, a
restart) fails the next call on it. Such a call is made once more, on a fresh connection:
every call the backend makes is safe to repeat (sets and deletes write the same again; a
failed ``add`` or ``cas`` leads to a fresh read and merge; a chord claim tells its own
claimant yes again).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

# Calls on a single key, routed to the server that holds it.
SINGLE_KEY_CALLS = frozenset({"add", "cas", "delete", "get", "gets", "incr", "replace", "set"})


class Servers:
    """``servers.gets(key)`` and the other SINGLE_KEY_CALLS of pymemcache's client, and
    ``get_many``, each on the server holding the key, over a pool of connections each."""

    def __init__(self, servers: Sequence[tuple[str, int]], **client_options: Any) -> None:
        from pymemcache.client.base import PooledClient
        from pymemcache.client.rendezvous import RendezvousHash
        from pymemcache.exceptions import MemcacheUnexpectedCloseError

        self._clients = {
            f"{host}:{port}": PooledClient((host, port), **client_options) for host, port in servers
        }
        self._ring = RendezvousHash(nodes=list(self._clients))
        # The errors of a connection the server closed since its last call.
        self._stale = (MemcacheUnexpectedCloseError, BrokenPipeError, ConnectionResetError)

    def __getattr__(self, call: str) -> Callable[..., Any]:
        if call not in SINGLE_KEY_CALLS:
            raise AttributeError(call)
        return partial(self._on_key, call)

    def server_of(self, key: str) -> str:
        """``host:port`` of the server that holds ``key``."""
        return self._ring.get_node(key)

    def _on_key(self, call: str, key: str, *args: Any, **kwargs: Any) -> Any:
        client = self._clients[self.server_of(key)]
        return self._again_if_stale(getattr(client, call), key, *args, **kwargs)

    def get_many(self, keys: Sequence[str]) -> dict[Any, Any]:
        """What is stored under ``keys``, one request per server holding some of them."""
        by_server: dict[str, list[str]] = defaultdict(list)
        for key in keys:
            by_server[self.server_of(key)].append(key)
        found: dict[Any, Any] = {}
        for node, batch in by_server.items():
            found.update(self._again_if_stale(self._clients[node].get_many, batch))
        return found

    def _again_if_stale(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except self._stale:  # the pool dropped that connection: the next one is new
            return call(*args, **kwargs)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
