import json

import pytest

from longshort.errors import InputError
from longshort.io import ReadStats, ResumableWriter, ensure_ids, read_jsonl, write_json_atomic


def test_read_jsonl_names_file_line_and_field(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"problem": "a", "answer": "1"}\n\n{"problem": "b"}\n')
    with pytest.raises(InputError) as err:
        read_jsonl(p, required=["problem", "answer"])
    msg = str(err.value)
    assert str(p) in msg and ":3" in msg and "answer" in msg


def test_read_jsonl_malformed_line_and_skip_bad(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"problem": "a"}\n{oops\n[1]\n{"problem": "c"}\n')
    with pytest.raises(InputError, match=r":2: malformed JSON"):
        read_jsonl(p)
    stats = ReadStats()
    recs = read_jsonl(p, skip_bad=True, stats=stats)
    assert [r["problem"] for r in recs] == ["a", "c"]
    assert stats.skipped == 2 and stats.read == 2


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_ensure_ids_rejects_duplicates():
    assert [r["id"] for r in ensure_ids([{}, {"id": 7}], prefix="p")] == ["p0", "7"]
    with pytest.raises(InputError, match="duplicate id"):
        ensure_ids([{"id": "a"}, {"id": "a"}])


def test_resumable_writer_truncates_torn_line(tmp_path):
    p = tmp_path / "out.jsonl"
    with ResumableWriter(p) as w:
        w.write({"id": "a", "v": 1})
        w.write({"id": "b", "v": 2})
    with open(p, "a") as fh:
        fh.write('{"id": "c", "v"')  # interrupted mid-record
    w = ResumableWriter(p)
    assert w.done_ids == {"a", "b"}
    w.write({"id": "c", "v": 3})
    w.close()
    lines = [json.loads(x) for x in p.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["a", "b", "c"]


def test_write_json_atomic(tmp_path):
    p = tmp_path / "d" / "m.json"
    write_json_atomic(p, {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1}
    assert [f.name for f in p.parent.iterdir()] == ["m.json"]


def test_atomic_write_uses_normal_file_mode(tmp_path):
    import os

    p = tmp_path / "r.md"
    write_json_atomic(p, {})
    mask = os.umask(0)
    os.umask(mask)
    assert (p.stat().st_mode & 0o777) == (0o666 & ~mask)
