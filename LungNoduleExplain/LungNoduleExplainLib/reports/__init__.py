"""Reports: write Findings to a folder of JSON, NRRD images on the CT grid, PNG overlays and one HTML page.

Layout of `out_dir` (built in a temporary folder beside it and renamed into place, so a failure leaves nothing
half-written):

    report.html                 self-contained (overlays embedded), the page a radiologist opens
    findings.json               index: title, source, the research notice, each nodule's summary and folder
    <extra images>              e.g. phantom_ct.nrrd for the demo
    nodule-01/finding.json      the notice, Finding.summary(), the CT grid, the nodule's region, relative paths of
                                every file below
    nodule-01/segmentation.nrrd               uint8, 1 = nodule
    nodule-01/segmentation_probability.nrrd   float32 in [0, 1]
    nodule-01/maps/<output>.nrrd              float32 in [0, 1], one per output
    nodule-01/overlays/<output>.png           axial, coronal, sagittal through the nodule centre

The three kinds of NRRD cover the nodule's region only: the box of the maps (the classifier's patch) and of the
segmented nodule, on the CT's own grid (an aligned sub-grid: the CT's spacing and direction, origin at the box's
corner; region.py), so a viewer overlays them on the CT without resampling. finding.json's `region` gives the
box in CT voxel indices; region.on_full_grid spreads an image back over the whole CT.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from ..errors import OutputExistsError
from ..finding import Finding
from ..output_folder import check_output_folder, new_folder
from ..nodule_check import NoNodule
from ..progress import Progress
from ..region import Box, box_in, fit, nodule_box
from ..study import StudyInfo
from .html import PHANTOM_NOTICE, RESEARCH_NOTICE, NoduleSection, render_report
from .overlays import OverlayRenderer, PlaneStack

logger = logging.getLogger(__name__)

__all__ = ["write_findings", "add_report", "ReportInterrupted", "finding_files", "OutputExistsError", "check_on_grid",
           "check_out_dir", "RESEARCH_NOTICE", "PHANTOM_NOTICE"]

REPORT_NAME = "report.html"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def write_findings(findings: Sequence[Finding], ct: sitk.Image, out_dir: str | Path, *,
                   title: str = "Lung nodule analysis", source: str = "CT given in memory",
                   is_phantom: bool = False, overwrite: bool = False,
                   extra_images: Mapping[str, sitk.Image] | None = None,
                   progress: Progress | None = None, study: StudyInfo | None = None, report: bool = True,
                   extra_writer: Callable[[Path], None] | None = None) -> Path:
    """Write every finding about `ct` into `out_dir`; return the path of `out_dir/report.html`.

    report=False leaves out the PNG overlays and report.html (most of the writing time): a viewer's files only,
    for the Slicer worker, which shows them first and writes the rest with `add_report` afterwards.

    source: how the CT was given (a path, or "synthetic phantom"), shown in the report. is_phantom: state in the
    report that the image is a synthetic phantom, not a patient. extra_images: file name -> image written at the
    top of `out_dir` (e.g. {"phantom_ct.nrrd": ct}). A non-empty existing `out_dir` is refused with
    OutputExistsError unless `overwrite`. Raises ValueError when a finding's images are not on the CT grid or a
    map leaves [0, 1]. A NoNodule entry (a point where no nodule was found) gets a folder with its finding.json
    (no_nodule_found, reason, nodule_check) and a "no nodule found" section in the report. study: patient, study date and series of a DICOM header (study.read_study_info), shown in
    the study card and written to findings.json and each finding.json; the caller puts study.title() in `title`.
    extra_writer(folder): writes more files into the folder before it is renamed into place (e.g. the DICOM
    results), so that they too are there in full or not at all.
    """
    if not findings:
        raise ValueError("write_findings needs at least one Finding")
    for index, finding in enumerate(findings, start=1):
        if not isinstance(finding, NoNodule):
            _check_finding(finding, ct, f"nodule {index}")
    for name in extra_images or {}:
        _check_file_name(name, "extra image")
    out_dir = Path(out_dir).absolute()
    check_out_dir(out_dir, overwrite)
    with new_folder(out_dir, verb="analyze") as staging:
        _write_all(staging, findings, ct, title=title, source=source, is_phantom=is_phantom,
                   extra_images=extra_images or {}, progress=progress or (lambda f, m: None), study=study,
                   report=report)
        if extra_writer is not None:
            extra_writer(staging)
    if report:
        logger.info("report written to %s", out_dir / REPORT_NAME)
    return out_dir / REPORT_NAME


class ReportInterrupted(Exception):
    """add_report stopped because `interrupted()` said so; nothing half-written is left."""


def nodule_folder(index: int) -> str:
    """The folder of nodule `index` (from 1, in point order) inside a report folder."""
    return f"nodule-{index:02d}"


def finding_files(out_dir: str | Path, count: int) -> list[Path]:
    """Where write_findings puts each of `count` nodules' finding.json, in point order."""
    return [Path(out_dir) / nodule_folder(i) / "finding.json" for i in range(1, count + 1)]


