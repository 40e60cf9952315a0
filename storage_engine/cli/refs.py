"""Turning what an operator typed (an id or a name) into an id.

The API addresses objects by id only; people use names. A name can never
look like a UUID (:func:`storage_engine.names.check_name` refuses that), so
a UUID is taken as an id without asking the node, and anything else is
looked up through the list endpoints' ``?name=`` filter. Volume and
snapshot names are unique in the cluster, but the lookup still refuses to
guess if it ever finds more than one.
"""

from storage_engine import client as client_mod
from storage_engine import errors
from storage_engine import names


def _one(found: list[dict], ref: str, what: str,
         not_found: type[errors.EngineError]) -> str:
    found = [x for x in found if x.get('name') == ref]
    if not found:
        raise not_found('%s %s not found' % (what, ref), name=ref)
    if len(found) > 1:
        raise errors.InvalidArgument(
            'name %s is ambiguous: %d objects have it (%s); use an id'
            % (ref, len(found),
               ', '.join(sorted(x['id'] for x in found))), name=ref)
    return found[0]['id']


def volume_id(client: client_mod.Client, ref: str) -> str:
    """The id of the volume ``ref`` (an id or a name)."""
    if names.is_uuid(ref):
        return names.check_id(ref)
    return _one(client.volumes(name=ref), ref, 'volume',
                errors.VolumeNotFound)


def snapshot_id(client: client_mod.Client, ref: str) -> str:
    """The id of the snapshot ``ref`` (an id or a name)."""
    if names.is_uuid(ref):
        return names.check_id(ref)
    return _one(client.snapshots(name=ref), ref, 'snapshot',
                errors.SnapshotNotFound)


def volume_or_snapshot_id(client: client_mod.Client, ref: str) -> str:
    """The id of the volume or snapshot ``ref`` (exports take either)."""
    if names.is_uuid(ref):
        return names.check_id(ref)
    found = client.volumes(name=ref) + client.snapshots(name=ref)
    return _one(found, ref, 'volume or snapshot', errors.NotFound)
