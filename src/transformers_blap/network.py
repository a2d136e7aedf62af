"""
One readable line for a failed download or upload: what was fetched or sent, where, why, and what to do.

Network failures surface from several libraries (urllib for plain downloads, huggingface_hub's HTTP client for the
Hub) as chains of wrapped exceptions several screens long; the cause a user can act on (no DNS, connection refused,
401 from the Hub) sits at the bottom of the chain.
"""

from collections.abc import Iterator

# Exception class names of the HTTP clients huggingface_hub and urllib raise when no connection could be made.
_TRANSPORT_ERROR_NAMES = {
    "ConnectError",
    "ConnectTimeout",
    "NetworkError",
    "ProxyError",
    "ReadTimeout",
    "RemoteProtocolError",
    "TimeoutException",
    "TransportError",
    "URLError",
    "OfflineModeIsEnabled",
}


def exception_chain(error: BaseException) -> Iterator[BaseException]:
    """`error`, then what it was raised from (`__cause__`, else `__context__`), down to the first exception."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_network_error(error: BaseException) -> bool:
    """Whether `error` (or what it was raised from) is a failure to reach a server: DNS, refused, timeout, proxy."""
    for link in exception_chain(error):
        if isinstance(link, (ConnectionError, TimeoutError)) or type(link).__name__ in _TRANSPORT_ERROR_NAMES:
            return True
        if type(link).__name__ == "gaierror":
            return True
    return False


def root_cause(error: BaseException) -> str:
    """The first line of the innermost exception of `error`'s chain (e.g. `[Errno -2] Name or service not known`)."""
    innermost = list(exception_chain(error))[-1]
    reason = getattr(innermost, "reason", None)  # urllib's URLError keeps the socket error here
    text = str(reason if isinstance(reason, BaseException) else innermost).strip()
    return (text.splitlines() or [type(innermost).__name__])[0]