def add_report(findings: Sequence[Finding], ct: sitk.Image, out_dir: str | Path, *,
               title: str = "Lung nodule analysis", source: str = "CT given in memory", is_phantom: bool = False,
               study: StudyInfo | None = None, interrupted: Callable[[], bool] | None = None) -> Path:
    """The overlays and report.html of a folder that write_findings(report=False) wrote for the same findings;
    each finding.json gets its overlays' paths. report.html appears last and whole (renamed into place).
    interrupted(): asked before each overlay; True stops with ReportInterrupted (the worker has a click to answer
    first and writes the report again later), leaving only whole files and no report.html."""
    out_dir = Path(out_dir).absolute()
    sections = [NoduleSection(f, nodule_folder(i), {} if isinstance(f, NoNodule) else
                              _write_overlays(out_dir / nodule_folder(i), i, f, ct, interrupted))
                for i, f in enumerate(findings, start=1)]
    write_text_atomic(out_dir / REPORT_NAME, render_report(sections, ct, title=title, source=source,
                                                          is_phantom=is_phantom, study=study))
    logger.info("report written to %s", out_dir / REPORT_NAME)
    return out_dir / REPORT_NAME


def check_on_grid(image: sitk.Image, reference: sitk.Image, what: str) -> None:
    """Raise ValueError unless `image` has `reference`'s size, spacing, origin and direction."""
    checks = (("size", image.GetSize(), reference.GetSize()),
              ("spacing", image.GetSpacing(), reference.GetSpacing()),
              ("origin", image.GetOrigin(), reference.GetOrigin()),
              ("direction", image.GetDirection(), reference.GetDirection()))
    for field, got, expected in checks:
        if len(got) != len(expected) or not np.allclose(got, expected, atol=1e-4):
            raise ValueError(f"{what} is not on the CT grid: {field} {tuple(np.round(got, 4))} "
                             f"differs from the CT's {tuple(np.round(expected, 4))}")


def _check_finding(finding: Finding, ct: sitk.Image, where: str) -> None:
    """Every image on the CT's grid, over all of it or an aligned part of it (region.box_in)."""
    box_in(finding.segmentation, ct, f"{where}: segmentation")
    box_in(finding.segmentation_probability, ct, f"{where}: segmentation probability")
    names = [o.name for o in finding.outputs]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: output names repeat: {names}")
    for output in finding.outputs:
        _check_file_name(output.name, f"{where}: output name")
        box_in(output.activation_map, ct, f"{where}: map of {output.name!r}")
        values = sitk.GetArrayViewFromImage(output.activation_map)
        if not np.isfinite(values).all() or values.min() < -1e-6 or values.max() > 1 + 1e-6:
            raise ValueError(f"{where}: map of {output.name!r} has values outside [0, 1] "
                             f"(min {np.nanmin(values):g}, max {np.nanmax(values):g})")


def _check_file_name(name: str, what: str) -> None:
    if not _SAFE_NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r} cannot be a file name; use letters, digits, '_', '-' and '.'")


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """OutputExistsError unless `out_dir` may take a report (output_folder's one rule)."""
    check_output_folder(out_dir, overwrite=overwrite)


