"""Pulling events out of a protocol core (server or client) in tests."""

from storage_engine.nbd import protocol


def drain(conn):
    """Every event available now (stops at NEED_DATA or PAUSED)."""
    out = []
    while True:
        event = conn.next_event()
        if event is protocol.NEED_DATA or event is protocol.PAUSED:
            return out
        out.append(event)
        if isinstance(event, (protocol.ProtocolError,
                              protocol.ConnectionClosed)):
            return out


def one(conn, data=None):
    """Feed ``data``, expect exactly one event, return it."""
    if data is not None:
        conn.receive_data(data)
    events = drain(conn)
    assert len(events) == 1, events
    return events[0]
