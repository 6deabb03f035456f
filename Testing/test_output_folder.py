"""One rule for every verb's output folder (output_folder): a non-empty folder only with --overwrite, and then only
one this program wrote; resumable verbs continue only their own folder. Nothing of anyone else's is deleted."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conftest import untrained_bundle
from LungNoduleExplainLib.cli import main
from LungNoduleExplainLib.errors import OutputExistsError
from LungNoduleExplainLib.output_folder import (MARKER, check_output_folder, is_ours, new_folder, replace_folder,
                                               staging_folder)


def _someone_elses(folder: Path) -> Path:
    folder.mkdir()
    (folder / "thesis.docx").write_text("years of work")
    return folder


def test_an_absent_or_empty_folder_is_taken_and_a_replaced_one_is_marked(tmp_path):
    check_output_folder(tmp_path / "new", overwrite=False)
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty", overwrite=False)
    staging = staging_folder(tmp_path / "empty")
    (staging / "result.txt").write_text("1")
    replace_folder(staging, tmp_path / "empty", verb="test")
    assert is_ours(tmp_path / "empty") and (tmp_path / "empty" / "result.txt").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no staging or previous folder left


def test_overwrite_replaces_only_a_folder_this_program_wrote(tmp_path):
    mine = _someone_elses(tmp_path / "mine")
    with pytest.raises(OutputExistsError, match="not empty.*--overwrite"):
        check_output_folder(mine, overwrite=False)
    with pytest.raises(OutputExistsError, match=f"only a folder that lungnodule-explain wrote.*{MARKER}"):
        check_output_folder(mine, overwrite=True)
    with pytest.raises(OutputExistsError, match="cannot be continued"):
        check_output_folder(mine, overwrite=False, resume=True)
    assert (mine / "thesis.docx").read_text() == "years of work"


def test_analyze_overwrite_keeps_an_unrelated_folder_and_replaces_its_own(tmp_path, capsys):
    from test_cli_analyze import run_with_fake  # the FakeAnalyzer: no model needed
    from LungNoduleExplainLib.phantom import make_phantom_ct
    import SimpleITK as sitk

    phantom = make_phantom_ct(seed=5, size=(96, 96, 48), diameter_mm=8.0, n_vessels=6)
    ct = tmp_path / "ct.nrrd"
    sitk.WriteImage(phantom.ct, str(ct))
    point = ",".join(f"{v:.3f}" for v in phantom.nodule_center_lps)
    other = _someone_elses(tmp_path / "other")
    assert main(["--quiet", "analyze", str(ct), "--lps", "--point", point, "--out", str(other), "--overwrite"]) == 2
    assert "nothing was deleted" in capsys.readouterr().err
    assert (other / "thesis.docx").exists()
    out = tmp_path / "out"
    argv = ["analyze", str(ct), "--lps", "--point", point, "--out", str(out)]
    assert run_with_fake(argv) == 0 and is_ours(out)
    assert run_with_fake([*argv, "--overwrite"]) == 0 and (out / "report.html").is_file()


def test_evaluate_refuses_a_non_empty_out_unless_asked_and_then_only_its_own(voi_dir, tmp_path, capsys):
    bundle = untrained_bundle(tmp_path / "bundle")
    rows = list(csv.DictReader((voi_dir / "nodules.csv").open()))
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    picked = [r for r in rows if r["malignancy"] in ("1", "2")][:3] + [r for r in rows if r["malignancy"] == "5"][:3]
    for row in picked:
        for column in ("image", "mask"):
            (data / row[column]).write_bytes((voi_dir / row[column]).read_bytes())
    with (data / "nodules.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(picked)
    argv = ["--quiet", "evaluate", "--data", str(data), "--model", str(bundle), "--prior", "reference-mask",
            "--device", "cpu", "--bootstrap", "10", "--out"]
    other = _someone_elses(tmp_path / "other")
    assert main([*argv, str(other)]) == 2 and main([*argv, str(other), "--overwrite"]) == 2
    assert (other / "thesis.docx").exists() and not (other / "metrics.json").exists()
    out = tmp_path / "eval"
    assert main([*argv, str(out)]) == 0 and (out / "metrics.json").is_file()
    assert main([*argv, str(out)]) == 2  # an earlier evaluation is not overwritten without being asked
    assert main([*argv, str(out), "--overwrite"]) == 0 and is_ours(out)


def test_train_and_prepare_never_write_into_someone_elses_folder(tmp_path):
    from LungNoduleExplainLib.data.voi_writer import VoiFolderWriter
    from LungNoduleExplainLib.data.voi_table import REQUIRED_COLUMNS
    from LungNoduleExplainLib.output_folder import start_folder

    other = _someone_elses(tmp_path / "other")
    for overwrite, resume in ((False, False), (True, False), (False, True)):
        with pytest.raises(OutputExistsError):
            start_folder(other, "train", overwrite=overwrite, resume=resume)
    with pytest.raises(OutputExistsError):
        VoiFolderWriter(other, list(REQUIRED_COLUMNS), source="x")
    assert sorted(p.name for p in other.iterdir()) == ["thesis.docx"]
    run = tmp_path / "run"
    start_folder(run, "train", overwrite=False)
    (run / "checkpoint.pt").write_text("epoch 3")
    start_folder(run, "train", overwrite=False, resume=True)
    assert (run / "checkpoint.pt").exists()
    start_folder(run, "train", overwrite=True)
    assert is_ours(run) and not (run / "checkpoint.pt").exists()


def test_a_failing_folder_write_leaves_the_old_folder_intact_and_nothing_half_written_beside_it(tmp_path):
    out = tmp_path / "out"
    with new_folder(out, verb="test") as folder:
        (folder / "result.txt").write_text("first")
    with pytest.raises(RuntimeError, match="disk full"):
        with new_folder(out, verb="test") as folder:
            (folder / "result.txt").write_text("second, half")
            raise RuntimeError("disk full")
    assert (out / "result.txt").read_text() == "first" and is_ours(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_when_the_final_rename_fails_the_old_folder_is_renamed_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with new_folder(out) as folder:
        (folder / "result.txt").write_text("first")
    rename = Path.rename

    def staging_cannot_move(self, target):  # noqa: ANN001, ANN202
        if self.name.endswith(".partial"):
            raise PermissionError(f"cannot rename {self}")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", staging_cannot_move)
    with pytest.raises(PermissionError):
        with new_folder(out) as folder:
            (folder / "result.txt").write_text("second")
    assert (out / "result.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging, no previous folder


def test_a_bundle_that_fails_half_way_leaves_the_old_bundle_and_nothing_beside_it(tmp_path):
    from LungNoduleExplainLib.bundle import load_bundle, read_manifest, save_bundle

    old = load_bundle(untrained_bundle(tmp_path / "bundle"))
    with pytest.raises(FileNotFoundError):  # the weights are written, then the segmentation folder is missing
        save_bundle(old.path, old.model, old.task_set, old.network, old.thresholds, name="second",
                    prior="reference-mask", training={}, metrics={}, segmentation_dir=tmp_path / "missing")
    assert read_manifest(old.path) == old.manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