def _write_all(folder: Path, findings: Sequence[Finding], ct: sitk.Image, *, title: str, source: str,
               is_phantom: bool, extra_images: Mapping[str, sitk.Image], progress: Progress,
               study: StudyInfo | None = None, report: bool = True) -> None:
    for name, image in extra_images.items():
        _write_image(image, folder / name)
    sections = []
    for index, finding in enumerate(findings, start=1):
        progress((index - 1) / len(findings), f"writing nodule {index} of {len(findings)}")
        sections.append(_write_nodule(folder, index, finding, ct, source, study, overlays=report))
    progress(1.0, "writing report.html" if report else "written")
    index = {"title": title, "source": source, "study": study.to_json() if study else None,
             "is_phantom": is_phantom, "notice": RESEARCH_NOTICE,
             "engine_version": __version__, "generated_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(),
             "extra_files": sorted(extra_images),
             "nodules": [{"folder": s.folder, **s.finding.summary()} for s in sections]}
    write_json_atomic(folder / "findings.json", index)
    if report:
        (folder / REPORT_NAME).write_text(render_report(sections, ct, title=title, source=source,
                                                        is_phantom=is_phantom, study=study), encoding="utf-8")


def _write_nodule(root: Path, index: int, finding: Finding, ct: sitk.Image, source: str,
                  study: StudyInfo | None = None, overlays: bool = True) -> NoduleSection:
    name = nodule_folder(index)
    folder = root / name
    if isinstance(finding, NoNodule):  # only the reason and the facts: nothing was segmented or classified
        folder.mkdir()
        write_json_atomic(folder / "finding.json", {"nodule": index, "source": source, "notice": RESEARCH_NOTICE,
                                                    **finding.summary(), "files": {"finding": "finding.json"}})
        return NoduleSection(finding, name, {})
    (folder / "maps").mkdir(parents=True)
    files: dict = {"finding": "finding.json", "segmentation": "segmentation.nrrd",
                   "segmentation_probability": "segmentation_probability.nrrd", "maps": {}, "overlays": {}}
    region = nodule_box(ct, finding.segmentation, [o.activation_map for o in finding.outputs], finding.point_lps)
    _write_image(fit(sitk.Cast(finding.segmentation > 0, sitk.sitkUInt8), ct, region), folder / files["segmentation"])
    _write_image(fit(sitk.Cast(finding.segmentation_probability, sitk.sitkFloat32), ct, region),
                 folder / files["segmentation_probability"])
    for output in finding.outputs:
        files["maps"][output.name] = f"maps/{output.name}.nrrd"
        _write_image(fit(sitk.Cast(output.activation_map, sitk.sitkFloat32), ct, region),
                     folder / files["maps"][output.name])
    # the notice travels with each nodule's file too: it is often shared on its own
    body = {"nodule": index, "source": source, "study": study.to_json() if study else None, "notice": RESEARCH_NOTICE,
            **finding.summary(), "ct_grid": _grid(ct), "region": _region(ct, region), "files": files}
    write_json_atomic(folder / files["finding"], body)
    return NoduleSection(finding, name, _write_overlays(folder, index, finding, ct) if overlays else {})


def _write_overlays(folder: Path, index: int, finding: Finding, ct: sitk.Image,
                    interrupted: Callable[[], bool] | None = None) -> dict[str, bytes]:
    """overlays/<output>.png for every output, listed in the nodule's finding.json; returns the PNG bytes."""
    (folder / "overlays").mkdir(exist_ok=True)
    renderer = OverlayRenderer(PlaneStack.build(ct, finding.segmentation, finding.point_lps, finding.diameter_mm))
    overlays, paths = {}, {}
    for output in finding.outputs:
        if interrupted is not None and interrupted():
            raise ReportInterrupted(f"writing the report in {folder.parent} was interrupted")
        probability, threshold = output.shown
        caption = (f"Nodule {index} · {output.name}: probability {probability} "
                   f"({output.verdict}, threshold {threshold})")
        overlays[output.name] = renderer.render(output.activation_map, caption)
        paths[output.name] = f"overlays/{output.name}.png"
        write_bytes_atomic(folder / paths[output.name], overlays[output.name])
    body = json.loads((folder / "finding.json").read_text(encoding="utf-8"))
    body["files"]["overlays"] = paths
    write_json_atomic(folder / "finding.json", body)
    return overlays


def _region(ct: sitk.Image, box: Box) -> dict:
    start, stop = box
    return {"index_ijk": list(start), "size": [b - a for a, b in zip(start, stop)],
            "origin_lps_mm": list(ct.TransformIndexToPhysicalPoint(list(start)))}


def _grid(image: sitk.Image) -> dict:
    return {"size": list(image.GetSize()), "spacing_mm": list(image.GetSpacing()),
            "origin_lps_mm": list(image.GetOrigin()), "direction": list(image.GetDirection())}


def _write_image(image: sitk.Image, path: Path) -> None:
    sitk.WriteImage(image, str(path), useCompression=True)


