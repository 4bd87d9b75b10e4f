"""Broker addresses: one URL, the comma form of several hosts, or a list of URLs.

Every form means the same thing: the nodes of one broker (a cluster), tried in order, that
differ only in host and port. ``amqp://user:pass@host1:5672,host2:5673/vhost`` is the comma
form other AMQP clients accept; ``amqp://…@host1/vhost,amqp://…@host2/vhost`` and a JSON
list of URLs say the same at greater length.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import NamedTuple
from urllib.parse import SplitResult, urlsplit, urlunsplit

from sagakit._exceptions import BrokerUrlError

_SCHEMES = ("amqp", "amqps")
# A comma starts another URL only where a scheme follows; elsewhere it separates hosts.
_NEXT_URL = re.compile(r",\s*(?=amqps?://)", re.IGNORECASE)


class BrokerHost(NamedTuple):
    """One node's host and port (None: the scheme's default)."""

    host: str
    port: int | None


def broker_urls(value: str | Sequence[str]) -> tuple[str, ...]:
    """The single-host URLs named by ``value``, in order.

    Args:
        value: A URL, the comma form (``amqp://u:p@h1:5672,h2:5673/vh``), URLs separated
            by commas, a JSON list of URLs, or a sequence of any of these.

    Raises:
        BrokerUrlError: Nothing given, an unparsable address, or URLs that differ in more
            than host and port. The message never contains a password.
    """
    texts = _texts(value)
    urls: list[str] = []
    for text in texts:
        urls.extend(_expand(text))
    if not urls:
        raise BrokerUrlError("no broker URL given")
    first = _without_host(urls[0])
    for url in urls[1:]:
        if _without_host(url) != first:
            raise BrokerUrlError(
                "the broker URLs must differ only in host and port (same scheme, user, "
                f"virtual host and options): {', '.join(redacted(u) for u in urls)}"
            )
    return tuple(urls)


def broker_hosts(urls: Sequence[str]) -> tuple[BrokerHost, ...]:
    """Host and port of each of ``urls`` (single-host URLs, as ``broker_urls`` returns)."""
    hosts = []
    for url in urls:
        parts = urlsplit(url)
        hosts.append(BrokerHost(parts.hostname or "localhost", parts.port))
    return tuple(hosts)


def redacted(url: str) -> str:
    """``url`` (any form ``broker_urls`` takes) without its password, fit for logs."""
    try:
        urls = broker_urls(url)
    except BrokerUrlError:
        return _redact_one(url)
    if len(urls) == 1:
        return _redact_one(urls[0])
    first = urlsplit(urls[0])
    hosts = ",".join(_netloc_host(urlsplit(u)) for u in urls)
    return _redact_one(urlunsplit(first._replace(netloc=_userinfo(first) + hosts)))


def _texts(value: str | Sequence[str]) -> list[str]:
    if not isinstance(value, str):
        return [text for item in value for text in _texts(item)]
    text = value.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except ValueError:
            raise BrokerUrlError("the broker URL list is not valid JSON") from None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise BrokerUrlError("the broker URL list must be a JSON list of strings")
        return [t for item in items for t in _texts(item)]
    return [part for part in _NEXT_URL.split(text) if part.strip()]


def _expand(text: str) -> list[str]:
    text = text.strip()
    scheme, separator, rest = text.partition("://")
    if not separator or scheme.lower() not in _SCHEMES:
        raise BrokerUrlError(f"not an amqp:// or amqps:// URL: {_redact_one(text)!r}")
    end = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if found != -1:
            end = min(end, found)
    netloc, tail = rest[:end], rest[end:]
    # The last "@" ends the credentials: a password may contain commas, never a raw "@".
    userinfo, at, hosts = netloc.rpartition("@")
    prefix = f"{scheme}://{userinfo}{at}"
    urls = []
    for host in hosts.split(","):
        host = host.strip()
        if not host:
            raise BrokerUrlError(f"an empty host in {_redact_one(text)!r}")
        url = prefix + host + tail
        try:
            port = urlsplit(url).port
        except ValueError:
            port = -1
        if port is not None and not 0 < port < 65536:
            raise BrokerUrlError(f"{host!r} has no valid port in {_redact_one(text)!r}")
        urls.append(url)
    return urls


def _without_host(url: str) -> tuple[str, str, str, str]:
    parts = urlsplit(url)
    return (parts.scheme.lower(), _userinfo(parts), parts.path or "/", parts.query)


def _userinfo(parts: SplitResult) -> str:
    userinfo, at, _ = parts.netloc.rpartition("@")
    return userinfo + at


def _netloc_host(parts: SplitResult) -> str:
    return parts.netloc.rpartition("@")[2]


def _redact_one(url: str) -> str:
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    end = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if found != -1:
            end = min(end, found)
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    if not colon:
        return url
    return f"{scheme}://{user}:***@{hosts}{tail}" if user else f"{scheme}://***@{hosts}{tail}"
