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


# --- issue 11: never delete a good record; refuse what is not ours; user files read safely


def _own(i):
    return json.dumps({"id": str(i), "thoughts": []}) + "\n"


def test_torn_last_line_is_the_only_thing_truncated(tmp_path):
    p = tmp_path / "out.jsonl"
    p.write_text(_own(1) + _own(2) + '{"id": "3", "thou')
    w = ResumableWriter(p, expect=["thoughts"])
    assert w.done_ids == {"1", "2"}
    w.write({"id": "3", "thoughts": []})
    w.close()
    assert p.read_text() == _own(1) + _own(2) + _own(3)


def test_complete_last_record_without_newline_is_kept(tmp_path):
    p = tmp_path / "out.jsonl"
    p.write_text(_own(1) + _own(2).rstrip("\n"))
    with ResumableWriter(p) as w:
        assert w.done_ids == {"1", "2"}
        w.write({"id": "3", "thoughts": []})
    assert p.read_text() == _own(1) + _own(2) + _own(3)


@pytest.mark.parametrize("middle,needle", [("\n", "blank"), ('{"id": "x", "tho\n', "torn"),
                                            ("[1]\n", "JSON object"), ('{"x": 1}\n', "id")])
def test_bad_middle_line_stops_or_is_left_with_skip_bad(tmp_path, middle, needle):
    from longshort.io import scan_output

    p = tmp_path / "out.jsonl"
    content = _own(1) + middle + _own(2)
    p.write_text(content)
    with pytest.raises(InputError, match=rf"out.jsonl:2: .*{needle}"):
        ResumableWriter(p)
    assert p.read_text() == content
    assert scan_output(p, skip_bad=True).done_ids == {"1", "2"}
    with ResumableWriter(p, skip_bad=True) as w:
        w.write({"id": "3", "thoughts": []})
    assert p.read_text() == content + _own(3)  # the bad line is left, nothing else changed


def test_foreign_or_text_output_is_refused_untouched(tmp_path):
    p = tmp_path / "notes.txt"
    for content in ("my notes\n", "one line, no newline", json.dumps({"id": 1, "name": "x"}) + "\n"):
        p.write_text(content)
        with pytest.raises(InputError, match="notes.txt:1"):
            ResumableWriter(p, expect=["thoughts"])
        with pytest.raises(InputError, match="notes.txt"):
            ResumableWriter(p, expect=["thoughts"], skip_bad=True)
        assert p.read_text() == content


def test_no_resume_replaces_only_when_the_first_record_is_written(tmp_path):
    p = tmp_path / "out.jsonl"
    p.write_text(_own(1))
    w = ResumableWriter(p, resume=False)
    assert w.done_ids == set() and p.read_text() == _own(1)  # a failure before any work keeps it
    w.write({"id": "9", "thoughts": []})
    w.close()
    assert p.read_text() == _own(9)


def test_non_utf8_bom_crlf_and_nan_lines(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n{"a": "caf\xe9"}\r\n{"a": NaN}\r\n{"a": 2}\r\n')
    with pytest.raises(InputError, match=r"x.jsonl:2: not UTF-8"):
        read_jsonl(p)
    stats = ReadStats()
    assert read_jsonl(p, skip_bad=True, stats=stats) == [{"a": 1}, {"a": 2}]
    assert stats.lines == [1, 4] and stats.skipped == 2 and "NaN" in stats.reasons[1]


def test_ensure_ids_refuses_ids_of_other_types():
    for bad in ([1], {"a": 1}, True, 1.5, " "):
        with pytest.raises(InputError, match="field 'id'"):
            ensure_ids([{"id": bad}], path="f.jsonl")
    with pytest.raises(InputError, match="f.jsonl:3: field 'id': duplicate id '7'"):
        ensure_ids([{"id": 7}, {}, {"id": "7"}], path="f.jsonl", lines=[1, 2, 3])


@pytest.mark.parametrize("text,needle", [
    ("a: &x [1]\nb: *x\n", "aliases"),
    ("a: " + "[" * 3000 + "]" * 3000 + "\n", "nested"),
    ("a: 1\nb: 2\na: 3\n", "given twice"),
    ("x: [1, 2\n", "invalid YAML"),
])
def test_read_yaml_refuses_aliases_depth_duplicates(tmp_path, text, needle):
    import time

    from longshort.io import read_yaml

    p = tmp_path / "c.yaml"
    p.write_text(text)
    t0 = time.monotonic()
    with pytest.raises(InputError, match=needle):
        read_yaml(p)
    assert time.monotonic() - t0 < 30  # hang detector only
    p.write_text("x" * 10 + "\n")
    with pytest.raises(InputError, match="too large"):
        read_yaml(p, max_bytes=5)


def test_check_output_paths(tmp_path):
    from longshort.io import check_new_file, check_output_dir, check_output_file

    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    with pytest.raises(InputError, match="directory"):
        check_output_file(tmp_path / "d")
    with pytest.raises(InputError, match="not a directory"):
        check_output_file(tmp_path / "f" / "o.jsonl")
    with pytest.raises(InputError, match="input"):
        check_output_file(tmp_path / "f", inputs=[tmp_path / "f"])
    with pytest.raises(InputError, match="not a directory"):
        check_output_dir(tmp_path / "f")
    with pytest.raises(InputError, match="already exists"):
        check_new_file(tmp_path / "f")
    assert check_output_dir(tmp_path / "new" / "dir") == tmp_path / "new" / "dir"
    assert not (tmp_path / "new").exists()  # checks create nothing
