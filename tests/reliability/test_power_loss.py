"""Simulated power loss: unsynced writes land on disk in any version.

SIGKILL (test_crash_torture) cannot lose the page cache, so it cannot
catch a store that writes its metadata before its data is durable. This
test can: a recorder under the device layer keeps, for every 512-byte
sector written since that device's last ``fdatasync``, each version it
went through. At a random device call the power "fails": every unsynced
sector independently ends up in any of its versions (the one at the last
sync included), as a disk with a volatile cache may leave it, and the
operation under way never returns.

The store must then open, pass the consistency check, hold every sector
as the model allows, and never show a sector of a deleted volume or
another volume. Power may also fail during the recovery itself.
"""

import os
import random

import pytest

from storage_engine import devices
from storage_engine import errors
from storage_engine.volstore import VolumeGroup
from tests.crash import abandon
from tests.reliability import test_crash_torture as torture
from tests.reliability import torture_writer as writer

SECTOR = 512


class PowerLoss(BaseException):
    """The simulated power failure.

    Not an EngineError: nothing catches it on the way up, as nothing would
    run after a real one.
    """


class Recorder:
    def __init__(self, rng):
        self.rng = rng
        self.versions = {}     # path -> {sector: [bytes, ...]}
        self.countdown = None

    def _tick(self):
        if self.countdown is not None:
            self.countdown -= 1
            if self.countdown <= 0:
                self.countdown = None
                raise PowerLoss()

    def record(self, dev, offset, length, do):
        self._tick()
        first = offset // SECTOR
        last = -(-(offset + length) // SECTOR)
        span = (last - first) * SECTOR
        before = os.pread(dev.fd, span, first * SECTOR)
        do()
        after = os.pread(dev.fd, span, first * SECTOR)
        table = self.versions.setdefault(dev.path, {})
        for i in range(last - first):
            old = before[i * SECTOR:(i + 1) * SECTOR].ljust(SECTOR, b'\0')
            new = after[i * SECTOR:(i + 1) * SECTOR].ljust(SECTOR, b'\0')
            table.setdefault(first + i, [old]).append(new)

    def synced(self, dev):
        self._tick()
        self.versions.pop(dev.path, None)

    def power_fail(self):
        """Put each unsynced sector in a random one of its versions."""
        for path, table in self.versions.items():
            fd = os.open(path, os.O_WRONLY)
            try:
                for sector, versions in table.items():
                    os.pwrite(fd, self.rng.choice(versions),
                              sector * SECTOR)
            finally:
                os.close(fd)
        self.versions = {}


@pytest.fixture
def recorder(monkeypatch, request):
    rng = random.Random(request.config.getoption('--torture-seed'))
    rec = Recorder(rng)
    real_pwrite = devices.Device.pwrite
    real_zero = devices.Device.zero
    real_sync = devices.Device.sync

    def pwrite(self, data, offset):
        rec.record(self, offset, len(memoryview(data).cast('B')),
                   lambda: real_pwrite(self, data, offset))

    def zero(self, offset, length):
        rec.record(self, offset, length,
                   lambda: real_zero(self, offset, length))

    def sync(self):
        real_sync(self)
        rec.synced(self)

    monkeypatch.setattr(devices.Device, 'pwrite', pwrite)
    monkeypatch.setattr(devices.Device, 'zero', zero)
    monkeypatch.setattr(devices.Device, 'sync', sync)
    return rec


def _open(pv0, rec):
    """Open (recover), with power failing during recovery at times."""
    while True:
        try:
            return VolumeGroup.open(pv0)
        except PowerLoss:
            rec.power_fail()
            # The failed open's devices are dropped with it.


def test_power_loss(tmp_path, recorder, request):
    rounds = 300 if request.config.getoption('--long') else 40
    rng = recorder.rng
    pv0 = str(tmp_path / 'pv0')
    VolumeGroup.create([(pv0, 96 << 20)], cluster_size=64 << 10,
                       journal_size=128 << 10).close()
    model = torture.Model()
    token = 1 << 40
    failures_in_op = 0
    for r in range(rounds):
        # Power fails within the next 1..250 device calls.
        recorder.countdown = rng.randint(1, 250)
        vg = _open(pv0, recorder)
        inflight = None
        try:
            for counter in range(rng.randint(1, 80)):
                body = writer.next_op(vg, rng, 'r%d' % r, counter, token)
                if body is None:
                    continue
                token = body.get('token', token)
                inflight = body
                try:
                    writer.run_op(vg, body)
                except errors.EngineError:
                    if body['op'] in torture.DATA_OPS:
                        model.apply(body, completed=False)
                else:
                    model.apply(body)
                inflight = None
        except PowerLoss:
            failures_in_op += 1
        recorder.countdown = None
        recorder.power_fail()
        abandon(vg)
        candidates = torture.candidates_after(model, inflight)

        vg = VolumeGroup.open(pv0)
        try:
            report = vg.check()
            assert report.ok, 'round %d: %s' % (r, report.errors)
            vols, snaps = torture.observe(vg)
        finally:
            vg.close()
        reasons = [torture.mismatch(c, vols, snaps) for c in candidates]
        assert None in reasons, 'round %d (in flight: %s): %s' % (
            r, inflight, reasons)
        model = candidates[reasons.index(None)]
        torture.collapse(model, vols)
    assert failures_in_op >= rounds // 10, 'power rarely failed mid-operation'
