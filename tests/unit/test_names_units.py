"""Names, ids and sizes as the engine accepts them from its callers."""

import uuid

from hypothesis import given
from hypothesis import strategies as st
import pytest

from storage_engine import errors
from storage_engine import names
from storage_engine import units

KiB = 1024
MiB = KiB * 1024
GiB = MiB * 1024
TiB = GiB * 1024


# -- names.check_name ---------------------------------------------------------

@pytest.mark.parametrize('name', [
    'a', 'A', '0', 'vol-1', 'vol_1', 'vol.1', 'vol+1', 'x' * 128,
    'volume-' + str(uuid.uuid4()), 'snapshot-' + str(uuid.uuid4()),
    '12345678-1234-5678-1234-56781234567',     # one digit short of a UUID
])
def test_check_name_accepts(name):
    assert names.check_name(name) == name


@pytest.mark.parametrize('name', [
    '', 'x' * 129, '-a', '.a', '_a', '+a', 'a b', ' a', 'a ', 'a/b',
    'a\\b', 'a:b', 'a@b', 'a\n', 'a\x00', '\u00e9t\u00e9', 'a\u200bb',
])
def test_check_name_refuses_bad_characters_and_lengths(name):
    with pytest.raises(errors.InvalidName) as exc:
        names.check_name(name)
    assert type(exc.value) is errors.InvalidName
    assert repr(name) in str(exc.value)
    assert exc.value.details['name'] == name


@pytest.mark.parametrize('name', [
    str(uuid.uuid4()),
    str(uuid.uuid4()).upper(),
    uuid.uuid4().hex,
])
def test_check_name_refuses_a_uuid(name):
    with pytest.raises(errors.InvalidName) as exc:
        names.check_name(name, 'volume name')
    assert str(exc.value) == 'volume name %r must not be a UUID' % (name,)


@pytest.mark.parametrize('value', [None, 42, b'abc', ['a']])
def test_check_name_refuses_non_strings(value):
    with pytest.raises(errors.InvalidName) as exc:
        names.check_name(value, 'snapshot name')
    assert str(exc.value).startswith('snapshot name %r is invalid'
                                     % (value,))


def test_invalid_name_is_an_invalid_argument():
    with pytest.raises(errors.InvalidArgument) as exc:
        names.check_name('')
    assert exc.value.code == 'invalid_name'
    assert exc.value.errno == 22


@given(st.from_regex(r'[A-Za-z0-9][A-Za-z0-9._+-]{0,127}', fullmatch=True))
def test_every_name_of_the_alphabet_is_accepted_unless_a_uuid(name):
    if names.is_uuid(name):
        with pytest.raises(errors.InvalidName):
            names.check_name(name)
    else:
        assert names.check_name(name) == name


# -- names.is_uuid, check_id, new_id ------------------------------------------

def test_is_uuid():
    ident = uuid.uuid4()
    assert names.is_uuid(str(ident))
    assert names.is_uuid(str(ident).upper())
    assert names.is_uuid(ident.hex)
    assert names.is_uuid('{%s}' % ident)
    for value in ('', 'vol-1', str(ident)[:-1], None, 42, b'x'):
        assert not names.is_uuid(value)


def test_check_id_returns_the_canonical_form():
    ident = uuid.uuid4()
    for form in (str(ident), str(ident).upper(), ident.hex,
                 '{%s}' % ident, 'urn:uuid:%s' % ident):
        assert names.check_id(form) == str(ident)


@pytest.mark.parametrize('value', ['', 'not-a-uuid', '1234', None, 42])
def test_check_id_refuses_what_is_not_a_uuid(value):
    with pytest.raises(errors.InvalidArgument) as exc:
        names.check_id(value)
    assert type(exc.value) is errors.InvalidArgument
    assert str(exc.value) == '%r is not a valid UUID' % (value,)


def test_new_ids_are_canonical_and_distinct():
    ids = [names.new_id() for _ in range(100)]
    assert len(set(ids)) == 100
    assert all(names.check_id(i) == i for i in ids)


# -- names.normalise_mac, check_mac -------------------------------------------

