"""Export to DICOM: analysed nodules of a CT loaded from Slicer's DICOM database, written by the engine's writer
(LungNoduleExplainLib.dicom.export: the Segmentation, Parametric Maps and TID 1500 SR of `analyze --dicom`) and
imported into the database, where QuantitativeReporting and the DICOM browser show them beside the study.

The CT's DICOM files are found through the volume node's "DICOM.instanceUIDs" attribute (set by Slicer's DICOM
loader) and the database's fileForInstance; a CT that did not come from the database cannot be exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"


class NotExportable(ValueError):
    """Export to DICOM cannot run here; the message says why and what the user can do."""


@dataclass
class DicomExported:
    """What an export added to the DICOM database, for the status line."""

    files: list[str]  # the objects' file names as written: SEG-1.dcm, PM-1.dcm ..., SR-1.dcm
    nodules: list[str]  # the nodules' names, as the objects label them
    patientID: str
    study: str  # the study's description or date
    databaseDirectory: str  # where the database keeps its copy ("" when the database does not say)

    def describe(self) -> str:
        maps = sum(name.startswith("PM-") for name in self.files)
        where = f" ({self.databaseDirectory})" if self.databaseDirectory else ""
        return (f"Added to Slicer's DICOM database{where}: a Segmentation, {maps} Parametric Maps and a Structured "
                f"Report (TID 1500) of {', '.join(self.nodules)}, in patient {self.patientID}'s study "
                f"{self.study}. Load them in the DICOM module; QuantitativeReporting shows the report.")


def notFromDatabase(ctNode) -> str | None:
    """Why `ctNode` cannot be exported as DICOM (it did not come from Slicer's DICOM database), or None."""
    if (ctNode.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split():
        return None
    return (f"the CT '{ctNode.GetName()}' was not loaded from Slicer's DICOM database (it has no "
            f"{INSTANCE_UIDS_ATTRIBUTE}: a NRRD/NIfTI file or the sample); DICOM results must refer to the CT's own "
            "DICOM images: import the series in the DICOM module, load it from there, analyse it, then export")


def sourceFiles(ctNode, database) -> list[Path]:
    """The DICOM files of the CT volume node, from the database; NotExportable saying why when there are none."""
    problem = notFromDatabase(ctNode)
    if problem:
        raise NotExportable(problem)
    uids = ctNode.GetAttribute(INSTANCE_UIDS_ATTRIBUTE).split()
    files = [database.fileForInstance(uid) for uid in uids]
    missing = [uid for uid, path in zip(uids, files) if not path]
    if missing:
        raise NotExportable(f"{len(missing)} of the CT's {len(uids)} images are no longer in the DICOM database "
                            f"(first: {missing[0]})")
    return [Path(f) for f in files]


def _importCopies(folder: str, database) -> bool:
    """Slicer's import, copying the files into the database's own folder (the written folder may then go)."""
    from DICOMLib import DICOMUtils
    return DICOMUtils.importDicom(folder, database, copyFiles=True)


def exportToDicom(nodules: Sequence[tuple[str, Path]], ctNode, targetDir: str | Path, database=None,
                  importer: Callable[[str, object], object] | None = None) -> DicomExported:
    """Write the DICOM objects of `nodules` ((name, nodule result folder) pairs, all analysed on `ctNode`) into
    `targetDir` (absent or empty) and import them into `database` (default: slicer.dicomDatabase) with
    `importer(folder, database)` (default: DICOMUtils.importDicom, copying the files; False means it failed)."""
    try:
        from LungNoduleExplainLib.dicom.export import export_nodules
    except ImportError as exc:
        raise NotExportable(f"Export to DICOM needs the package {exc.name or 'highdicom'}: press 'Install required "
                            "packages' in the module, then retry") from exc
    import pydicom  # highdicom's own dependency: there once the import above worked

    if database is None:
        import slicer
        database = slicer.dicomDatabase
    if database is None or not getattr(database, "isOpen", True):
        raise NotExportable("Slicer has no DICOM database open; open one in the DICOM module first")
    written = export_nodules([folder for _, folder in nodules], sourceFiles(ctNode, database), targetDir,
                             labels=[name for name, _ in nodules])
    report = pydicom.dcmread(written[-1], stop_before_pixels=True)  # the SR: the patient and study of the CT
    if (importer or _importCopies)(str(targetDir), database) is False:
        raise RuntimeError(f"Slicer's DICOM database did not import {targetDir} (its reason is in the Python "
                           "console)")
    return DicomExported(files=[path.name for path in written], nodules=[name for name, _ in nodules],
                         patientID=str(report.get("PatientID", "")),
                         study=str(report.get("StudyDescription") or report.get("StudyDate") or
                                   report.get("StudyInstanceUID", "")),
                         databaseDirectory=str(getattr(database, "databaseDirectory", "") or ""))
