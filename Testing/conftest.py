"""Shared fixtures. Real data comes from one setting: LUNGNODULE_DATA (default ../shared/data from the repo root)."""

from __future__ import annotations

import getpass
import multiprocessing.util
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("LUNGNODULE_DATA", REPO_ROOT.parent / "shared" / "data"))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real LIDC data not found at {path} (set LUNGNODULE_DATA to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _require(DATA_DIR)


@pytest.fixture(scope="session")
def voi_dir() -> Path:
    return _require(DATA_DIR / "lidc-voi")


@pytest.fixture(scope="session")
def ct_dir() -> Path:
    return _require(DATA_DIR / "lidc-ct")


def untrained_bundle(folder: Path, *, prior: str = "reference-mask", name: str = "untrained-test") -> Path:
    """A real bundle (format, manifest, the lidc task set) around a small untrained network, seeded: for tests
    of everything but the weights."""
    import torch
    from LungNoduleExplainLib.bundle import save_bundle
    from LungNoduleExplainLib.networks import NetworkConfig, build_network
    from LungNoduleExplainLib.tasks import load_task_set

    task_set = load_task_set("lidc")
    network = NetworkConfig("hesam-mt-aag", (2, 4, 4, 8))
    torch.manual_seed(0)
    return save_bundle(folder, build_network(network, len(task_set.manifestations)), task_set, network,
                       {n: 0.5 for n in task_set.names}, name=name, prior=prior, training={"note": "untrained"},
                       metrics={})


# Tests that run the shipped nnU-Net, train nnU-Net, or train a classifier on real data: marked `slow`, so that a
# developer can run the rest alone (`python -m pytest -q Testing -m "not slow"`); CI runs everything.
SLOW_FIXTURES = {"real_analyzer", "lidc_report", "trained", "shipped_segmenter", "plateau_run"}
SLOW_TESTS = {"test_a_short_real_training_run_lowers_the_loss",
              "test_an_ensemble_run_keeps_the_validation_patients_out_of_every_member_and_resumes",
              "test_an_ensemble_run_without_validation_patients_trains_on_every_patient_and_reports_out_of_fold",
              "test_a_run_leaves_its_excluded_patients_out_of_training_and_validation",
              "test_the_ablation_trains_each_fold_through_train_run_and_predicts_it_with_the_bundle"}
SLOW_MODULES = {"test_distributed.py"}


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ANN001 (pytest's hook signature)
    for item in items:
        if (SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or item.originalname in SLOW_TESTS
                or item.path.name in SLOW_MODULES):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def private_temp_folder(tmp_path_factory):
    """The suite's temporary files (the code's and its subprocesses': TMPDIR is inherited) go to a private folder,
    removed at the end, so the system temp folder is left as it was found. What our code leaves there (the worker's
    session folders and anything else named LungNoduleExplain*: copies of patient data) fails the suite; what a
    library leaves is named in a warning. (pytest's own tmp_path folders stay in pytest's basetemp.)"""
    tmp_path_factory.getbasetemp()
    # this process's multiprocessing folder (pymp-*) stays in the system temp folder too: multiprocessing removes
    # it when pytest exits, after this check
    multiprocessing.util.get_temp_dir()
    system = tempfile.gettempdir()
    folder = Path(tempfile.mkdtemp(prefix="lungnodule-tests-"))
    saved = {name: os.environ.get(name) for name in ("TMPDIR", "TORCHINDUCTOR_CACHE_DIR")}, tempfile.tempdir
    # torch's compile cache is no patient data and is reused between runs: it stays where torch keeps it
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(system, f"torchinductor_{getpass.getuser()}"))
    os.environ["TMPDIR"], tempfile.tempdir = str(folder), str(folder)
    yield folder
    for name, value in saved[0].items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    tempfile.tempdir = saved[1]
    left = sorted(p.name for p in folder.iterdir())
    shutil.rmtree(folder, ignore_errors=True)
    ours = [name for name in left if name.lower().startswith("lungnoduleexplain")]
    if set(left) - set(ours):
        warnings.warn(f"libraries left {sorted(set(left) - set(ours))} in the temp folder (removed)")
    assert not ours, f"the tests left {ours} in the temp folder"
