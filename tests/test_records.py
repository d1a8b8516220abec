"""Records format: validation errors name file, line and field; round trip; helpers."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from aaclip.contract.errors import UserError
from aaclip.data.records import (
    DataError,
    Record,
    class_counts,
    class_names,
    masked_counts,
    read_records,
    rebase,
    resolve,
    validate_record,
    write_records,
)

GOOD = {"image_path": "a/0.png", "label": 0, "class_name": "a", "mask_path": None}
BAD = {"image_path": "a/1.png", "label": 1, "class_name": "a", "mask_path": "a/1_mask.png"}


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _error(path: Path, **kw) -> str:
    with pytest.raises(DataError) as exc:
        read_records(path, check_files=kw.pop("check_files", False), **kw)
    return str(exc.value)


def test_data_error_is_user_error():
    assert issubclass(DataError, UserError)


@pytest.mark.parametrize(
    "bad_line, field, hint",
    [
        ('{"image_path": "x.png", "label": 0', None, "invalid JSON"),
        ("[1, 2]", None, "expected a JSON object"),
        ('{"label": 0, "class_name": "a"}', "image_path", "missing field"),
        ('{"image_path": "x.png", "class_name": "a"}', "label", "missing field"),
        ('{"image_path": "x.png", "label": 0}', "class_name", "missing field"),
        ('{"image_path": 3, "label": 0, "class_name": "a"}', "image_path", "non-empty string"),
        ('{"image_path": "x.png", "label": 0, "class_name": ""}', "class_name", "non-empty string"),
        ('{"image_path": "x.png", "label": "0", "class_name": "a"}', "label", "integer 0"),
        ('{"image_path": "x.png", "label": true, "class_name": "a"}', "label", "integer 0"),
        ('{"image_path": "x.png", "label": 2, "class_name": "a"}', "label", "got 2"),
        ('{"image_path": "x.png", "label": 1, "class_name": "a", "mask_path": ""}', "mask_path", "string or null"),
        ('{"image_path": "x.png", "label": 0, "class_name": "a", "mask_path": 5}', "mask_path", "string or null"),
    ],
)
def test_validation_errors_name_file_line_and_field(tmp_path, bad_line, field, hint):
    # The bad record is on line 3 (line 2 is blank and skipped, but still counted).
    path = _write_lines(tmp_path / "r.jsonl", [json.dumps(GOOD), "", bad_line])
    msg = _error(path)
    assert f"{path}:3" in msg
    assert hint in msg
    if field is not None:
        assert f"'{field}'" in msg


def test_validate_record_direct():
    rec = validate_record(dict(BAD), 7)
    assert rec == Record("a/1.png", 1, "a", "a/1_mask.png")
    with pytest.raises(DataError, match=r"line 7: missing field 'label'"):
        validate_record({"image_path": "x", "class_name": "a"}, 7)


def test_normal_without_mask_field_and_extra_fields(tmp_path, caplog):
    path = _write_lines(
        tmp_path / "r.jsonl",
        [
            '{"image_path": "n.png", "label": 0, "class_name": "c", "note": "x"}',
            '{"image_path": "m.png", "label": 0, "class_name": "c", "note": "y", "score": 1}',
        ],
    )
    with caplog.at_level(logging.DEBUG, logger="aaclip.data.records"):
        recs = read_records(path, check_files=False)
    assert recs == [Record("n.png", 0, "c"), Record("m.png", 0, "c")]
    unknown = [r.getMessage() for r in caplog.records if "unknown field" in r.getMessage()]
    # Each unknown field is mentioned once: 'note' on line 1, 'score' on line 2.
    assert len(unknown) == 2
    assert "note" in unknown[0] and "note" not in unknown[1] and "score" in unknown[1]


def test_anomalies_may_carry_image_level_labels_only(tmp_path):
    """A defective photo without a mask is a valid record; only its image-level label is known."""
    path = _write_lines(tmp_path / "r.jsonl", [
        json.dumps(GOOD), json.dumps(BAD),
        '{"image_path": "a/2.png", "label": 1, "class_name": "a"}',
        '{"image_path": "a/3.png", "label": 1, "class_name": "a", "mask_path": null}'])
    recs = read_records(path, check_files=False)
    assert recs[2] == Record("a/2.png", 1, "a") and recs[3] == Record("a/3.png", 1, "a")
    assert [r.pixels_known for r in recs] == [True, True, False, False]
    assert masked_counts(recs) == {"a": 1} and class_counts(recs) == {"a": (1, 3)}


def test_empty_file_is_an_error(tmp_path):
    path = _write_lines(tmp_path / "r.jsonl", ["", "  "])
    msg = _error(path)
    assert "no records" in msg and str(path) in msg


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match="records file not found"):
        read_records(tmp_path / "nope.jsonl")


def test_files_checked_against_root(tmp_path):
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    (data / "a" / "0.png").write_bytes(b"x")
    (data / "a" / "1.png").write_bytes(b"x")
    path = _write_lines(tmp_path / "r.jsonl", [json.dumps(GOOD), json.dumps(BAD)])
    # Default root is the file's folder: the image is not there.
    msg = _error(path, check_files=True)
    assert f"{path}:1" in msg and "'image_path'" in msg and str(tmp_path / "a" / "0.png") in msg
    # With the right root the image of line 2 exists but its mask does not.
    msg = _error(path, check_files=True, root=data)
    assert f"{path}:2" in msg and "'mask_path'" in msg and str(data / "a" / "1_mask.png") in msg
    (data / "a" / "1_mask.png").write_bytes(b"x")
    assert len(read_records(path, root=data)) == 2


def test_round_trip_and_atomic_write(tmp_path):
    recs = [Record("b/0.png", 0, "b"), Record("a/1.png", 1, "a", "a/m.png"), Record("a/2.png", 0, "a", None)]
    out = tmp_path / "sub" / "r.jsonl"
    write_records(out, recs)
    assert read_records(out, check_files=False) == recs
    lines = out.read_text().splitlines()
    assert json.loads(lines[1]) == {"image_path": "a/1.png", "label": 1, "class_name": "a", "mask_path": "a/m.png"}
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.jsonl"]  # no temp file left

    class Boom(Exception):
        pass

    def bad_iter():
        yield recs[0]
        raise Boom

    with pytest.raises(Boom):
        write_records(out, bad_iter())
    assert read_records(out, check_files=False) == recs  # old content intact
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.jsonl"]


def test_helpers(tmp_path):
    recs = [Record("x", 0, "b"), Record("y", 1, "a", "m"), Record("z", 0, "a"), Record("w", 1, "b", "m2")]
    assert class_names(recs) == ["a", "b"]
    assert class_counts(recs) == {"a": (1, 1), "b": (1, 1)}
    assert resolve(tmp_path, "a/b.png") == tmp_path / "a" / "b.png"
    assert resolve(tmp_path, "/abs/c.png") == Path("/abs/c.png")
    moved = rebase([Record("c/x.png", 1, "c", "c/m.png")], tmp_path / "data", tmp_path / "out")
    assert moved == [Record("../data/c/x.png", 1, "c", "../data/c/m.png")]
    assert rebase(recs, tmp_path, tmp_path) == recs
