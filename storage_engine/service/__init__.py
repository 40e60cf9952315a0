"""The storage-node service: ``storage-engine serve``.

``node`` is the domain layer (pools, volumes, snapshots, exports, jobs over
the volume store and the metadata store), ``api`` the HTTP/JSON shell
around it, ``nbd_exporter`` and ``aoe_exporter`` the bridges to the NBD
server and the AoE target (through ``loopcall``), and ``serve`` the process
that puts them on one event loop. ``openapi.yaml`` is the API's contract.
"""
