"""JSON read as a stream (prunekit.io.jsonstream): the same keys and values as json.load on
generated files, at every read size down to one byte (so every token straddles a read);
every file json refuses (and every value that is not a number) refused with the file, the
byte offset and the item named, whatever the read size; the window stays bounded."""

from __future__ import annotations

import json
import random
import tracemalloc

import numpy as np
import pytest

import prunekit as pk
from prunekit.io import jsonstream
from prunekit.io.jsonstream import json_batches, json_kind

READS = (1, 2, 3, 7, 64, 1 << 20)  # bytes a read: down to one, up to the default

WS = ["", "", " ", "\n", "\t", "\r\n", " \n\t  "]
KEY_PIECES = ["a", "Z", "7", " ", ",", ":", "[", "]", "{", "}", "é", "中", "😀", "\u2028",
              '\\"', "\\\\", "\\/", "\\b", "\\f", "\\n", "\\r", "\\t", "\\u00e9", "\\u0000",
              "\\ud83d\\ude00", "\\u005C"]


def number(rng: random.Random) -> str:
    """A JSON number or constant in one of the forms json reads."""
    form = rng.randrange(12)
    if form == 0:
        return str(rng.randint(-10**20, 10**20))
    if form == 1:
        return rng.choice(["0", "-0", "0.0", "-0.0", "1", "-1"])
    if form == 2:
        return rng.choice(["9" * 308, "-" + "9" * 300, str(2**53 + 1), str(-(2**63))])
    if form == 3:
        return repr(rng.uniform(-1e6, 1e6))
    if form == 4:
        return repr(rng.choice([5e-324, 2.2250738585072014e-308, 1.7976931348623157e308]))
    if form == 5:  # exponent forms
        mant = rng.choice(["1", "-2", "0", "3.25", "-0.5", "12345678901234567890"])
        return f"{mant}{rng.choice('eE')}{rng.choice(['', '+', '-'])}{rng.randint(0, 330)}"
    if form == 6:
        return rng.choice(["1e400", "-1e400", "1e-400", "-1e-400", "1E+0", "0e0"])
    if form == 7:
        return rng.choice(["NaN", "Infinity", "-Infinity"])
    if form == 8:
        return f"{rng.randint(-999, 999)}.{rng.randint(0, 10**17):0{rng.randint(1, 20)}d}"
    return repr(rng.gauss(0, 1))


def key(rng: random.Random) -> str:
    """A JSON string with escapes, unicode, and characters that are JSON syntax elsewhere."""
    if rng.random() < 0.3:
        k = "".join(rng.choice("abcé😀\"\\/\n\x01") for _ in range(rng.randint(0, 6)))
        return json.dumps(k, ensure_ascii=rng.random() < 0.5)
    return '"' + "".join(rng.choice(KEY_PIECES) for _ in range(rng.randint(0, 6))) + '"'


def document(seed: int) -> str:
    """A valid top-level array or object of numbers, whitespace varied everywhere; objects
    sometimes repeat a key."""
    rng = random.Random(seed)
    keyed = rng.random() < 0.5
    ws = lambda: rng.choice(WS)  # noqa: E731
    items, keys = [], []
    for _ in range(rng.choice([0, 1, 2, rng.randint(3, 40)])):
        k = rng.choice(keys) if keys and rng.random() < 0.1 else key(rng)
        keys.append(k)
        value = ws() + number(rng) + ws()
        items.append(ws() + k + ws() + ":" + value if keyed else value)
    open_, close = "{}" if keyed else "[]"
    return ws() + open_ + ws() + ",".join(items) + ws() + close + ws()


def reference(text: str) -> tuple[list | None, np.ndarray]:
    """json's reading: the keys (duplicates kept, in order) and values as float64."""
    data = json.loads(text, object_pairs_hook=list)
    if isinstance(data, list) and text.strip().startswith("{"):  # an object: its pairs
        return [k for k, _ in data], np.array([float(v) for _, v in data], dtype=np.float64)
    return None, np.array([float(v) for v in data], dtype=np.float64)


def streamed(path, rows: int, read: int) -> tuple[list | None, np.ndarray]:
    batches = list(json_batches(path, rows, read))
    assert all(v.size == rows for _, v in batches[:-1]) and all(v.size for _, v in batches)
    values = np.concatenate([v for _, v in batches]) if batches else np.zeros(0)
    assert values.dtype == np.float64
    if json_kind(path) == "array":
        assert all(ids is None for ids, _ in batches)
        return None, values
    for ids, v in batches:
        assert ids.dtype == object and ids.shape == v.shape
    return [k for ids, _ in batches for k in ids.tolist()], values


