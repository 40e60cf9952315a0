"""What only the etcd backend has: its retry policy.

The contract tests prove what a caller sees; these prove *which* faults
are retried: reads after any connection failure, writes only when the
request never left (a write whose answer was lost may have happened), and
never more than a bounded number of times.
"""

import uuid

import pytest
import requests

from storage_engine import metastore
from storage_engine.metastore import etcd as etcd_store


@pytest.fixture
def store(etcd):
    url = etcd.store_url('retry-' + uuid.uuid4().hex)
    with etcd_store.EtcdStore.from_url(url) as opened:
        opened.list('')  # discover the API path before faults are injected
        yield opened


def inject(monkeypatch, store, faults, before=False):
    """Make the next ``len(faults)`` POSTs fail with ``faults``; with
    ``before=False`` the request is sent first and only its answer lost.
    Return the list of calls made.
    """
    session = store._client.session
    real_post = session.post
    calls = []
    faults = list(faults)

    def post(url, *args, **kwargs):
        calls.append(url)
        if faults and before:
            raise faults.pop(0)
        response = real_post(url, *args, **kwargs)
        if faults:
            raise faults.pop(0)
        return response

    monkeypatch.setattr(session, 'post', post)
    return calls


def refused():
    return requests.exceptions.ConnectTimeout('connection refused')


def test_a_read_is_retried_after_a_dropped_connection(store, monkeypatch):
    revision = store.create('k', {'v': 1})
    calls = inject(monkeypatch, store,
                   [requests.exceptions.ConnectionError('reset by peer')])

    assert store.get('k') == ({'v': 1}, revision)
    assert len(calls) == 2


def test_a_write_that_never_left_is_retried_once_and_done_once(
        store, monkeypatch):
    calls = inject(monkeypatch, store, [refused()], before=True)

    revision = store.create('k', {'v': 1})

    assert len(calls) == 2
    assert store.get('k') == ({'v': 1}, revision)


def test_a_write_whose_answer_was_lost_is_not_repeated(store, monkeypatch):
    calls = inject(monkeypatch, store,
                   [requests.exceptions.ConnectionError('reset by peer')])

    with pytest.raises(metastore.StoreUnavailable) as raised:
        store.create('k', {'v': 1})

    assert len(calls) == 1
    assert 'may or may not' in str(raised.value)
    # It did happen: a retry would have reported the caller's own key as
    # taken by someone else.
    assert store.get('k')[0] == {'v': 1}


def test_retries_stop_after_a_bounded_number_of_attempts(store, monkeypatch):
    calls = inject(monkeypatch, store, [refused()] * 50, before=True)

    with pytest.raises(metastore.StoreUnavailable):
        store.get('k')

    assert len(calls) == etcd_store.DEFAULT_ATTEMPTS
