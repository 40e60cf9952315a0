"""Fixtures of the functional tier: real services, started and stopped here.

``node_factory`` makes storage-node services (tests/fixtures/node.py) and
stops every one it started when the test ends; ``node`` is one started
node with the embedded SQLite metadata store.
"""

import pytest

from tests.fixtures import node as node_mod


@pytest.fixture
def node_factory(tmp_path):
    started = []

    def make(name: str = 'node1', start: bool = True, **kwargs):
        node = node_mod.NodeProcess(tmp_path, name, **kwargs)
        started.append(node)
        return node.start() if start else node

    yield make
    for node in started:
        node.stop()


@pytest.fixture
def node(node_factory):
    return node_factory()
