"""Fakes of the engine's analysis and report writer for the worker and Slicer-logic tests.

`FakeAnalyzer` returns a small synthetic Finding on the CT grid (a sphere segmentation, one Gaussian map per
output over a box of +-20 mm around the point, as the real maps cover the classifier's patch only);
`fake_write_findings` writes the same file layout as `reports.write_findings` (images over the nodule's region). Run as a script it is
the worker with these fakes: `python fake_engine.py REQUEST.json`; environment variables FAKE_DELAY_S (seconds
per nodule, for cancel tests), FAKE_FAIL ("input" or "crash"), FAKE_NOISE=1 (print to stdout as libraries do)
FAKE_GRANDCHILD=1 (start a sleeping child process and log its pid, for process-tree kill tests) and
FAKE_REAL_PIPELINE=1 (the real Analyzer and reports with an untrained bundle given in the request), FAKE_NO_NODULE
("2" or "1,3": the points, counted from 1, where no nodule is found).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from LungNoduleExplainLib.errors import NoNoduleError, PointError
from LungNoduleExplainLib.nodule_check import NoduleCheck, NoNodule, refusal_message
from LungNoduleExplainLib.finding import Finding, OutputResult, mask_size
from LungNoduleExplainLib.region import fit, nodule_box, physical_box
from LungNoduleExplainLib.volume import point_to_lps

OUTPUTS = (("malignancy", "diagnosis", 0.5), ("spiculated", "manifestation", 0.4),
           ("calcified", "manifestation", 0.5))
RADIUS_MM = 6.0
MAP_HALF_WIDTH_MM = 20.0  # the maps' box around the point, like the real classifier's patch


def _on_ct_grid(array: np.ndarray, ct: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(ct)
    return image


def _distance_mm(ct: sitk.Image, centre_lps: np.ndarray) -> np.ndarray:
    """Distance of every voxel centre from centre_lps, as a [z, y, x] array (mm).

    With an orthonormal direction D: |origin + D (spacing * index) - c| = |spacing * index - D^T (c - origin)|,
    which separates per axis.
    """
    direction = np.asarray(ct.GetDirection()).reshape(3, 3)
    q = direction.T @ (np.asarray(centre_lps) - np.asarray(ct.GetOrigin()))
    i, j, k = ((np.arange(n) * s - c) ** 2 for n, s, c in zip(ct.GetSize(), ct.GetSpacing(), q))
    return np.sqrt(k[:, None, None] + j[None, :, None] + i[None, None, :]).astype(np.float32)


class FakeAnalyzer:
    """Same constructor and analyze() as analysis.Analyzer; probabilities depend on the point's x."""

    def __init__(self, bundle=None, device: str = "cpu", progress: Callable[[float, str], None] | None = None,
                 delay_s: float = 0.0, fail: str | None = None, no_nodule_at: Sequence[int] = ()):
        self.device, self.progress, self.delay_s, self.fail = device, progress or (lambda f, m: None), delay_s, fail
        self.no_nodule_at, self.calls = set(no_nodule_at), 0  # 1-based call numbers that find no nodule
        if fail == "load":
            raise RuntimeError("simulated failure loading the model")

    def analyze(self, ct: sitk.Image, point: Sequence[float], space: str = "ras", *,
                classify_anyway: bool = False) -> Finding:
        self.calls += 1
        check, warnings = None, []
        if self.calls in self.no_nodule_at:
            lps = point_to_lps(point, space, ct)
            check = NoduleCheck(False, "the nearest segmented structure is 7.8 mm from the point", False, 7.8,
                                0.0, 0.01, 5.0, 4.0, 33.5, -40.0, 0.9)
            if not classify_anyway:
                raise NoNoduleError(refusal_message(lps, check), check, tuple(float(v) for v in lps))
            warnings.append(f"NO NODULE FOUND at the point: {check.reason}. Classified anyway on request")
        if self.fail == "input":
            raise PointError(f"point {tuple(point)} lies in air far from any tissue")
        if self.fail == "crash":
            raise RuntimeError("simulated crash inside the model")
        lps = point_to_lps(point, space, ct)
        if os.environ.get("FAKE_NOISE"):
            print("noise from a library on stdout", flush=True)
            os.write(1, b"noise written straight to fd 1\n")
        if os.environ.get("FAKE_GRANDCHILD"):
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
            logging.getLogger("LungNoduleExplainLib.fake").info("grandchild pid %d", child.pid)
        for step in range(4):
            self.progress(step / 4, ("segmenting", "classifying", "explaining", "pasting back")[step])
            time.sleep(self.delay_s / 4)
        distance = _distance_mm(ct, lps)
        segmentation = _on_ct_grid((distance <= RADIUS_MM).astype(np.uint8), ct)
        probability = _on_ct_grid(np.clip(1.5 - distance / RADIUS_MM, 0, 1).astype(np.float32), ct)
        outputs = []
        corners = [np.asarray(lps) + MAP_HALF_WIDTH_MM * (2 * np.asarray(c) - 1) for c in np.ndindex(2, 2, 2)]
        map_box = physical_box(ct, corners) or ((0, 0, 0), (1, 1, 1))
        for n, (name, kind, threshold) in enumerate(OUTPUTS):
            blob = np.exp(-(distance / (RADIUS_MM * (1 + n))) ** 2).astype(np.float32)
            outputs.append(OutputResult(name=name, kind=kind, description=f"fake {name}",
                                        probability=float(0.2 + 0.3 * n), threshold=threshold,
                                        activation_map=fit(_on_ct_grid(blob, ct), ct, map_box),
                                        # three members around the probability: spiculated's straddle 0.4
                                        member_probabilities=[0.05 + 0.3 * n, 0.2 + 0.3 * n, 0.25 + 0.3 * n]))
        diameter, volume = mask_size(segmentation)
        return Finding(point_lps=tuple(float(v) for v in lps), outputs=outputs, segmentation=segmentation,
                       segmentation_probability=probability, diameter_mm=diameter, volume_mm3=volume,
                       model_name="fake", model_version="0", prior="nnunet", device=self.device,
                       warnings=warnings, nodule_check=check)


