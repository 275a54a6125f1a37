"""The Java client's key hash, against values computed by aiokafka's ``murmur2`` (itself a
port of Java's ``Utils.murmur2``) before the product stopped depending on aiokafka."""

from __future__ import annotations

import pytest

from tests.support.murmur2 import murmur2, partition_of

# key -> murmur2(key) as aiokafka 0.14 computes it (unsigned)
VECTORS = [
    (b"", 275646681),
    (b"a", 2731586172),
    (b"ab", 316155434),
    (b"abc", 479470107),
    (b"abcd", 2971317748),
    (b"hello", 2132663229),
    (b"21", 3321034988),
    (b"foobar", 3504634814),
    (b"a-little-bit-long-string", 3308985760),
    (b"a-little-bit-longer-string", 2808662467),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", 4236069325),
    ("\u00e9t\u00e9".encode(), 2193773721),
    (b"\xff\xfe\x00\x80", 1904227184),
]


@pytest.mark.parametrize(("key", "expected"), VECTORS)
def test_murmur2_matches_the_java_client(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


def test_partition_is_the_positive_hash_modulo_the_partition_count() -> None:
    # 2731586172 has the sign bit set: Java drops it (toPositive) before the modulo
    assert partition_of(b"a", 12) == (2731586172 & 0x7FFFFFFF) % 12 == 4
    assert partition_of(b"hello", 7) == 2132663229 % 7
