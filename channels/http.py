"""What every adapter speaking HTTP to its provider shares.

- :class:`HttpSettings`: the base of such an adapter's settings, with the provider timeout
  every channel reads from ``DISPATCHER_HTTP_TIMEOUT``; :data:`HttpUrl` for a base URL.
- :func:`client`: one :class:`httpx.AsyncClient` per adapter, kept open across batches, its
  connections pooled (as many as sends run at once) and every phase under the timeout.
- :func:`request`: a call whose transport failure (no connection, a reset, a timeout) is a
  :class:`~channels.base.TransientError` with ``code="timeout"`` or ``"network"``, raised with
  nothing chained: an httpx error quotes the request URL, which may hold a token.

What the provider *answers* stays each adapter's to classify.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any

import httpx
from pydantic import AfterValidator, Field

from channels.base import TransientError
from channels.settings import ChannelSettings

# Sends in flight share one pool; the pipeline runs up to DISPATCHER_SEND_CONCURRENCY at once.
POOL_SIZE = 64


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value.rstrip("/")


# A provider's base URL: http(s) only, without a trailing slash.
HttpUrl = Annotated[str, AfterValidator(_http_url)]


class HttpSettings(ChannelSettings):
    """Settings of an adapter that calls its provider over HTTP."""

    http_timeout: float = Field(
        default=15.0,
        gt=0,
        validation_alias="DISPATCHER_HTTP_TIMEOUT",
        description="Provider HTTP timeout, in seconds (every HTTP channel).",
    )


def client(
    *,
    timeout: float,
    pool_size: int = POOL_SIZE,
    headers: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """A pooled client: connecting, sending, reading and waiting for a pooled connection each
    give up after ``timeout`` seconds."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        limits=httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size),
        headers=headers,
        transport=transport,
    )


def transport_error(
    provider: str, exc: BaseException, scrub: Callable[[str], str] | None = None
) -> TransientError:
    """The :class:`TransientError` a failed HTTP exchange with ``provider`` is."""
    name = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return TransientError(f"{provider} timed out: {name}", code="timeout")
    detail = f"{name}: {exc}" if str(exc) else name
    if scrub is not None:
        detail = scrub(detail)
    return TransientError(f"{provider} unreachable: {detail[:300]}", code="network")


async def request(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    provider: str,
    scrub: Callable[[str], str] | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """``http.request(method, url, **kwargs)``; a transport failure raises
    :func:`transport_error`'s answer. Any HTTP status is returned, for the adapter to judge."""
    failure: TransientError
    try:
        return await http.request(method, url, **kwargs)
    except (httpx.HTTPError, OSError) as exc:
        failure = transport_error(provider, exc, scrub)
    # Raised outside the except block, so no httpx exception (and no URL) is chained to it.
    raise failure
