"""The storage-node service's metadata store, opened by URL.

Cluster state (nodes, volume names and ids, exports, address allocations)
lives behind one small interface, :class:`MetadataStore`, with one backend
per URL scheme, in the manner of tooz's coordination drivers::

    sqlite:///var/lib/storage-engine/meta.db   embedded default, one node
    etcd3+http://127.0.0.1:2379[/namespace]    many nodes; etcd decides

    from storage_engine import metastore
    with metastore.open_store(url) as store:
        store.create('nodes/n1/volumes/%s' % vol_id, {'name': 'data'})
        port = store.allocate('nodes/n1/nbd-ports', range(10809, 10909),
                              {'volume': vol_id})
"""

import urllib.parse

from storage_engine.metastore.base import MetadataStore
from storage_engine.metastore.errors import Exhausted  # noqa: F401
from storage_engine.metastore.errors import InvalidStoreURL  # noqa: F401
from storage_engine.metastore.errors import KeyExists  # noqa: F401
from storage_engine.metastore.errors import NotFound  # noqa: F401
from storage_engine.metastore.errors import RevisionMismatch  # noqa: F401
from storage_engine.metastore.errors import StoreError  # noqa: F401
from storage_engine.metastore.errors import StoreUnavailable  # noqa: F401
from storage_engine.metastore.errors import UnknownScheme


def open_store(url: str) -> MetadataStore:
    """Open the metadata store named by ``url``; the scheme picks the backend.

    :raises UnknownScheme: no backend serves the URL's scheme.
    :raises InvalidStoreURL: the URL is malformed for its backend.
    :raises StoreUnavailable: the store cannot be opened now.
    """
    scheme = urllib.parse.urlsplit(url).scheme.lower() if isinstance(
        url, str) else ''
    if scheme == 'sqlite':
        from storage_engine.metastore import sqlite
        return sqlite.SQLiteStore.from_url(url)
    if scheme == 'etcd3+http':
        # Imported here so that a SQLite-only node does not load requests.
        from storage_engine.metastore import etcd
        return etcd.EtcdStore.from_url(url)
    raise UnknownScheme(
        'unknown metadata store URL %r: use sqlite:///absolute/path.db or '
        'etcd3+http://host:port' % (url,), url=url)
