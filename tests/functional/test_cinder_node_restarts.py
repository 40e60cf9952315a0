"""Cinder and the engine agree after the storage node dies under a storm of
creates (issue 12, part 1).

When a create fails, Cinder reschedules it (with one backend: back to the
same driver, same volume id) and then deletes what the failed attempt may
have left. While the node is down, that delete keeps retrying, and it used
to land after the rescheduled create and delete the new volume: Cinder
showed ``available`` volumes the engine had deleted. The drivers' deletes
now name the incarnations they are meant for (storage_engine/incarnation.py).

Real services: cinder-api, cinder-scheduler, cinder-volume (the session's,
with one more LVM-style backend on a node of this module's own, so killing
it touches no other test), RabbitMQ, MariaDB. Each round sends a burst of
``cinder create`` and SIGKILLs the node at a random instant (before the
burst, or just after it starts to land); the node comes
back the moment cinder-volume's log shows a delete retrying against it (the
timing that showed the bug), or after a random delay if none does. After
every round, once every volume has settled: each volume Cinder shows
``available`` exists in the engine, with its size, and the engine holds no
volume Cinder lacks. At the end every volume is deleted through Cinder and
the engine is empty.

``--long`` runs 12 rounds of 8 creates (default: 4 rounds of 6).
"""

import random
import re
import time

import pytest

from storage_engine import units
from tests.fixtures import node as node_mod
from tests.fixtures import waiting

BACKEND = 'se-storm'
TIMEOUT = 300.0
GiB = units.Gi
MOVING = ('creating', 'deleting', 'downloading')
# What cinder-volume logs when the driver's delete retries against the
# dead node (the client's retry warning).
RETRYING_DELETE = re.compile(
    rb'(DELETE \S+/v1/volumes/\S+|GET \S+/v1/exports\S*) failed')


@pytest.fixture(scope='module')
def storm_node(tmp_path_factory):
    node = node_mod.NodeProcess(tmp_path_factory.mktemp('storm'), 'storm',
                                pool_size='64G').start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope='module')
def storm_cinder(cinder, storm_node):
    cinder.add_backend(BACKEND, storm_node, 'lvm')
    try:
        yield cinder
    finally:
        cinder.remove_backend(BACKEND)


def _engine_volumes(node) -> dict:
    with node.client() as client:
        return {v['id']: v for v in client.volumes()}


def _settle_all(cinder, client, ids):
    def settled():
        statuses = {}
        for ident in ids:
            status = waiting.cinder_status(client, ident)
            if status in MOVING:
                return None
            statuses[ident] = status
        return statuses
    return waiting.wait_for('the storm\'s volumes settle', settled,
                            TIMEOUT, poll=0.5, logs=cinder.log_tails)


def _restart_when_a_delete_retries(cinder, node, log_from: int,
                                   rng: random.Random) -> str:
    """Start the killed node again as soon as cinder-volume logs a delete
    retrying against it (or after a random delay if none does within a
    few seconds). Returns which happened.
    """
    deadline = time.monotonic() + rng.uniform(3.0, 8.0)
    why = 'after a random delay'
    while time.monotonic() < deadline:
        with open(cinder.log_path('cinder-volume'), 'rb') as log:
            log.seek(log_from)
            if RETRYING_DELETE.search(log.read()):
                why = 'as a delete retried'
                break
        time.sleep(0.05)
    node.start()
    return why


def _check_agreement(client, node, statuses):
    engine = _engine_volumes(node)
    cinder_ids = {v.id for v in client.volumes.list()}
    for ident, status in statuses.items():
        if status == 'available':
            assert ident in engine, (
                'volume %s is available in Cinder but the engine has no '
                'such volume' % ident)
            assert engine[ident]['size'] == \
                client.volumes.get(ident).size * GiB
    strays = set(engine) - cinder_ids
    assert not strays, 'the engine holds volumes Cinder lacks: %s' % strays


def test_a_storm_of_creates_with_the_node_killed(storm_cinder, storm_node,
                                                 pytestconfig):
    cinder = storm_cinder
    client = cinder.client()
    long = pytestconfig.getoption('--long')
    rounds, burst = (12, 8) if long else (4, 6)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print('storm seed %d: %d rounds of %d creates' % (seed, rounds, burst))
    made = []
    tally = {}
    for round_ in range(rounds):
        log_from = _log_size(cinder)
        node_log = _log_size_of(storm_node.log_path)
        # Killed before the burst (every create fails and is rescheduled)
        # or at a random instant just after it starts to land (some are
        # cut off).
        early = rng.random() < 0.5
        if early:
            storm_node.kill()
        ids = [client.volumes.create(1, name='storm-%d-%d' % (round_, i),
                                     volume_type=BACKEND).id
               for i in range(burst)]
        made += ids
        if not early:
            waiting.wait_for('the burst reaches the node',
                             lambda: b'created volume' in
                             _log_since(storm_node.log_path, node_log),
                             TIMEOUT, poll=0.02, logs=cinder.log_tails)
            time.sleep(rng.uniform(0.0, 0.2))
            storm_node.kill()
        how = _restart_when_a_delete_retries(cinder, storm_node, log_from,
                                             rng)
        statuses = _settle_all(cinder, client, made)
        counts = {}
        for ident in ids:
            counts[statuses[ident]] = counts.get(statuses[ident], 0) + 1
        print('round %d: node killed %s, restarted %s; %s; rescheduled '
              'creates: %d' % (round_, 'before the burst' if early else
                               'during it', how, counts,
                               _reschedules(cinder, log_from)))
        _check_agreement(client, storm_node, statuses)
    for status in statuses.values():
        tally[status] = tally.get(status, 0) + 1
    print('storm seed %d: final statuses %s' % (seed, tally))

    # Every volume deletes through Cinder, whatever its state, and the
    # engine is left with none of them.
    for ident in made:
        client.volumes.delete(ident)
    waiting.wait_for(
        'every storm volume is deleted',
        lambda: all(waiting.cinder_status(client, i) == 'deleted'
                    for i in made), TIMEOUT, poll=0.5, logs=cinder.log_tails)
    assert _engine_volumes(storm_node) == {}


def _log_size(cinder) -> int:
    return _log_size_of(cinder.log_path('cinder-volume'))


def _log_size_of(path) -> int:
    with open(path, 'rb') as log:
        return log.seek(0, 2)


def _log_since(path, offset: int) -> bytes:
    with open(path, 'rb') as log:
        log.seek(offset)
        return log.read()


def _reschedules(cinder, offset: int) -> int:
    return _log_since(cinder.log_path('cinder-volume'),
                      offset).count(b're-scheduling')
