"""The metadata store contract, held against both backends.

Every test here runs once on SQLite and once on a real etcd (the
``backend`` fixture), with the same assertions: a service must not be able
to tell which store it was given, except by speed.
"""

import errno
import multiprocessing
import queue

import pytest

from storage_engine import errors
from storage_engine import metastore
from tests.unit.metastore import workers

PROCESSES = 2
PER_PROCESS = 50
THREADS = 5


# -- create / get ------------------------------------------------------------

def test_create_then_get_returns_the_value_and_its_revision(store):
    revision = store.create('nodes/n1/volumes/v1', {'name': 'data', 'gb': 2})

    assert store.get('nodes/n1/volumes/v1') == (
        {'name': 'data', 'gb': 2}, revision)
    assert revision > 0


def test_create_of_an_existing_key_raises_key_exists_and_keeps_it(store):
    revision = store.create('names/data', {'id': 'v1'})

    with pytest.raises(metastore.KeyExists) as raised:
        store.create('names/data', {'id': 'v2'})

    assert isinstance(raised.value, errors.AlreadyExists)
    assert 'names/data' in str(raised.value)
    assert store.get('names/data') == ({'id': 'v1'}, revision)


def test_get_of_a_missing_key_raises_not_found(store):
    with pytest.raises(metastore.NotFound) as raised:
        store.get('nodes/n1/volumes/nope')

    assert isinstance(raised.value, errors.NotFound)
    assert raised.value.errno == errno.ENOENT
    assert 'nodes/n1/volumes/nope' in str(raised.value)


# -- put ---------------------------------------------------------------------

def test_put_without_revision_creates_then_overwrites(store):
    first = store.put('nodes/n1', {'state': 'up'})
    second = store.put('nodes/n1', {'state': 'down'})

    assert second > first
    assert store.get('nodes/n1') == ({'state': 'down'}, second)


def test_put_with_the_current_revision_swaps(store):
    revision = store.create('exports/v1', {'port': 10809})

    new = store.put('exports/v1', {'port': 10810}, expect_revision=revision)

    assert new > revision
    assert store.get('exports/v1') == ({'port': 10810}, new)


def test_put_with_a_stale_revision_raises_mismatch_and_changes_nothing(
        store):
    stale = store.create('exports/v1', {'port': 10809})
    current = store.put('exports/v1', {'port': 10810})

    with pytest.raises(metastore.RevisionMismatch) as raised:
        store.put('exports/v1', {'port': 99}, expect_revision=stale)

    assert raised.value.details['actual'] == current
    assert 'exports/v1' in str(raised.value)
    assert store.get('exports/v1') == ({'port': 10810}, current)


def test_put_expecting_revision_zero_writes_only_an_absent_key(store):
    revision = store.put('names/data', {'id': 'v1'}, expect_revision=0)

    with pytest.raises(metastore.RevisionMismatch):
        store.put('names/data', {'id': 'v2'}, expect_revision=0)

    assert store.get('names/data') == ({'id': 'v1'}, revision)


def test_put_expecting_the_revision_of_a_deleted_key_raises_mismatch(store):
    revision = store.create('names/data', {'id': 'v1'})
    store.delete('names/data')

    with pytest.raises(metastore.RevisionMismatch):
        store.put('names/data', {'id': 'v2'}, expect_revision=revision)

    with pytest.raises(metastore.NotFound):
        store.get('names/data')


def test_a_recreated_key_never_gets_a_revision_it_had_before(store):
    old = store.create('names/data', {'id': 'v1'})
    store.delete('names/data')
    new = store.create('names/data', {'id': 'v2'})

    assert new != old
    # So a compare-and-swap still holding the old revision loses (no ABA).
    with pytest.raises(metastore.RevisionMismatch):
        store.put('names/data', {'id': 'v3'}, expect_revision=old)
    assert store.get('names/data') == ({'id': 'v2'}, new)


# -- delete ------------------------------------------------------------------

def test_delete_removes_the_key(store):
    store.create('exports/v1', {'port': 1})

    store.delete('exports/v1')

    with pytest.raises(metastore.NotFound):
        store.get('exports/v1')
    assert store.list('exports') == {}


def test_delete_of_a_missing_key_raises_not_found(store):
    with pytest.raises(metastore.NotFound):
        store.delete('exports/v1')
    with pytest.raises(metastore.NotFound):
        store.delete('exports/v1', expect_revision=7)


def test_delete_with_the_current_revision_removes_the_key(store):
    revision = store.create('exports/v1', {'port': 1})

    store.delete('exports/v1', expect_revision=revision)

    assert store.list('exports') == {}


