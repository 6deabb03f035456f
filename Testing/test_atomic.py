"""atomic.atomic_path, the one way the engine writes a file in place: the old file or the new one, never half of
one, and no temporary left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import SimpleITK as sitk

from LungNoduleExplainLib.atomic import atomic_path, write_bytes_atomic, write_json_atomic, write_text_atomic


class WriterFailed(Exception):
    pass


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_failing_write_leaves_the_old_file_intact_and_no_temporary_behind(tmp_path):
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"epoch 3")
    with pytest.raises(WriterFailed):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"epoch 4, half of it")
            raise WriterFailed
    assert target.read_bytes() == b"epoch 3"
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_a_failing_text_write_leaves_no_file_where_there_was_none(tmp_path):
    with pytest.raises(ValueError):  # strict JSON refuses NaN, after the temporary file was made
        write_json_atomic(tmp_path / "metrics.json", {"auc": float("nan")}, allow_nan=False)
    assert os.listdir(tmp_path) == []


def test_the_temporary_keeps_the_suffixes_so_writers_that_read_the_extension_write_that_format(tmp_path):
    image = sitk.Image(4, 3, 2, sitk.sitkInt16)
    with atomic_path(tmp_path / "LIDC-IDRI-0001_1.nii.gz") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.name.endswith(".nii.gz")
        sitk.WriteImage(image, str(tmp), True)
    with (tmp_path / "LIDC-IDRI-0001_1.nii.gz").open("rb") as fh:
        assert fh.read(2) == b"\x1f\x8b"  # gzip: the compressed NIfTI SimpleITK chose from ".nii.gz"
    assert os.listdir(tmp_path) == ["LIDC-IDRI-0001_1.nii.gz"]


def test_files_get_the_mode_a_plain_open_would_give(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    write_text_atomic(tmp_path / "new.csv", "a,b\n")
    (tmp_path / "plain.csv").write_text("a,b\n")
    assert _mode(tmp_path / "new.csv") == _mode(tmp_path / "plain.csv") == 0o666 & ~umask
    existing = tmp_path / "shared.png"
    existing.write_bytes(b"old")
    existing.chmod(0o640)
    write_bytes_atomic(existing, b"new")  # an existing file keeps its mode, as open("w") would keep it
    assert existing.read_bytes() == b"new" and _mode(existing) == 0o640


def test_the_temporaries_of_a_killed_writer_are_removed_and_only_those(tmp_path):
    from LungNoduleExplainLib.atomic import remove_leftovers

    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"last whole epoch")
    killed = [tmp_path / ".checkpoint.pt.k3j9x.tmp.pt", tmp_path / ".checkpoint.pt.a81zq.tmp.pt"]
    others = [tmp_path / ".history.csv.b2c4d.tmp.csv", tmp_path / "checkpoint.pt.bak"]
    for path in killed + others:
        path.write_bytes(b"half")
    assert remove_leftovers(target) == 2
    assert not any(p.exists() for p in killed) and all(p.exists() for p in others)
    assert target.read_bytes() == b"last whole epoch"