def fake_write_findings(findings: list[Finding], ct: sitk.Image, out_dir, *, title: str = "fake",
                        source: str = "", is_phantom: bool = False, progress=None) -> Path:
    """The layout of reports.write_findings, without PNGs."""
    out_dir = Path(out_dir)
    for index, finding in enumerate(findings):
        folder = out_dir / f"nodule-{index + 1:02d}"
        if isinstance(finding, NoNodule):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "finding.json").write_text(json.dumps(finding.summary(), indent=1))
            continue
        (folder / "maps").mkdir(parents=True, exist_ok=True)
        box = nodule_box(ct, finding.segmentation, [o.activation_map for o in finding.outputs], finding.point_lps)
        sitk.WriteImage(fit(finding.segmentation, ct, box), str(folder / "segmentation.nrrd"))
        sitk.WriteImage(fit(finding.segmentation_probability, ct, box), str(folder / "segmentation_probability.nrrd"))
        for output in finding.outputs:
            sitk.WriteImage(fit(output.activation_map, ct, box), str(folder / "maps" / f"{output.name}.nrrd"))
        files = {"finding": "finding.json", "segmentation": "segmentation.nrrd",  # as write_findings lists them
                 "segmentation_probability": "segmentation_probability.nrrd",
                 "maps": {o.name: f"maps/{o.name}.nrrd" for o in finding.outputs}}
        (folder / "finding.json").write_text(json.dumps({**finding.summary(), "files": files}, indent=1))
    report = out_dir / "report.html"
    report.write_text(f"<html><body><h1>{title}</h1>{len(findings)} nodules</body></html>")
    return report


def fake_worker_main(argv: list[str]) -> int:
    from LungNoduleExplainLib import worker
    if os.environ.get("FAKE_REAL_PIPELINE"):
        return untrained_worker_main(argv)
    delay_s = float(os.environ.get("FAKE_DELAY_S", "0"))
    fail = os.environ.get("FAKE_FAIL") or None
    no_nodule_at = [int(v) for v in os.environ.get("FAKE_NO_NODULE", "").split(",") if v]

    def factory(**kwargs) -> FakeAnalyzer:
        return FakeAnalyzer(**kwargs, delay_s=delay_s, fail=fail, no_nodule_at=no_nodule_at)

    return worker.main(argv, analyzer_factory=factory, findings_writer=fake_write_findings,
                       cuda_available=lambda: False)


def untrained_bundle(path: Path, name: str = "untrained-test") -> Path:
    """A bundle of an untrained small HESAM network with threshold 0.5 for every LIDC output (seeded): the real
    bundle format and Analyzer, for tests that must not wait for training."""
    import torch
    from LungNoduleExplainLib.bundle import save_bundle
    from LungNoduleExplainLib.networks import NetworkConfig, build_network
    from LungNoduleExplainLib.tasks import load_task_set

    task_set = load_task_set("lidc")
    network = NetworkConfig("hesam-mt-aag", (2, 4, 4, 8))
    torch.manual_seed(0)
    return save_bundle(path, build_network(network, len(task_set.manifestations)), task_set, network,
                       {n: 0.5 for n in task_set.names}, name=name, prior="nnunet", training={"note": "untrained"},
                       metrics={})


def untrained_worker_main(argv: list[str]) -> int:
    """The real worker, Analyzer and report writer; only the model is a stand-in: the request's bundle holds an
    untrained network and nnU-Net is replaced by test_cli_analyze's threshold segmenter."""
    from LungNoduleExplainLib import analysis, worker
    from test_cli_analyze import threshold_segmenter

    def factory(bundle, device, progress):
        return analysis.Analyzer(bundle, device=device, progress=progress, segmenter=threshold_segmenter())

    return worker.main(argv, analyzer_factory=factory)


if __name__ == "__main__":
    sys.exit(fake_worker_main(sys.argv[1:]))
