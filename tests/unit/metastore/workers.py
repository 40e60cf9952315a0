"""Work done in the child processes of the concurrency tests.

A module of its own, without pytest, so that ``spawn`` children import
little. Each worker opens its own store, as a second service process would,
waits at a barrier so that both processes race from the same instant, runs
a few threads, and reports what it claimed and when it ran (or its
traceback) on a queue.
"""

import threading
import time
import traceback

from storage_engine import metastore

ID_PREFIX = 'volumes'
PORT_PREFIX = 'nbd-ports'
PORTS = range(10809, 10809 + 1000)


def _run(url, owner, count, threads, barrier, results, claim_many):
    try:
        with metastore.open_store(url) as store:
            per_thread = count // threads
            claims = [[] for _ in range(threads)]
            failures = []
            start = threading.Barrier(threads)

            def work(index):
                try:
                    start.wait()
                    claim_many(store, '%s/t%d' % (owner, index), per_thread,
                               claims[index])
                except BaseException:
                    failures.append(traceback.format_exc())

            workers = [threading.Thread(target=work, args=(i,))
                       for i in range(threads)]
            barrier.wait(timeout=60)
            started = time.time()
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            if failures:
                results.put((owner, 'error', failures[0]))
            else:
                results.put((owner, 'ok', {
                    'claims': [c for cs in claims for c in cs],
                    'span': (started, time.time())}))
    except BaseException:
        results.put((owner, 'error', traceback.format_exc()))


def _create_ids(store, owner, count, claimed):
    """Claim ``count`` ids by racing ``create`` along one shared sequence:
    every process and thread tries ids 0, 1, 2... and moves on when the id
    is taken, so every id is contended.
    """
    candidate = 0
    while len(claimed) < count:
        try:
            store.create('%s/%d' % (ID_PREFIX, candidate), {'owner': owner})
        except metastore.KeyExists:
            pass
        else:
            claimed.append((candidate, owner))
        candidate += 1


def _allocate_ports(store, owner, count, claimed):
    for _ in range(count):
        port = store.allocate(PORT_PREFIX, PORTS, {'owner': owner})
        claimed.append((port, owner))


def create_ids(url, owner, count, threads, barrier, results):
    _run(url, owner, count, threads, barrier, results, _create_ids)


def allocate_ports(url, owner, count, threads, barrier, results):
    _run(url, owner, count, threads, barrier, results, _allocate_ports)