def test_delete_with_a_stale_revision_raises_mismatch_and_keeps_key(store):
    stale = store.create('exports/v1', {'port': 1})
    current = store.put('exports/v1', {'port': 2})

    for expected in (stale, 0):
        with pytest.raises(metastore.RevisionMismatch):
            store.delete('exports/v1', expect_revision=expected)

    assert store.get('exports/v1') == ({'port': 2}, current)


# -- list --------------------------------------------------------------------

def test_list_returns_the_keys_under_a_directory_prefix_only(store):
    a = store.create('nodes/n1/volumes/a', {'n': 1})
    b = store.create('nodes/n1/volumes/b', {'n': 2})
    n1 = store.create('nodes/n1', {'node': 1})
    other = store.create('nodes/n10/volumes/c', {'n': 3})

    expected = {'nodes/n1/volumes/a': ({'n': 1}, a),
                'nodes/n1/volumes/b': ({'n': 2}, b)}
    assert store.list('nodes/n1/volumes') == expected
    assert store.list('nodes/n1/volumes/') == expected
    assert store.list('nodes/n1') == expected
    assert store.list('nodes/n2') == {}
    assert store.list('') == dict(expected, **{
        'nodes/n1': ({'node': 1}, n1),
        'nodes/n10/volumes/c': ({'n': 3}, other)})


def test_keys_and_values_keep_non_ascii_text(store):
    revision = store.create('names/données', {'name': 'Zoë ✓'})

    assert store.list('names') == {'names/données': ({'name': 'Zoë ✓'},
                                                     revision)}


# -- allocate / release ------------------------------------------------------

def test_allocate_claims_the_first_free_candidate(store):
    store.create('aoe/shelf1/0', {'volume': 'manual'})

    first = store.allocate('aoe/shelf1', range(4), {'volume': 'v1'})
    second = store.allocate('aoe/shelf1', range(4), {'volume': 'v2'})

    assert (first, second) == (1, 2)
    assert {key: value for key, (value, _) in
            store.list('aoe/shelf1').items()} == {
        'aoe/shelf1/0': {'volume': 'manual'},
        'aoe/shelf1/1': {'volume': 'v1'},
        'aoe/shelf1/2': {'volume': 'v2'}}


def test_allocate_takes_candidates_in_the_order_given(store):
    ports = iter([10812, 10810, 10811])

    assert store.allocate('ports', ports, {}) == 10812
    assert store.allocate('ports', [10812, 10810], {}) == 10810


def test_allocate_raises_exhausted_when_every_candidate_is_taken(store):
    for slot in range(3):
        store.allocate('aoe/shelf1', range(3), {'n': slot})
    before = store.list('')

    with pytest.raises(metastore.Exhausted) as raised:
        store.allocate('aoe/shelf1', range(3), {'n': 'late'})

    assert isinstance(raised.value, errors.NoSpace)
    assert 'aoe/shelf1' in str(raised.value)
    assert store.list('') == before


def test_release_frees_the_number_for_the_next_allocation(store):
    for slot in range(3):
        store.allocate('aoe/shelf1', range(3), {'n': slot})

    store.release('aoe/shelf1', 1)

    assert store.allocate('aoe/shelf1', range(3), {'n': 'again'}) == 1
    assert store.get('aoe/shelf1/1')[0] == {'n': 'again'}


def test_release_of_a_number_not_allocated_raises_not_found(store):
    with pytest.raises(metastore.NotFound):
        store.release('aoe/shelf1', 5)


# -- bad arguments -----------------------------------------------------------

@pytest.mark.parametrize('call', [
    lambda s: s.create('', {}),
    lambda s: s.create('/abs', {}),
    lambda s: s.create('a//b', {}),
    lambda s: s.create('a/', {}),
    lambda s: s.create('a', ['not', 'a', 'dict']),
    lambda s: s.create('a', {'x': object()}),
    lambda s: s.put('a', {}, expect_revision=-1),
    lambda s: s.put('a', {'x': float('nan')}),
    lambda s: s.get(None),
    lambda s: s.list('/x'),
    lambda s: s.allocate('', range(3), {}),
    lambda s: s.allocate('ports', ['1'], {}),
    lambda s: s.allocate('ports', [-1], {}),
    lambda s: s.release('ports', True),
], ids=['empty-key', 'leading-slash', 'empty-part', 'trailing-slash',
        'list-value', 'unserialisable-value', 'negative-revision',
        'nan-value', 'none-key', 'absolute-prefix', 'no-allocation-prefix',
        'str-candidate', 'negative-candidate', 'bool-number'])
def test_bad_arguments_raise_invalid_argument_and_change_nothing(store,
                                                                 call):
    store.create('keep', {'v': 1})

    with pytest.raises(errors.InvalidArgument):
        call(store)

    assert list(store.list('')) == ['keep']


# -- opening -----------------------------------------------------------------

