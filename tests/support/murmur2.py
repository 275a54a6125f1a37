"""Kafka's key hash: the Java client's ``Utils.murmur2`` (MurmurHash2, seed 0x9747b28c), whose
positive part modulo the partition count is the partition of a keyed record. librdkafka's
``murmur2_random`` partitioner (the worker's and the adapters' producers) is the same function;
tests use this one to check that router-stream's records land where a Java (or faust/aiokafka)
producer of the same key puts them."""

from __future__ import annotations

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """The 32-bit hash, as an unsigned int (Java's signed int & 0xFFFFFFFF)."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    body = length - length % 4
    for i in range(0, body, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = data[body:]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_of(key: bytes, partitions: int) -> int:
    """The partition of a record keyed ``key`` (Java's ``toPositive(murmur2(key)) % n``)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
