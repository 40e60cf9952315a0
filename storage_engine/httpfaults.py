"""Telling a request that never left from one that may have been served.

The client of the management API and the etcd metadata store both retry
transient HTTP faults, but a request that is not idempotent may only be
repeated when it cannot have reached the server: the connection was never
established. requests wraps urllib3's exception, and etcd3gw wraps requests',
so the answer is somewhere down the exception chain.
"""

from typing import Any

import requests
import urllib3


def never_sent(exc: BaseException) -> bool:
    """True if ``exc`` says the connection was never established (refused,
    no route, no name, connect timeout), so the server saw nothing.
    """
    seen = set()
    stack: list[Any] = [exc]
    while stack:
        current = stack.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        # urllib3's NewConnectionError (refused, no route, no name) is a
        # ConnectTimeoutError.
        if isinstance(current, (requests.exceptions.ConnectTimeout,
                                urllib3.exceptions.ConnectTimeoutError)):
            return True
        stack.extend((current.__cause__, current.__context__,
                      getattr(current, 'reason', None)))
        stack.extend(current.args)
    return False
