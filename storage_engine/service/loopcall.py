"""Calling into the service's event loop from the node's worker threads.

The node's domain layer runs in worker threads; the protocol servers (NBD,
AoE) live on the service's event loop and are not thread-safe. The
exporters change them only through :func:`call`, which runs a function on
the loop and waits for its result, so that when an exporter's method
returns, the change is in effect.
"""

import asyncio
import concurrent.futures


def call(loop: asyncio.AbstractEventLoop, fn, *args):
    """Run ``fn(*args)`` on ``loop`` and return its result (or raise its
    exception). Called on the loop itself, it simply calls ``fn``.
    """
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        return fn(*args)
    done = concurrent.futures.Future()

    def run():
        try:
            done.set_result(fn(*args))
        except BaseException as exc:
            done.set_exception(exc)

    loop.call_soon_threadsafe(run)
    return done.result()