@pytest.mark.parametrize('text, mac', [
    ('52:54:00:12:34:56', '52:54:00:12:34:56'),
    ('52:54:00:AB:cd:EF', '52:54:00:ab:cd:ef'),
    ('52-54-00-ab-cd-ef', '52:54:00:ab:cd:ef'),
    (' 52:54:00:ab:cd:ef\n', '52:54:00:ab:cd:ef'),
    ('01:00:5e:00:00:fb', '01:00:5e:00:00:fb'),     # a MAC, if not unicast
])
def test_normalise_mac_gives_one_form_for_every_spelling(text, mac):
    assert names.normalise_mac(text) == mac


@pytest.mark.parametrize('value', [
    '52:54:00:12:34', '52:54:00:12:34:56:78', '52:54:00:12:34:5g',
    '52:54-00:12:34:56', '525400123456', '5254.0012.3456', '10.0.0.1', '',
    None, 42, b'52:54:00:12:34:56'])
def test_normalise_mac_says_none_for_what_is_not_a_mac(value):
    assert names.normalise_mac(value) is None


@given(st.binary(min_size=6, max_size=6), st.sampled_from([':', '-']),
       st.booleans())
def test_every_spelling_of_a_mac_normalises_to_its_octets(octets, sep, up):
    text = sep.join('%02x' % b for b in octets)
    mac = names.normalise_mac(text.upper() if up else text)
    assert bytes.fromhex(mac.replace(':', '')) == octets
    assert mac == mac.lower() and '-' not in mac


@pytest.mark.parametrize('host, words', [
    ('52:54:00:12:34', 'not a MAC address'),
    ('00-00-00-00-00-00', 'all-zero'),
    ('FF:FF:FF:FF:FF:FF', 'broadcast'),
    ('33-33-00-00-00-01', 'multicast'),
])
def test_check_mac_admits_only_one_initiators_address(host, words):
    with pytest.raises(errors.InvalidArgument) as err:
        names.check_mac(host)
    assert repr(host) in str(err.value) and words in str(err.value)
    assert err.value.details == {'host': host}


def test_check_mac_gives_the_normal_form():
    assert names.check_mac('52-54-00-AB-CD-EF') == '52:54:00:ab:cd:ef'


# -- units.parse_size ---------------------------------------------------------

@pytest.mark.parametrize('text, size', [
    ('0', 0), ('4096', 4096), ('1K', KiB), ('1k', KiB), ('64K', 64 * KiB),
    ('512M', 512 * MiB), ('10G', 10 * GiB), ('2T', 2 * TiB),
    ('1P', 1024 * TiB), ('1KiB', KiB), ('1kib', KiB), ('1KB', KiB),
    ('1MB', MiB), ('7B', 7), (' 3 G ', 3 * GiB), ('\t5M\n', 5 * MiB),
    (4096, 4096), (0, 0),
])
def test_parse_size(text, size):
    assert units.parse_size(text) == size


@pytest.mark.parametrize('text', [
    '', ' ', 'abc', 'G', '-1', '-1G', '1.5G', '1,5G', '10X', '10 GG',
    '0x10', '1e6', 'ten', None, True, 1.5,
])
def test_parse_size_refuses_what_it_does_not_understand(text):
    with pytest.raises(errors.InvalidSize) as exc:
        units.parse_size(text)
    assert type(exc.value) is errors.InvalidSize
    assert repr(text) in str(exc.value)
    assert '10G' in str(exc.value)       # the message shows an example


# -- units.format_size --------------------------------------------------------

@pytest.mark.parametrize('size, text', [
    (0, '0B'), (1, '1B'), (512, '512B'), (1023, '1023B'), (KiB, '1KiB'),
    (1536, '1536B'), (64 * KiB, '64KiB'), (MiB, '1MiB'),
    (MiB + KiB, '1025KiB'), (63 * MiB, '63MiB'), (10 * GiB, '10GiB'),
    (3 * TiB, '3TiB'), (1024 * TiB, '1PiB'), (2048 * TiB, '2PiB'),
])
def test_format_size(size, text):
    assert units.format_size(size) == text


@given(st.integers(min_value=0, max_value=1 << 62))
def test_format_then_parse_is_the_identity(size):
    assert units.parse_size(units.format_size(size)) == size


@given(st.integers(min_value=0, max_value=1 << 40),
       st.sampled_from(['', 'K', 'M', 'G', 'T', 'P']))
def test_parse_size_multiplies_by_binary_units(number, suffix):
    factor = {'': 1, 'K': KiB, 'M': MiB, 'G': GiB, 'T': TiB,
              'P': 1024 * TiB}[suffix]
    assert units.parse_size('%d%s' % (number, suffix)) == number * factor
