"""Who and what a CT is: patient, study date and series from a DICOM header, for the report's title.

A DICOM folder names its patient and series in the header of every file; the report is titled with them rather
than with the folder's name ("dicom"). NIfTI/NRRD/MHA files carry no such header: they are named by their file.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import SimpleITK as sitk

logger = logging.getLogger(__name__)

# DICOM tags (group|element) read from the first file of the series.
TAGS = {"patient_id": "0010|0020", "patient_name": "0010|0010", "study_date": "0008|0020",
        "study_description": "0008|1030", "series_description": "0008|103e", "series_number": "0020|0011",
        "modality": "0008|0060"}


@dataclass(frozen=True)
class StudyInfo:
    """What the report's title says about the CT. Empty strings where the header (or a non-DICOM file) has none.

    name: the file or folder name, the fallback title. study_date: ISO 'YYYY-MM-DD' when the header's DA value
    is well formed, else as written.
    """

    name: str
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    study_description: str = ""
    series_description: str = ""
    series_number: str = ""
    modality: str = ""

    @property
    def from_dicom(self) -> bool:
        return any((self.patient_id, self.patient_name, self.study_date, self.series_number, self.modality))

    def title(self) -> str:
        """'LIDC-IDRI-0001 · CT 2000-01-01 · series 3000566' from a DICOM header, else the file name."""
        if not self.from_dicom:
            return self.name
        patient = self.patient_name if self.patient_name and self.patient_name != self.patient_id else ""
        who = " ".join(p for p in (self.patient_id, f"({patient})" if patient else "") if p) or "unknown patient"
        study = " ".join(p for p in (self.modality, self.study_date) if p)
        series = " ".join(p for p in (f"series {self.series_number}" if self.series_number else "",
                                      f"“{self.series_description}”" if self.series_description else "") if p)
        return " · ".join(p for p in (who, study, series) if p)

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs of the header fields present, for the report's study card."""
        labels = (("Patient ID", self.patient_id), ("Patient name", self.patient_name),
                  ("Study date", self.study_date), ("Study", self.study_description), ("Modality", self.modality),
                  ("Series number", self.series_number), ("Series", self.series_description))
        return [(label, value) for label, value in labels if value]

    def to_json(self) -> dict:
        return asdict(self)


def read_study_info(path: str | Path, file: str | Path | None = None) -> StudyInfo:
    """StudyInfo of a CT path: a DICOM folder's header (`file`, the chosen series' first image, else its first
    .dcm file, or first file), else the file name. An unreadable header gives the name alone (reading the CT
    itself reports what is wrong with it)."""
    path = Path(path)
    if not path.is_dir():
        return StudyInfo(name=path.name)
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    dicom = [Path(file)] if file else [p for p in files if p.suffix.lower() == ".dcm"] or files
    if not dicom:
        return StudyInfo(name=path.name)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(dicom[0]))
    reader.LoadPrivateTagsOff()
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        logger.debug("no DICOM header in %s: %s", dicom[0], exc)
        return StudyInfo(name=path.name)
    values = {field: _clean(reader.GetMetaData(tag)) if reader.HasMetaDataKey(tag) else ""
              for field, tag in TAGS.items()}
    values["study_date"] = _iso_date(values["study_date"])
    values["patient_name"] = values["patient_name"].replace("^", " ").strip()
    return StudyInfo(name=path.name, **values)


def _clean(value: str) -> str:
    """DICOM pads values to even length with spaces or NUL."""
    return value.replace("\x00", "").strip()


def _iso_date(value: str) -> str:
    """DICOM DA 'YYYYMMDD' -> 'YYYY-MM-DD'; anything else as it is."""
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value
