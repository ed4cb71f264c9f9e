"""Hash buckets of ids (``prunekit.io.ids.id_buckets``): equal ids share a bucket."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from prunekit.io.ids import id_buckets

GOLDEN = 0x9E3779B97F4A7C15


@pytest.mark.parametrize("buckets", [2, 8, 1 << 16])
def test_integer_ids_take_the_top_bits_of_their_fibonacci_hash(buckets):
    ids = np.array([0, 1, 2, 7, -1, -(2**63), 2**63 - 1, 123456789], dtype=np.int64)
    bits = buckets.bit_length() - 1
    want = [((int(v) % 2**64) * GOLDEN % 2**64) >> (64 - bits) for v in ids.tolist()]
    got = id_buckets(ids, buckets)
    assert got.dtype == np.int64 and got.tolist() == want
    assert id_buckets(ids.astype(np.int32), buckets).tolist()[:4] == want[:4]


def test_string_ids_take_the_top_bits_of_blake2b_and_ignore_trailing_nuls():
    ids = np.array(["a", "a\x00", "é", "\udcff", "img/0001.png"], dtype=object)
    want = [int.from_bytes(hashlib.blake2b(v.rstrip("\x00").encode("utf-8", "surrogatepass"),
                                           digest_size=8).digest(), "little") >> 61
            for v in ids.tolist()]
    got = id_buckets(ids, 8)
    assert got.tolist() == want and got[0] == got[1]  # "a" == "a\x00" as numpy compares
    assert id_buckets(np.array(["a", "é"]), 8).tolist() == [want[0], want[2]]  # numpy str


def test_one_bucket_holds_every_id():
    assert id_buckets(np.array(["x", "y"], dtype=object), 1).tolist() == [0, 0]
    assert id_buckets(np.arange(3, dtype=np.int64), 1).tolist() == [0, 0, 0]
