"""benchmarks/ablation trains each (variant, fold) as `lungnodule-explain train` does (runs.train_run, the fold's
patients excluded) and takes the fold's predictions from the bundle that run wrote."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ABLATION = Path(__file__).resolve().parents[1] / "benchmarks" / "ablation" / "ablation.py"


def test_the_ablation_trains_each_fold_through_train_run_and_predicts_it_with_the_bundle(
        voi_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from LungNoduleExplainLib.bundle import load_bundle
    from LungNoduleExplainLib.networks import predict
    from LungNoduleExplainLib.tasks import load_task_set

    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts benchmarks/ on the path: undone after
    spec = importlib.util.spec_from_file_location("ablation", ABLATION)
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    args = ablation.parser().parse_args(["--data", str(voi_dir), "--out", str(tmp_path), "--folds", "2",
                                         "--limit-patients", "8", "--epochs", "1", "--features", "2,4,4,8",
                                         "--device", "cpu", "--threads", "2"])
    patches, folds, table_patients = ablation.cases(args, load_task_set("lidc"))
    assert len(set(patches.patient_ids)) == 8 and len(table_patients) > 8

    path = ablation.run_fold(args, "hesam-mt-aag", 1, patches, folds, table_patients, tmp_path)

    run = tmp_path / "hesam-mt-aag" / "run1"
    fold_patients = {patches.patient_ids[i] for i in folds[1]}
    trained = set(patches.patient_ids) - fold_patients
    split = json.loads((run / "split.json").read_text())  # train_run's own record of the run
    assert set(split["train_patients"]) | set(split["val_patients"]) == trained
    assert set(split["excluded_patients"]) == table_patients - trained
    saved = np.load(path)
    assert saved["index"].tolist() == folds[1]
    bundle = load_bundle(run / "bundle")
    test = patches.subset(folds[1])
    np.testing.assert_allclose(saved["probs"], predict(bundle.model, test, bundle.device, bundle.network.inputs))
    assert saved["probs"].shape == (len(folds[1]), len(bundle.output_names))
