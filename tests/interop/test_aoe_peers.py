"""AoE against the peers: aoetools' aoeping against our target, our
initiator against vblade, and tshark's AoE dissector reading our frames.

Everything runs in two network namespaces joined by a veth pair that the
fixtures create and remove; the tools are the Debian packages
tools/setup-env.sh installs (a missing one is an error, never a skip).
"""

import os
import re
import signal
import subprocess
import time

import pytest

from storage_engine.aoe import client as aoe_client
from storage_engine.aoe import wire
from tests.fixtures import aoe
from tests.fixtures import netns
from tests.interop.conftest import require

MiB = aoe.MiB
SHELF = 12

veth_pair = netns.veth_pair


@pytest.fixture
def target(veth_pair, tmp_path):
    with aoe.TargetThread(veth_pair.if_a, SHELF, veth_pair.ns_a,
                          tmp_path) as tgt:
        yield tgt


def aoeping(pair, slot, *options, shelf=SHELF, check=True):
    require('aoeping')
    # Name the interface: aoeping defaults to eth0. -s bounds the wait.
    proc = pair.run(pair.ns_b, 'aoeping', '-s', '3', *options, str(shelf),
                    str(slot), pair.if_b, check=False, timeout=30)
    if check and proc.returncode:
        raise AssertionError('aoeping failed (%d): %s%s' % (
            proc.returncode, proc.stdout, proc.stderr))
    return proc


def test_aoeping_finds_our_target_with_a_config_query(veth_pair, target):
    target.add(1, 64 * MiB, [veth_pair.mac_b])
    out = aoeping(veth_pair, 1, '-v').stdout
    assert 'config query response' in out
    assert 'found e%d.1 with mac %s' % (
        SHELF, target.mac.replace(':', '')) in out


def test_aoeping_identify_shows_our_model_and_serial(veth_pair, target):
    handle = target.add(2, 64 * MiB, [veth_pair.mac_b], name='pinged')
    out = aoeping(veth_pair, 2, '-I').stdout
    fields = dict(re.findall(r'^(\w+): (.*?)\s*$', out, re.M))
    assert fields['model'] == 'storage-engine pinged'
    assert fields['serial_number'] == handle.id.replace('-', '')[:20]
    assert fields['firmware_rev'] == '1.0'
    # The raw dump (bytes in hex) carries the LBA48 capacity in words
    # 100-103, little-endian.
    raw = aoeping(veth_pair, 2, '-i').stdout
    data = bytes(int(b, 16) for b in re.findall(r'\b[0-9a-f]{2}\b', raw))
    assert len(data) >= 512
    assert int.from_bytes(data[200:208], 'little') == 64 * MiB // 512


def test_aoeping_from_a_mac_off_the_mask_list_gets_nothing(
        veth_pair, target):
    target.add(3, 64 * MiB, ['02:00:00:00:00:99'])
    proc = aoeping(veth_pair, 3, '-v', check=False)
    assert proc.returncode != 0
    assert 'found' not in proc.stdout


def test_our_initiator_against_vblade(veth_pair, tmp_path):
    require('vblade')
    path = tmp_path / 'vblade.img'
    with open(path, 'wb') as f:
        f.truncate(32 * MiB)
    vblade = veth_pair.popen(veth_pair.ns_a, 'vblade', str(SHELF), '4',
                             veth_pair.if_a, str(path),
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:                 # ready when it answers discovery
            try:
                c = aoe_client.AoEClient(veth_pair.if_b, SHELF, 4,
                                         netns=veth_pair.ns_b, timeout=1)
                break
            except Exception:
                assert vblade.poll() is None, vblade.stderr.read()
                assert time.monotonic() < deadline, 'vblade never answered'
        with c:
            assert c.target_mac == veth_pair.mac_a
            assert c.size == 32 * MiB
            info = c.identify()
            assert info['lba48'] and info['sectors'] == 32 * MiB // 512
            data = os.urandom(MiB + 1024)
            c.write(3 * 512, data)
            c.flush()
            assert c.read(3 * 512, len(data)) == data
            c.write(32 * MiB - 512, b'L' * 512)
    finally:
        vblade.send_signal(signal.SIGTERM)
        vblade.wait(10)
    with open(path, 'rb') as f:
        f.seek(3 * 512)
        assert f.read(len(data)) == data
        f.seek(32 * MiB - 512)
        assert f.read() == b'L' * 512


def test_tshark_decodes_our_frames_as_aoe_without_malformed_packets(
        veth_pair, target, tmp_path):
    require('tshark')
    target.add(5, 16 * MiB, [veth_pair.mac_b])
    pcap = str(tmp_path / 'aoe.pcap')
    os.chmod(str(tmp_path), 0o755)
    cap = veth_pair.popen(veth_pair.ns_b, 'tshark', '-i', veth_pair.if_b,
                          '-f', 'ether proto 0x88a2', '-w', pcap,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    try:
        # tshark says "Capturing on 'IF'" first, then "Capture started"
        # once dumpcap really captures.
        for line in cap.stderr:
            if 'Capture started' in line:
                break
        else:
            raise AssertionError('tshark did not start capturing')
        with aoe_client.AoEClient(veth_pair.if_b, SHELF, 5,
                                  netns=veth_pair.ns_b, timeout=5) as c:
            c.write(0, os.urandom(8192))
            c.read(0, 8192)
            c.flush()
            c.query_config(wire.CONFIG_SET, b'tshark-test')
            c.mask_list()
            c.reserve(wire.RESERVE_SET, [c.mac])
            c.reserve(wire.RESERVE_SET, [])
        time.sleep(0.5)                 # let the last frames be written
    finally:
        cap.send_signal(signal.SIGINT)
        cap.wait(30)
    decoded = subprocess.run(
        ['tshark', '-r', pcap, '-T', 'fields', '-e', 'frame.protocols',
         '-e', 'aoe.cmd', '-e', 'aoe.response'],
        capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(decoded) > 40
    rows = [line.split('\t') for line in decoded]
    assert all(r[0] == 'eth:ethertype:aoe' for r in rows), set(
        r[0] for r in rows)
    seen = {(r[1], r[2]) for r in rows}
    for cmd in ('0', '1', '2', '3'):        # ATA, config, mask, reserve
        assert (cmd, '0') in seen and (cmd, '1') in seen, (cmd, seen)
    # Malformed or flagged frames, and (tshark does not flag those) frames
    # under Ethernet's 60-byte minimum: none.
    bad = subprocess.run(
        ['tshark', '-r', pcap, '-Y',
         '_ws.malformed || _ws.expert || frame.len < 60'],
        capture_output=True, text=True, check=True).stdout
    assert bad == ''
