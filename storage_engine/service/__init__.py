"""The storage-node service: ``storage-engine serve``.

``node`` is the domain layer (pools, volumes, snapshots, exports, jobs over
the volume store and the metadata store), ``api`` the HTTP/JSON shell
around it, ``nbd_exporter`` the bridge to the NBD server, and ``serve`` the
process that puts them on one event loop. ``openapi.yaml`` is the API's
contract.
"""