@pytest.mark.parametrize('url', [
    'mysql://db/meta', 'file:///var/lib/meta', 'etcd://127.0.0.1:2379',
    '/var/lib/meta.db', ''])
def test_an_unknown_scheme_raises_unknown_scheme(url):
    with pytest.raises(metastore.UnknownScheme) as raised:
        metastore.open_store(url)

    assert isinstance(raised.value, errors.InvalidArgument)
    assert 'sqlite:///' in str(raised.value)


@pytest.mark.parametrize('url', [
    'sqlite://relative/meta.db', 'sqlite:///x.db?timeout=soon',
    'etcd3+http://', 'etcd3+http://host:notaport'])
def test_a_malformed_url_raises_invalid_store_url(url):
    with pytest.raises(metastore.InvalidStoreURL):
        metastore.open_store(url)


def test_an_unreachable_store_raises_store_unavailable(unreachable_url):
    def attempts():
        # SQLite fails when the file is opened, etcd on the first request.
        yield lambda: metastore.open_store(unreachable_url)
        try:
            store = metastore.open_store(unreachable_url)
        except metastore.StoreUnavailable:
            return
        yield lambda: store.create('a', {})
        yield lambda: store.get('a')
        yield lambda: store.put('a', {})
        yield lambda: store.put('a', {}, expect_revision=3)
        yield lambda: store.delete('a')
        yield lambda: store.list('')
        yield lambda: store.allocate('p', range(3), {})
        yield lambda: store.release('p', 1)

    for attempt in attempts():
        with pytest.raises(metastore.StoreUnavailable) as raised:
            attempt().get('a')
        unavailable = raised.value
        # A transient fault to every caller: the client retries it.
        assert isinstance(unavailable, errors.Unavailable)
        assert unavailable.code == 'store_unavailable'
        assert unavailable.errno == errno.ECONNREFUSED
        assert 'unavailable' in str(unavailable)


# -- concurrency -------------------------------------------------------------

def _race(target, url):
    """Run ``target`` in PROCESSES spawned processes against one store;
    return ``{owner: [(number, owner/thread), ...]}``.
    """
    ctx = multiprocessing.get_context('spawn')
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    processes = [ctx.Process(target=target,
                             args=(url, 'p%d' % i, PER_PROCESS, THREADS,
                                   barrier, results))
                 for i in range(PROCESSES)]
    for process in processes:
        process.start()
    claims = {}
    spans = []
    try:
        while len(claims) < PROCESSES:
            try:
                owner, status, payload = results.get(timeout=1)
            except queue.Empty:
                dead = [p for p in processes if p.exitcode not in (None, 0)]
                assert not dead, 'a worker died: exit code %s' % (
                    dead[0].exitcode)
                continue
            assert status == 'ok', 'worker %s failed:\n%s' % (owner, payload)
            claims[owner] = payload['claims']
            spans.append(payload['span'])
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
    # The processes really raced: each started before the other finished.
    assert max(start for start, _ in spans) < min(end for _, end in spans)
    return claims


def _check_race(store, claims, prefix):
    everything = [claim for owned in claims.values() for claim in owned]
    numbers = [number for number, _ in everything]
    # Each process got all it asked for, and no number went to two owners.
    assert sorted(len(owned) for owned in claims.values()) == (
        [PER_PROCESS] * PROCESSES)
    assert len(set(numbers)) == PROCESSES * PER_PROCESS
    # None lost: the store holds exactly those, each still naming the one
    # owner that was told it had won.
    stored = store.list(prefix)
    assert len(stored) == PROCESSES * PER_PROCESS
    assert {key: value['owner'] for key, (value, _) in stored.items()} == {
        '%s/%d' % (prefix, number): owner for number, owner in everything}


def test_two_processes_creating_the_same_ids_never_both_win(store_url):
    claims = _race(workers.create_ids, store_url)

    with metastore.open_store(store_url) as store:
        _check_race(store, claims, workers.ID_PREFIX)


def test_two_processes_allocating_ports_never_get_the_same(store_url):
    claims = _race(workers.allocate_ports, store_url)

    with metastore.open_store(store_url) as store:
        _check_race(store, claims, workers.PORT_PREFIX)
        # First free first: the 100 ports are the first 100 of the range.
        assert sorted(number for owned in claims.values()
                      for number, _ in owned) == list(
            workers.PORTS[:PROCESSES * PER_PROCESS])


def test_what_one_store_object_wrote_another_one_reads(store_url):
    with metastore.open_store(store_url) as first:
        revision = first.create('nodes/n1', {'state': 'up'})

    with metastore.open_store(store_url) as second:
        assert second.get('nodes/n1') == ({'state': 'up'}, revision)
        assert second.create('nodes/n2', {}) > revision