@pytest.mark.parametrize("block", range(6))
def test_generated_files_read_as_json_load_reads_them_at_every_read_size(tmp_path, block):
    path = tmp_path / "s.json"
    for seed in range(block * 60, block * 60 + 60):
        text = document(seed)
        path.write_bytes(text.encode("utf-8"))
        want_keys, want = reference(text)
        data = json.loads(text)
        if isinstance(data, dict) and want_keys is not None and len(set(want_keys)) == len(want_keys):
            assert list(data) == want_keys  # no duplicates: json.load's own dict, in order
        for read in READS:
            for rows in (1, 4, 1 << 16):
                keys, got = streamed(path, rows, read)
                assert keys == want_keys, (seed, read)
                assert got.tobytes() == want.tobytes(), (seed, read, text)  # -0.0, NaN too


def test_kinds_duplicates_and_constants(tmp_path):
    path = tmp_path / "s.json"
    path.write_bytes(b'\n {"a": 1, "a": 2 , "\\u0061": -0, "b":NaN}  ')
    assert json_kind(path) == "object"
    (ids, values), = json_batches(path)
    assert ids.tolist() == ["a", "a", "a", "b"]  # duplicates kept, in file order
    assert values[:3].tolist() == [1.0, 2.0, 0.0] and np.signbit(values[:3]).tolist() == [0] * 3
    assert np.isnan(values[3])
    path.write_bytes(b"[-0.0, 1e400, -Infinity, 12345678901234567890123]")
    assert json_kind(path) == "array"
    (ids, values), = json_batches(path)
    assert ids is None and np.signbit(values[0])
    assert values[1:].tolist() == [np.inf, -np.inf, 1.2345678901234568e22]
    for empty in (b"[]", b" { } "):
        path.write_bytes(empty)
        assert list(json_batches(path)) == []


def test_batches_have_the_fixed_size(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({f"k{i}": i for i in range(10)}))
    sizes = [v.size for _, v in json_batches(path, rows=3, chunk_bytes=5)]
    assert sizes == [3, 3, 3, 1]


BOTH = "(after {})"
INVALID = [  # (file bytes, the message after the path; json.loads refuses the file too)
    (b"", " is empty; it must hold a JSON object {id: score} or a list of scores.", True),
    (b" \n\t", " is empty; it", True),
    (b"1", " must hold a JSON object {id: score} or a list of scores; it starts with '1' "
     "at byte 0.", False),
    (b' "x"', " must hold a JSON object", False),
    (b"\xef\xbb\xbf[1]", " starts with a UTF-8 byte order mark, which JSON does not allow; "
     "save it as UTF-8 without a BOM.", True),
    (b"[1, 2", " is not valid JSON: it ends at byte 5 inside the top-level array (after 1 "
     "item), so it was cut short; write it again completely.", True),
    (b'{"a": 1', " is not valid JSON: it ends at byte 7 inside the top-level object (after 0 "
     "items)", True),
    (b'{"a', " is not valid JSON: it ends at byte 3 inside the top-level object", True),
    (b'{"a":', " is not valid JSON: it ends at byte 5 inside", True),
    (b"[1, tr", " is not valid JSON: it ends at byte 6 inside", True),
    (b"[1,", " is not valid JSON: it ends at byte 3 inside", True),
    (b"[1] x", " is not valid JSON: extra data after the closing ']' at byte 4 (after 1 "
     "item); fix the file, e.g. write it with json.dump, to give a JSON object {id: score} "
     "or a list of scores.", True),
    (b"[1]]", " is not valid JSON: extra data after the closing ']' at byte 3", True),
    (b"[1 2]", " is not valid JSON: expected ',' or ']' at byte 3 (after 1 item)", True),
    (b"[1,]", " is not valid JSON: a comma before ']' at byte 3 (after 1 item)", True),
    (b"[01]", " is not valid JSON: expected ',' or ']' at byte 2", True),
    (b"[-]", " is not valid JSON: expected a number at byte 1 (after 0 items)", True),
    (b"[1,,2]", " is not valid JSON: expected a number at byte 3 (after 1 item)", True),
    (b"{1: 2}", " is not valid JSON: expected a key in double quotes at byte 1", True),
    (b'{"a" 1}', " is not valid JSON: expected ':' after the key at byte 5", True),
    (b'{"\xc3\xa9": 1 2}', " is not valid JSON: expected ',' or '}' at byte 9", True),
    (b'["a\\x"]', " is not valid JSON: Invalid \\escape at byte 3", True),
    (b'["a\nb"]', " is not valid JSON: Invalid control character at byte 3", True),
    (b"[1, 2]\xff", " is not UTF-8 text (invalid start byte at byte 6); save the JSON as "
     "UTF-8.", True),
    (b'{"\xc3\x28": 1}', " is not UTF-8 text (invalid continuation byte at byte 2)", True),
    (b'["\xc3', " is not UTF-8 text (unexpected end of data at byte 2)", True),
    (b'[1, "a"]', ' item 1 (byte 4) is "a", not a number; every score must be a number.',
     False),
    (b"[true]", " item 0 (byte 1) is true, not a number", False),
    (b'{"k\\n": null}', ' entry "k\\n" (byte 8) is null, not a number', False),
    (b"[[1, 2]]", " item 0 (byte 1) is a JSON array, not a number; every score must be a "
     "number: give a JSON object {id: score} or a list of scores.", False),
    (b'{"a": {"b": 1}}', ' entry "a" (byte 6) is a JSON object, not a number', False),
    (b"[" * 100_000 + b"]" * 100_000, " item 0 (byte 1) is a JSON array", False),
    (b"[1, " + b"7" * 400 + b"]", " item 1 (byte 4) is " + "7" * 37 + "..., beyond the "
     "float64 range.", False),
    (b"[" + b"1" * 5000 + b"]", " item 0 (byte 1) is " + "1" * 37 + "..., beyond", True),
    (b"[null, 1 2]", " is not valid JSON: expected ',' or ']' at byte 9", True),  # json first
    (b'[1, "x", [2]]', " item 2 (byte 9) is a JSON array", False),  # where it starts
]


