"""Coded concepts of the DICOM results: standard codes where one exists, the project's own scheme where none does.

Standard codes come from DICOM PS3.16 (SNOMED CT "SCT", DICOM "DCM"; pydicom's code dictionary) and RadLex
(malignancy, RID36042, as the DICOM re-encoding of the LIDC annotations uses: Fedorov et al., Med. Phys. 2020,
doi:10.1002/mp.14445). Concepts with no code of their own (the probability of a manifestation, the decision
threshold, the clicked point, a hospital's own outputs) are in the private scheme `99LNEXPL`, declared in every SR
(CodingSchemeIdentificationSequence), as PS3.3 C.12.1.1.5 asks.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

import highdicom as hd

SCHEME = "99LNEXPL"
SCHEME_NAME = "LungNoduleExplain concepts"
SCHEME_RESPONSIBLE = "LungNoduleExplain contributors"


def private(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value[:16], SCHEME, meaning[:64])


# output name -> the concept the call is about (a finding that is present or absent)
OUTPUT_CONCEPTS: dict[str, hd.sr.CodedConcept] = {
    "malignant": hd.sr.CodedConcept("RID36042", "RADLEX", "Malignancy"),
    "calcified": hd.sr.CodedConcept.from_code(codes.SCT.Calcified),
    "spiculated": hd.sr.CodedConcept.from_code(codes.SCT.SpiculatedLesion),
    "lobulated": hd.sr.CodedConcept.from_code(codes.DCM.Lobulated),
    "ill_defined_margin": hd.sr.CodedConcept.from_code(codes.SCT.LesionWithIndistinctMargin),
    "round": hd.sr.CodedConcept.from_code(codes.SCT.Round),
    # none exists: ground-glass opacity (DCM 112120) leaves out part-solid; "subtlety" is LIDC's own scale
    "non_solid": private("non_solid", "Non-solid or part-solid texture"),
    "obvious": private("obvious", "Conspicuous nodule (LIDC subtlety 4-5)"),
}
OUTPUT_CONCEPTS["malignancy"] = OUTPUT_CONCEPTS["malignant"]

PRESENT = hd.sr.CodedConcept.from_code(codes.SCT.Present)
ABSENT = hd.sr.CodedConcept.from_code(codes.SCT.Absent)
PROBABILITY_OF_CANCER = hd.sr.CodedConcept.from_code(codes.DCM.ProbabilityOfCancer)
EQUIVALENT_SPHERE = private("eq-sphere", "Diameter of the sphere of equal volume")
CLICKED_POINT = private("clicked-point", "Point clicked on the nodule")
RESEARCH_USE = private("research-use", "Research use statement")
CALIBRATION = private("calibrated", "Probabilities calibrated")


def output_concept(name: str, description: str = "") -> hd.sr.CodedConcept:
    """The finding an output's call is about; an output of a hospital's own task set gets a private code."""
    return OUTPUT_CONCEPTS.get(name) or private(name, description or name)


def probability_concept(name: str, description: str = "") -> hd.sr.CodedConcept:
    """The concept name of an output's probability (DCM 'Probability of cancer' for the diagnosis)."""
    if name in ("malignant", "malignancy"):
        return PROBABILITY_OF_CANCER
    return private(f"p-{name}", f"Probability of {output_concept(name, description).meaning}")


def threshold_concept(name: str, description: str = "") -> hd.sr.CodedConcept:
    """The concept name of the threshold at which an output's call turns positive."""
    return private(f"t-{name}", f"Decision threshold of {output_concept(name, description).meaning}")


def scheme_declaration() -> Dataset:
    """An item of CodingSchemeIdentificationSequence (0008,0110) declaring the private scheme."""
    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = SCHEME_RESPONSIBLE
    return item
