"""Clicked points and the one loop over them: `analyze_points(analyzer, ct, points)`, used by the CLI's analyze and
demo and by the worker behind Slicer, so every face analyses several points, and refuses clicks off any nodule, the
same way. Light to import (no torch): the analyzer is made by the caller.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

from .errors import NoNoduleError
from .nodule_check import NoNodule
from .progress import Progress

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClickedPoint:
    """One point to analyse: three coordinates in `space` (RAS or LPS mm, or voxel index i, j, k)."""

    coordinates: tuple[float, float, float]
    space: str
    origin: str  # where it came from, for error messages: "--point 2", "points.csv line 3", "point 1"


def analyze_points(analyzer: Any, ct: Any, points: Sequence[ClickedPoint], *, classify_anyway: bool = False,
                   progress: Progress | None = None) -> list[Any]:
    """Analyse every point with one loaded analyzer (an Analyzer, or anything with `analyze` and `progress`).

    progress(fraction of all points, message): each nodule's stages move the fraction within its share. A point
    without a nodule raises NoNoduleError naming the point (its `origin`) when it is the only one; among several it
    is a NoNodule entry and the others go on, and NoNoduleError follows when not one found a nodule."""
    report = progress or (lambda fraction, message: None)
    n, findings, previous = len(points), [], getattr(analyzer, "progress", None)
    try:
        for index, point in enumerate(points):
            prefix = f"Nodule {index + 1}/{n}: " if n > 1 else ""

            def within(fraction: float, message: str, index: int = index, prefix: str = prefix) -> None:
                report((index + min(max(float(fraction), 0.0), 1.0)) / n, prefix + message)

            analyzer.progress = within
            within(0.0, f"analysing point {tuple(round(v, 1) for v in point.coordinates)} ({point.space.upper()})")
            try:
                findings.append(analyze_or_refusal(analyzer, ct, point.coordinates, point.space,
                                                   classify_anyway=classify_anyway, several=n > 1))
            except NoNoduleError as exc:
                raise NoNoduleError(f"{point.origin}: {exc}", exc.check, exc.point_lps) from exc
    finally:
        analyzer.progress = previous
    require_a_nodule(findings)
    report(1.0, "done")
    return findings


def analyze_or_refusal(analyzer: Any, ct: Any, point: Sequence[float], space: str, *,
                       classify_anyway: bool = False, several: bool = True) -> Any:
    """`analyzer.analyze(...)`; with `several` points, a point without a nodule becomes a NoNodule entry so that
    the others go on (a single point raises NoNoduleError)."""
    try:
        return analyzer.analyze(ct, point, space=space, classify_anyway=classify_anyway)
    except NoNoduleError as exc:
        if not several or exc.check is None:
            raise
        logger.warning("%s", exc)
        return NoNodule(tuple(float(v) for v in exc.point_lps), exc.check)


def require_a_nodule(results: Sequence[Any]) -> None:
    """NoNoduleError when not one of several points found a nodule (nothing to report)."""
    if results and all(isinstance(r, NoNodule) for r in results):
        reasons = "; ".join(f"point {n}: {r.check.reason}" for n, r in enumerate(results, start=1))
        raise NoNoduleError(f"no nodule found at any of the {len(results)} points: {reasons}")
