"""kit.submission: atomic writing, the empty-row convention and validation, as a CLI too."""
import numpy as np
import pytest

from kit import rle
from kit.submission import (SubmissionError, read_predictions, submission_writer, validate_submission,
                            write_submission)
from tests.conftest import run_module

SHAPE = (6, 8)


def write(path, text):
    path.write_text(text)
    return path


def test_write_round_trip_and_empty_row(tmp_path):
    labels = np.zeros(SHAPE, np.int32)
    labels[0, :3] = 4
    labels[5, 7] = 9
    out = write_submission({"a": labels, "c": ["1 2"]}, tmp_path / "sub.csv", ids=["a", "b", "c"])
    assert out.read_text() == "id,predicted\na,1 3\na,48 1\nb,\nc,1 2\n"
    assert read_predictions(out) == {"a": ["1 3", "48 1"], "b": [], "c": ["1 2"]}
    assert validate_submission(out, ["a", "b", "c"], shape=SHAPE)["b"] == []
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]  # no temp file left behind


def test_write_refuses_unknown_id_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="not in `ids`"):
        write_submission({"zzz": []}, tmp_path / "sub.csv", ids=["a"])
    assert list(tmp_path.iterdir()) == []


def test_streamed_rows_are_on_disk_before_the_end_and_renamed_only_at_the_end(tmp_path):
    labels = np.zeros(SHAPE, np.int32)
    labels[1, 2:4] = 3
    out = tmp_path / "oof.csv"
    with submission_writer(out, ["a", "b", "c"]) as add:
        add("c", labels)
        add("a", [])
        with pytest.raises(ValueError, match="'c' is given predictions twice"):
            add("c", ["1 2"])
        with pytest.raises(ValueError, match="'zzz', which is not among the expected ids"):
            add("zzz", [])
        (temp_file,) = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert temp_file.read_text().startswith("id,predicted\nc,11 2\na,\n")  # already written
    assert out.read_text() == "id,predicted\nc,11 2\na,\nb,\n"  # b: never added, empty row last
    assert not temp_file.exists() and [p.name for p in tmp_path.iterdir()] == ["oof.csv"]
    with pytest.raises(RuntimeError):
        with submission_writer(tmp_path / "half.csv", ["a"]) as add:
            add("a", labels)
            raise RuntimeError("the model failed half way")
    assert [p.name for p in tmp_path.iterdir()] == ["oof.csv"]  # nothing half-written


def test_failed_write_keeps_old_file(tmp_path):
    path = write(tmp_path / "sub.csv", "id,predicted\na,\n")
    with pytest.raises(ValueError):
        write_submission({"a": ["1 1"], "b": np.array([[0, -1]])}, path, ids=["a", "b"])
    # the old file stays untouched, no partial or temp file
    text = path.read_text()
    assert text == "id,predicted\na,\n"
    assert len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("text, message", [
    ("image,predicted\na,\n", r"line 1 \(header\): missing column\(s\) \['id'\]"),
    ("id,predicted,score\na,,1\n", r"line 1 \(header\): must be exactly 'id,predicted'"),
    ("id,predicted\na,1 2 3\n", r"line 2 \(id a\), field 'predicted': token 3: odd number of tokens"),
    ("id,predicted\na,1 1\na,48 2\n", r"line 3 \(id a\), field 'predicted': .*past the image end"),
    ("id,predicted\nb,\n", r"1 test id\(s\) have no row: \['a'\]"),
    ("id,predicted\na,\nq,\n", r"not test ids: \['q'\]"),
    ("id,predicted\na,1 5\na,2 2\n", r"id a: masks on lines 2 and 3 overlap \(e.g. at row 0, col 1\)"),
    ("id,predicted\na,1 1,extra\n", "line 2: 3 fields, the header has 2"),
])
def test_validation_errors(tmp_path, text, message):
    path = write(tmp_path / "sub.csv", text)
    with pytest.raises(SubmissionError, match=message):
        validate_submission(path, ["a"], shape=SHAPE)


def test_cli_validates_against_sample_submission(tmp_path):
    sample = write(tmp_path / "sample_submission.csv", "id,predicted\na,\nb,\n")
    good = write(tmp_path / "good.csv", f"id,predicted\na,{rle.encode(np.eye(520, 704, dtype=bool))}\nb,\n")
    done = run_module("kit.submission", good, "--sample", sample)
    assert done.returncode == 0 and "valid (2 images, 1 masks)" in done.stdout
    bad = write(tmp_path / "bad.csv", "id,predicted\na,1 10\na,5 1\n")
    done = run_module("kit.submission", bad, "--sample", sample)
    assert done.returncode == 1
    assert "masks on lines 2 and 3 overlap" in done.stderr and "['b']" in done.stderr


def test_cli_on_competition_dir(synth_dir, tmp_path):
    sample = (synth_dir / "sample_submission.csv").read_text()
    done = run_module("kit.submission", synth_dir / "sample_submission.csv", "--data", synth_dir)
    assert done.returncode == 0, done.stderr
    assert f"valid ({len(sample.splitlines()) - 1} images, 0 masks)" in done.stdout