@pytest.mark.parametrize("content, message, json_refuses", INVALID,
                         ids=[repr(c[:16]) for c, _, _ in INVALID])
def test_every_invalid_file_is_refused_with_the_file_and_the_offset(tmp_path, content, message,
                                                                    json_refuses):
    path = tmp_path / "s.json"
    path.write_bytes(content)
    if json_refuses:  # the file is not JSON (or not a number json can read) at all
        with pytest.raises((ValueError, RecursionError)):
            json.loads(content.decode("utf-8"))
    seen = set()
    for read in READS:
        with pytest.raises(pk.PrunekitError) as err:
            json_kind(path)
            list(json_batches(path, 2, read))
        seen.add(str(err.value))
    assert len(seen) == 1, seen  # the same offset and item whatever the read size
    assert seen.pop().startswith(str(path) + message)


def test_batches_before_an_error_come_first(tmp_path):
    path = tmp_path / "s.json"
    path.write_text("[1, 2, 3, 4, 5 x]")
    got = []
    with pytest.raises(pk.PrunekitError, match=r"expected ',' or '\]' at byte 15"):
        for _, v in json_batches(path, 2, 1):
            got.append(v.tolist())
    assert got == [[1.0, 2.0], [3.0, 4.0]]


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(pk.PrunekitError, match="cannot read .*nope.json: No such file"):
        json_kind(tmp_path / "nope.json")


def test_the_window_stays_bounded(tmp_path, monkeypatch):
    """However large the file, the text held is about one read beyond the unread token, and
    the traced memory is a small fraction of what json.load holds."""
    path = tmp_path / "s.json"
    rng = np.random.default_rng(0)
    values = rng.standard_normal(100_000)
    path.write_text(json.dumps({f"id-{i}": v for i, v in enumerate(values.tolist())}))
    widest = []
    more = jsonstream._Parser.more

    def spy(self):
        added = more(self)
        widest.append(len(self.buf))
        return added

    monkeypatch.setattr(jsonstream._Parser, "more", spy)
    read = 4096
    n = 0
    tracemalloc.start()
    try:
        for ids, v in json_batches(path, 1000, read):
            assert v.tolist() == values[n : n + v.size].tolist()
            assert ids.tolist() == [f"id-{i}" for i in range(n, n + v.size)]
            n += v.size
        _, streamed_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with open(path) as fh:
            whole = json.load(fh)
        _, whole_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 100_000 and len(whole) == n
    assert len(widest) > path.stat().st_size // read - 1 and max(widest) <= 2 * read
    assert streamed_peak < path.stat().st_size / 4 and streamed_peak * 20 < whole_peak


def test_a_token_longer_than_a_read_is_read_whole(tmp_path):
    path = tmp_path / "s.json"
    long_key = "é" * 50_000 + '"'
    path.write_text(json.dumps({long_key: 1.5, "b": -2}))
    for read in (1 << 10, 1 << 20):
        (ids, values), = json_batches(path, 10, read)
        assert ids.tolist() == [long_key, "b"] and values.tolist() == [1.5, -2.0]
