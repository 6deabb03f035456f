"""Label rules, task configurations, the nodule table and patient splits."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from LungNoduleExplainLib.data.patches import build_patch_set
from LungNoduleExplainLib.data.voi_table import patient_folds, patient_split, read_voi_table
from LungNoduleExplainLib.errors import ConfigError, DatasetError
from LungNoduleExplainLib.patch import INPUT_CHANNELS
from LungNoduleExplainLib.tasks import Task, TaskSet, load_task_set


def test_lidc_malignancy_rule_leaves_rating_3_out() -> None:
    malignant = load_task_set("lidc").diagnosis
    assert [malignant.label(v) for v in (1, 2, 3, 4, 5)] == [0, 0, None, 1, 1]
    assert malignant.label("4.0") == 1 and malignant.label("") is None and malignant.label(float("nan")) is None


def test_lidc_manifestations_are_named_by_the_finding_and_follow_their_ratings() -> None:
    ts = load_task_set("lidc")
    assert ts.names == ["malignant", "obvious", "calcified", "non_solid", "round", "ill_defined_margin",
                        "lobulated", "spiculated"]
    row = {"malignancy": 2, "subtlety": 5, "calcification": 6, "texture": 1, "sphericity": 3, "margin": 5,
           "lobulation": 1, "spiculation": 4}
    assert ts.labels(row) == [0, 1, 0, 1, 0, 0, 0, 1]


def test_a_hospital_task_set_is_just_another_configuration(tmp_path: Path) -> None:
    ts = load_task_set("inhouse-example")
    assert ts.diagnosis.label("MPL") == 1 and ts.diagnosis.label("SOL") == 0 and ts.diagnosis.label("other") is None
    path = tmp_path / "tasks.json"
    ts.save(path)
    assert load_task_set(path) == ts


def test_readers_share_is_the_training_target_and_the_label_stays_the_mode() -> None:
    task = Task("malignant", "malignancy", (4, 5), (1, 2), readers_column="malignancy_reader_ratings")
    # mode 2 under the ties-to-lower rule, though two of three committed readers said 4-5 (the reader at 3 is out)
    row = {"malignancy": 2, "malignancy_reader_ratings": "4;5;3;2"}
    assert task.label(row["malignancy"]) == 0 and task.target(row) == pytest.approx(2 / 3)
    # a mode of 3 is left out of the label, but the readers who committed still make a target
    assert task.target({"malignancy": 3, "malignancy_reader_ratings": "4;4;3;3"}) == 1.0
    assert task.target({"malignancy": 3, "malignancy_reader_ratings": "3;3;3"}) is None
    # no readers' cell (or no readers column): the target is the label
    assert task.target({"malignancy": 5, "malignancy_reader_ratings": ""}) == 1.0
    assert Task("m", "malignancy", (4, 5), (1, 2)).target(row) == 0.0
    with pytest.raises(ValueError, match="malignancy_reader_ratings"):
        task.target({"malignancy": 2, "malignancy_reader_ratings": "4;five"})
    assert Task.from_dict(task.to_dict()) == task and "readers_column" not in Task("m", "c", (1,), (0,)).to_dict()


@pytest.mark.parametrize("bad, message", [
    ({"name": "x", "column": "c", "positive": [1], "negative": [1]}, "both positive and negative"),
    ({"name": "x", "column": "c", "positive": [], "negative": [0]}, "at least one value"),
    ({"name": "x y", "column": "c", "positive": [1], "negative": [0]}, "letters, digits"),
    ({"name": "x", "positive": [1], "negative": [0]}, "missing field"),
    # a bare string would be split into its letters, a number would not iterate
    ({"name": "x", "column": "c", "positive": "yes", "negative": ["no"]}, "'positive' must be a list"),
    ({"name": "x", "column": "c", "positive": [1], "negative": 0}, "'negative' must be a list"),
    # 'none' / 'NA' cells mean unknown, so such a rule value would never match: say so instead of dropping it
    ({"name": "x", "column": "c", "positive": ["present"], "negative": ["0", "none"]}, "mean an unknown value"),
    # a misspelt key would be ignored and the output silently trained on its label
    ({"name": "x", "column": "c", "positive": [1], "negative": [0], "readers_colum": "r"}, "unknown field"),
])
def test_invalid_task_definitions_are_rejected_with_the_reason(bad: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Task.from_dict(bad)


def test_duplicate_output_names_and_unknown_task_sets_are_rejected(tmp_path: Path) -> None:
    t = Task("a", "c", (1,), (0,))
    with pytest.raises(ConfigError, match="unique"):
        TaskSet("s", t, (t,))
    with pytest.raises(ConfigError, match="neither a built-in"):
        load_task_set(tmp_path / "missing.json")
    (tmp_path / "typo.json").write_text('{"diagnosis": {"name": "a", "column": "c", "positive": [1], '
                                        '"negative": [0]}, "manifestation": []}')
    with pytest.raises(ConfigError, match="unknown field.*manifestation"):  # would give no manifestations
        load_task_set(tmp_path / "typo.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_task_set(tmp_path / "bad.json")


def _records(n_patients: int, per_patient: int):
    from LungNoduleExplainLib.data.voi_table import NoduleRecord
    return [NoduleRecord(f"p{p}_{k}", f"p{p}", Path("x"), Path("y"), (0.0, 0.0, 0.0), 5.0, {})
            for p in range(n_patients) for k in range(per_patient)]


def test_patient_split_puts_no_patient_on_both_sides() -> None:
    records = _records(50, 3)
    train, held = patient_split(records, 0.2, seed=1)
    assert sorted(train + held) == list(range(len(records)))
    assert not {records[i].patient_id for i in train} & {records[i].patient_id for i in held}
    assert len({records[i].patient_id for i in held}) == 10
    assert patient_split(records, 0.0, seed=1) == (list(range(len(records))), [])  # fraction 0: nobody held out


def test_patient_folds_partition_the_nodules_and_keep_each_patient_in_one_fold() -> None:
    records = _records(23, 2)
    folds = patient_folds(records, 5, seed=0)
    assert sorted(i for f in folds for i in f) == list(range(len(records)))
    owners = [{records[i].patient_id for i in f} for f in folds]
    assert all(not (a & b) for i, a in enumerate(owners) for b in owners[i + 1:])


def test_real_lidc_table_reads_and_every_output_has_both_classes(voi_dir: Path) -> None:
    ts = load_task_set("lidc")
    records = read_voi_table(voi_dir, ts)
    assert len(records) == 672 and len({r.patient_id for r in records}) == 386
    labels = np.array([[np.nan if y is None else y for y in r.labels(ts)] for r in records])
    assert np.all(np.nansum(labels == 1, axis=0) > 20) and np.all(np.nansum(labels == 0, axis=0) > 20)


def _copy_table(voi_dir: Path, dest: Path, n: int, drop_column: str | None = None) -> Path:
    rows = list(csv.DictReader((voi_dir / "nodules.csv").open()))[:n]
    dest.mkdir()
    for sub in ("images", "masks"):
        (dest / sub).mkdir()
    for row in rows:
        for key in ("image", "mask"):
            shutil.copy(voi_dir / row[key], dest / row[key])
    fields = [f for f in rows[0] if f != drop_column]
    with (dest / "nodules.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return dest


def test_a_table_missing_a_label_column_is_an_error_naming_the_column(voi_dir: Path, tmp_path: Path) -> None:
    folder = _copy_table(voi_dir, tmp_path / "d", 3, drop_column="spiculation")
    with pytest.raises(DatasetError, match="spiculation"):
        read_voi_table(folder, load_task_set("lidc"))


def test_real_readers_ratings_become_targets_and_a_bad_cell_stops_training_naming_the_case(
        voi_dir: Path, tmp_path: Path) -> None:
    folder = _copy_table(voi_dir, tmp_path / "d", 4)
    lidc = load_task_set("lidc")
    task_set = TaskSet.from_dict({**lidc.to_dict(), "diagnosis": {
        **lidc.diagnosis.to_dict(), "readers_column": "malignancy_reader_ratings"}})
    records = read_voi_table(folder, task_set)
    # LIDC-IDRI-0001_R_1 and 0003_R_2 have no readers' cell (mode 5); 0003_R_3 and _R_4 have 4;4;3;2 (mode 4)
    # and 4;5;3;2 (mode 2): different labels, the same readers' share
    assert [r.labels(task_set)[0] for r in records] == [1, 1, 1, 0]
    assert [r.targets(task_set)[0] for r in records] == pytest.approx([1.0, 1.0, 2 / 3, 2 / 3])
    rows = [r.row for r in records]
    rows[1]["malignancy_reader_ratings"] = "4;?;2"
    with (folder / "nodules.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    records = read_voi_table(folder, task_set)
    with pytest.raises(DatasetError, match=r"case LIDC-IDRI-0003_R_2: .*malignancy_reader_ratings.*4;\?;2"):
        build_patch_set(records, task_set, channels=INPUT_CHANNELS, training_targets=True)  # training stops before cutting patches
    evaluated = build_patch_set(records, task_set, channels=INPUT_CHANNELS)  # evaluation never reads the readers' cells
    assert evaluated.targets is evaluated.labels and evaluated.labels[:, 0].tolist() == [1, 1, 1, 0]


def test_a_missing_image_is_an_error_naming_the_file(voi_dir: Path, tmp_path: Path) -> None:
    folder = _copy_table(voi_dir, tmp_path / "d", 3)
    victim = sorted((folder / "images").iterdir())[0]
    victim.unlink()
    with pytest.raises(DatasetError, match=victim.name):
        read_voi_table(folder, load_task_set("lidc"))


def test_a_nrrd_without_spacing_is_refused_instead_of_read_as_1_mm(tmp_path: Path) -> None:
    from LungNoduleExplainLib.errors import InputImageError
    from LungNoduleExplainLib.volume import read_ct
    voxels = (np.random.default_rng(0).random((8, 8, 8)) * 1400 - 1000).astype("<i2")
    path = tmp_path / "no_spacing.nrrd"
    path.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 8 8 8\nencoding: raw\nendian: little\n\n"
                     + voxels.tobytes())
    with pytest.raises(InputImageError, match="spacing in mm is missing"):
        read_ct(path)
    import SimpleITK as sitk
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing((0.7, 0.7, 1.25))
    sitk.WriteImage(image, str(tmp_path / "ok.nrrd"))
    assert read_ct(tmp_path / "ok.nrrd").GetSpacing() == (0.7, 0.7, 1.25)
