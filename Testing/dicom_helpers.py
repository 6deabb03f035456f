"""Shared by the DICOM tests: the real pipeline with an untrained bundle and nnU-Net's stand-in (fast on CPU), run
through the real command line, and dciodvfy (Debian dicom3tools) as the judge of every object written."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import conftest
from LungNoduleExplainLib import cli

from test_cli_analyze import point_arg, threshold_segmenter


def untrained_bundle(folder: Path) -> Path:
    """conftest's untrained bundle, its prior nnU-Net's (as the analysis feeds it)."""
    return conftest.untrained_bundle(folder, prior="nnunet")


def centroid_lps(ct_dir: Path, patient: str) -> str:
    """--point value of the patient's nodule centroid (LPS mm, nodules.json)."""
    nodules = {n["patient_id"]: n for n in json.loads((ct_dir / "nodules.json").read_text())}
    return point_arg(nodules[patient]["centroid_lps_mm"])


def run_analyze(argv: list[str], bundle: Path, client_factory=None) -> int:  # noqa: ANN001
    """`lungnodule-explain --quiet analyze ARGV --model BUNDLE` with the real Analyzer and the stand-in segmenter."""
    from LungNoduleExplainLib import analysis

    def factory(bundle, device, progress):  # noqa: ANN001
        return analysis.Analyzer(bundle, device="cpu", progress=progress, segmenter=threshold_segmenter())

    args = cli.build_parser().parse_args(["--quiet", "analyze", *argv, "--model", str(bundle)])
    return args.func(args, analyzer_factory=factory, client_factory=client_factory)


def dciodvfy_errors(path: Path) -> list[str]:
    """The 'Error' lines dciodvfy prints about a DICOM file (warnings are allowed: e.g. the private coding
    scheme is rightly unknown to it)."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed; .ci/run installs it")
    result = subprocess.run([tool, "-new", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
