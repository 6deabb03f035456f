"""The measurement report: a Comprehensive 3D SR after TID 1500, one measurement group per nodule (TID 1411).

Each group references the nodule's segment in the SEG and holds:
    measurements  long and short axis (mm, on the axial slice where the long axis is greatest), volume (mm3),
                  equivalent-sphere diameter (mm); per output its probability and its decision threshold (no units;
                  calibrated when the finding says so)
    evaluations   per output the call: the output's concept (codes.py) Present or Absent
    items         the clicked point (SCOORD3D POINT, LPS mm in the CT's Frame of Reference) and the research-use
                  statement (TEXT)
The algorithm (model name and version) identifies every measurement. `read_report` reads the numbers back.
"""

from __future__ import annotations

from typing import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from ..finding import Finding
from ..reports.html import RESEARCH_NOTICE
from . import codes as lne

DESCRIPTION = "Lung nodule measurement report (research use only)"


def build_report(findings: Sequence[Finding], labels: Sequence[str], sources: list[Dataset],
                 segmentation: Dataset, maps: Sequence[Dataset], series_number: int) -> Dataset:
    """The TID 1500 SR of `findings`, listing the SEG and the Parametric Maps `maps` as its evidence (TID 1411's
    real world value map reference is for a standalone RWVM object, not a Parametric Map)."""
    from .objects import MANUFACTURER, MODEL_NAME

    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=MODEL_NAME, manufacturer_name=MANUFACTURER, model_name=findings[0].model_name[:64]))
    groups = []
    for segment, (finding, label) in enumerate(zip(findings, labels), start=1):
        groups.append(_group(finding, segment, label, segmentation, sources[0].FrameOfReferenceUID))
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=groups)
    report = hd.sr.Comprehensive3DSR(
        evidence=[*sources, segmentation, *maps], content=content, series_instance_uid=hd.UID(),
        series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
        is_complete=True, is_final=False, is_verified=False, series_description=DESCRIPTION)
    report.CodingSchemeIdentificationSequence = [lne.scheme_declaration()]
    return report


def _group(finding: Finding, segment: int, label: str, segmentation: Dataset, frame_of_reference_uid: str) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    algorithm = hd.sr.AlgorithmIdentification(name=finding.model_name[:64], version=finding.model_version[:64])

    def measure(name, value: float, unit) -> hd.sr.Measurement:  # noqa: ANN001 - a code
        return hd.sr.Measurement(name=name, value=float(value), unit=unit, algorithm_id=algorithm)

    mm, none = codes.UCUM.Millimeter, codes.UCUM.NoUnits
    measurements = [measure(codes.SCT.LongAxis, finding.axial.long_mm, mm),
                    measure(codes.SCT.ShortAxis, finding.axial.short_mm, mm),
                    measure(codes.SCT.Volume, finding.volume_mm3, codes.UCUM.CubicMillimeter),
                    measure(lne.EQUIVALENT_SPHERE, finding.diameter_mm, mm)]
    evaluations = []
    for output in finding.outputs:
        measurements.append(measure(lne.probability_concept(output.name, output.description), output.probability,
                                    none))
        measurements.append(measure(lne.threshold_concept(output.name, output.description), output.threshold,
                                    none))
        evaluations.append(hd.sr.QualitativeEvaluation(
            name=lne.output_concept(output.name, output.description),
            value=lne.PRESENT if output.positive else lne.ABSENT))
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=label),
        referenced_segment=hd.sr.ReferencedSegment(  # the whole segment, derived from the CT series
            segmentation.SOPClassUID, segmentation.SOPInstanceUID, segment,
            source_series=hd.sr.SourceSeriesForSegmentation(segmentation.ReferencedSeriesSequence[0].SeriesInstanceUID)),
        finding_type=codes.SCT.Nodule, finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)], algorithm_id=algorithm,
        measurements=measurements, qualitative_evaluations=evaluations)
    calibrated = "calibrated" if finding.calibrated else "raw network scores (not calibrated)"
    warnings = f" Warnings: {' '.join(finding.warnings)}" if finding.warnings else ""  # e.g. no nodule found
    group[0].ContentSequence.extend([
        hd.sr.Scoord3DContentItem(name=lne.CLICKED_POINT, graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                                  graphic_data=np.asarray([finding.point_lps], dtype=float),
                                  frame_of_reference_uid=frame_of_reference_uid, relationship_type="CONTAINS"),
        hd.sr.TextContentItem(name=lne.RESEARCH_USE, value=_ascii(f"{RESEARCH_NOTICE} Probabilities: {calibrated}.{warnings}"),
                              relationship_type="CONTAINS")])
    return group


def _ascii(text: str) -> str:
    """The SR's text in the source's character set: the notice's dash as '-' (ISO_IR 100 has no em dash)."""
    return text.replace("\u2014", "-").replace("\u2013", "-").encode("ascii", "replace").decode()


def read_report(report: Dataset) -> list[dict]:
    """Per nodule, what the SR says: long/short axis, volume, diameter, {output: (probability, threshold,
    present)} keyed by concept meaning, the clicked point (LPS mm) and the research statement."""
    sr = hd.sr.Comprehensive3DSR.from_dataset(report)
    nodules = []
    for group in sr.content.get_volumetric_roi_measurement_groups():
        values = {m.name.meaning: m.value for m in group.get_measurements()}
        calls = {e.name.meaning: e.value == lne.PRESENT for e in group.get_qualitative_evaluations()}
        items = {item.ConceptNameCodeSequence[0].CodeValue: item for item in group[0].ContentSequence}
        point = items[lne.CLICKED_POINT.value]
        nodules.append({"values": values, "calls": calls,
                        "point_lps_mm": [float(v) for v in point.GraphicData],
                        "statement": str(items[lne.RESEARCH_USE.value].TextValue),
                        "segment": int(group.referenced_segment.referenced_segment_numbers[0]),
                        "segmentation_uid": group.referenced_segment.referenced_sop_instance_uid})
    return nodules
