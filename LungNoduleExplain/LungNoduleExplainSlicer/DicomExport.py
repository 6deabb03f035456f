"""Export to DICOM: the last analysis of a CT loaded from Slicer's DICOM database, written by the engine's writer
(LungNoduleExplainLib.dicom.export: the Segmentation, Parametric Maps and TID 1500 SR of `analyze --dicom`) and
imported into the database, where QuantitativeReporting and the DICOM browser show them beside the study.

The CT's DICOM files are found through the volume node's "DICOM.instanceUIDs" attribute (set by Slicer's DICOM
loader) and the database's fileForInstance; a CT that did not come from the database cannot be exported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"


def sourceFiles(ctNode, database) -> list[Path]:
    """The DICOM files of the CT volume node, from the database; ValueError saying why when there are none."""
    uids = (ctNode.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split()
    if not uids:
        raise ValueError(f"the CT '{ctNode.GetName()}' was not loaded from Slicer's DICOM database (no "
                         f"{INSTANCE_UIDS_ATTRIBUTE}); load the CT from the DICOM module to export DICOM results")
    files = [database.fileForInstance(uid) for uid in uids]
    missing = [uid for uid, path in zip(uids, files) if not path]
    if missing:
        raise ValueError(f"{len(missing)} of the CT's {len(uids)} images are no longer in the DICOM database "
                         f"(first: {missing[0]})")
    return [Path(f) for f in files]


def exportToDicom(resultDir: Path, ctNode, targetDir: str | Path, database=None,
                  importer: Callable[[str, object], None] | None = None) -> list[Path]:
    """Write the DICOM objects of the analysis in `resultDir` about `ctNode` into `targetDir` and import them into
    `database` (default: slicer.dicomDatabase) with `importer` (default: DICOMUtils.importDicom)."""
    try:
        from LungNoduleExplainLib.dicom.export import export_report
    except ImportError as exc:  # highdicom is not among the packages the module installs for analysis
        raise ValueError(f"Export to DICOM needs the package {exc.name or 'highdicom'}: run "
                         "slicer.util.pip_install('highdicom>=0.28') in Slicer's Python console, then retry") from exc

    if database is None:
        import slicer
        database = slicer.dicomDatabase
    if database is None:
        raise ValueError("Slicer has no DICOM database open; open one in the DICOM module first")
    written = export_report(resultDir, sourceFiles(ctNode, database), targetDir)
    if importer is None:
        from DICOMLib import DICOMUtils
        importer = DICOMUtils.importDicom
    importer(str(targetDir), database)
    return written
