"""oslo.config options of the storage engine, for oslo-config-generator.

The engine library itself takes plain arguments; options arrive with the
storage-node service (``storage-engine serve``), which lists them here.
"""

from storage_engine.service import serve


def list_opts():
    return serve.list_opts()
