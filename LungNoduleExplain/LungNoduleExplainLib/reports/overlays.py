"""PNG overlays: an output's activation map on the CT, on the three planes through the nodule centre.

Each plane is resampled from the CT grid onto a square, isotropic, LPS-aligned display grid centred on the nodule,
so the aspect ratio is right whatever the CT's spacing and direction. Radiological convention: axial and coronal
show the patient's right on the image left; sagittal shows anterior on the left; cranial is up. CT in a lung
window (-1350..150 HU); the map in a heat colormap with values below 0.25 hidden, as in the paper's figures;
the segmentation contour in magenta; the clicked point as a cross; a labelled colour bar says what a map value
means.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

LUNG_WINDOW_HU = (-1350.0, 150.0)
MAP_DISPLAY_THRESHOLD = 0.25
MAP_COLORMAP = "jet"
# what a map value means, said beside the colour bar of the PNGs and the HTML report
MAP_SCALE_LOW, MAP_SCALE_HIGH = "weak", "strongest"
MAP_SCALE_LABEL = "evidence for the output (scale: the report's map legend)"
CONTOUR_COLOUR = "#ff2bd6"
MIN_FIELD_OF_VIEW_MM = 60.0
OUTSIDE_SCAN_HU = -3000.0  # below the window: beyond the scanned volume shows black, unlike air or lung
PLANES = ("axial", "coronal", "sagittal")
# (left, right, top, bottom) orientation letters of each displayed plane.
_ORIENTATION = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"), "sagittal": ("A", "P", "S", "I")}


@dataclass(frozen=True)
class DisplayGrid:
    """Square isotropic display field around `center_lps` (mm): `size` pixels of `spacing_mm` per side."""

    center_lps: tuple[float, float, float]
    spacing_mm: float
    size: int

    @classmethod
    def around(cls, center_lps: Sequence[float], ct: sitk.Image, diameter_mm: float) -> "DisplayGrid":
        """Field of view: at least 60 mm, or 2.5 nodule diameters; pixels as fine as the CT's in-plane spacing."""
        fov = max(MIN_FIELD_OF_VIEW_MM, 2.5 * float(diameter_mm))
        spacing = float(np.clip(min(ct.GetSpacing()[:2]), 0.25, 1.0))
        return cls(tuple(float(c) for c in center_lps), spacing, int(round(fov / spacing)))

    @property
    def half_width_mm(self) -> float:
        return (self.size - 1) / 2.0 * self.spacing_mm

    def _reference(self, plane: str) -> sitk.Image:
        dims = {"axial": (self.size, self.size, 1), "coronal": (self.size, 1, self.size),
                "sagittal": (1, self.size, self.size)}[plane]
        origin = [c - (n - 1) / 2.0 * self.spacing_mm for c, n in zip(self.center_lps, dims)]
        ref = sitk.Image(list(dims), sitk.sitkFloat32)
        ref.SetSpacing([self.spacing_mm] * 3)
        ref.SetOrigin(origin)
        return ref

    def sample(self, image: sitk.Image, plane: str, *, default: float,
               interpolator: int = sitk.sitkLinear) -> np.ndarray:
        """`image` on this plane as a 2D array oriented for display (row 0 at the top, column 0 at the left)."""
        resampled = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), self._reference(plane), sitk.Transform(),
                                  interpolator, float(default), sitk.sitkFloat32)
        array = sitk.GetArrayFromImage(resampled)  # [z, y, x]
        if plane == "axial":
            return array[0]  # rows +y (anterior at top), columns +x (patient right at left)
        if plane == "coronal":
            return array[:, 0, :][::-1]  # rows -z (cranial at top), columns +x
        return array[:, :, 0][::-1]  # sagittal: rows -z, columns +y (anterior at left)

    def to_pixel(self, point_lps: Sequence[float], plane: str) -> tuple[float, float]:
        """(column, row) display pixel of a physical point projected onto `plane`."""
        d = (np.asarray(point_lps, dtype=float) - np.asarray(self.center_lps)) / self.spacing_mm
        half = (self.size - 1) / 2.0
        if plane == "axial":
            return half + d[0], half + d[1]
        if plane == "coronal":
            return half + d[0], half - d[2]
        return half + d[1], half - d[2]


def nodule_centre_lps(segmentation: sitk.Image, fallback_lps: Sequence[float]) -> tuple[float, float, float]:
    """Centroid (LPS mm) of the segmentation's label 1, or `fallback_lps` when the segmentation is empty."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(segmentation > 0, sitk.sitkUInt8))
    if stats.HasLabel(1):
        return tuple(float(v) for v in stats.GetCentroid(1))
    return tuple(float(v) for v in fallback_lps)


@dataclass
class PlaneStack:
    """The CT and segmentation sampled once per nodule on the three display planes (reused for every output)."""

    grid: DisplayGrid
    ct: dict[str, np.ndarray]
    segmentation: dict[str, np.ndarray]
    point_lps: tuple[float, float, float]

    @classmethod
    def build(cls, ct: sitk.Image, segmentation: sitk.Image, point_lps: Sequence[float],
              diameter_mm: float) -> "PlaneStack":
        grid = DisplayGrid.around(nodule_centre_lps(segmentation, point_lps), ct, diameter_mm)
        return cls(grid,
                   {p: grid.sample(ct, p, default=OUTSIDE_SCAN_HU) for p in PLANES},
                   {p: grid.sample(segmentation, p, default=0.0) for p in PLANES},
                   tuple(float(v) for v in point_lps))


class OverlayRenderer:
    """Draws one nodule's overlays: the CT, contour and labels are laid out once; each output only swaps its map.

    render(activation_map, title) -> PNG bytes: three panels (axial, coronal, sagittal) and a colour bar.
    """

    def __init__(self, stack: PlaneStack) -> None:
        self.stack = stack
        self.figure = Figure(figsize=(11.0, 4.1), dpi=100, facecolor="black")
        FigureCanvasAgg(self.figure)
        axes = self.figure.subplots(1, 3, gridspec_kw={"wspace": 0.04, "left": 0.01, "right": 0.92,
                                                        "top": 0.86, "bottom": 0.02})
        empty = np.ma.masked_all((stack.grid.size, stack.grid.size))
        self._heat = {}
        for ax, plane in zip(axes, PLANES):
            ax.imshow(stack.ct[plane], cmap="gray", vmin=LUNG_WINDOW_HU[0], vmax=LUNG_WINDOW_HU[1],
                      interpolation="bilinear")
            self._heat[plane] = ax.imshow(empty, cmap=MAP_COLORMAP, vmin=0.0, vmax=1.0, alpha=0.45,
                                          interpolation="bilinear")
            if np.any(stack.segmentation[plane] >= 0.5):
                ax.contour(stack.segmentation[plane], levels=[0.5], colors=CONTOUR_COLOUR, linewidths=1.3)
            col, row = stack.grid.to_pixel(stack.point_lps, plane)
            ax.plot([col], [row], marker="+", markersize=11, markeredgewidth=1.4, color="white")
            _decorate(ax, plane, stack.grid)
        bar = self.figure.colorbar(self._heat["axial"], cax=self.figure.add_axes((0.935, 0.1, 0.015, 0.7)))
        bar.set_ticks([MAP_DISPLAY_THRESHOLD, 0.5, 0.75, 1.0],
                      labels=[f"{MAP_DISPLAY_THRESHOLD:g} {MAP_SCALE_LOW}", "0.5", "0.75", f"1 {MAP_SCALE_HIGH}"])
        bar.set_label(MAP_SCALE_LABEL + f"; below {MAP_DISPLAY_THRESHOLD:g} hidden", color="white", fontsize=8)
        bar.ax.tick_params(colors="white", labelsize=8)
        bar.outline.set_edgecolor("white")
        self._title = self.figure.suptitle("", color="white", fontsize=13, y=0.97)

    def render(self, activation_map: sitk.Image, title: str) -> bytes:
        for plane, image in self._heat.items():
            heat = self.stack.grid.sample(activation_map, plane, default=0.0)
            image.set_data(np.ma.masked_less(np.clip(heat, 0.0, 1.0), MAP_DISPLAY_THRESHOLD))
        self._title.set_text(title)
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", facecolor=self.figure.get_facecolor(),
                            pil_kwargs={"compress_level": 3})
        return buffer.getvalue()


def _decorate(ax, plane: str, grid: DisplayGrid) -> None:
    """Plane name, orientation letters and a 10 mm scale bar; no axis ticks."""
    n = grid.size
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_axis_off()
    left, right, top, bottom = _ORIENTATION[plane]
    box = {"facecolor": "black", "alpha": 0.55, "pad": 1.5, "edgecolor": "none"}
    style = {"color": "#ffd24d", "fontsize": 10, "fontweight": "bold", "bbox": box}
    ax.text(0.02, 0.5, left, transform=ax.transAxes, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, transform=ax.transAxes, ha="right", va="center", **style)
    ax.text(0.5, 0.98, top, transform=ax.transAxes, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, transform=ax.transAxes, ha="center", va="bottom", **style)
    ax.text(0.02, 0.98, plane, transform=ax.transAxes, ha="left", va="top", color="white", fontsize=10, bbox=box)
    bar_px = 10.0 / grid.spacing_mm
    x0, y0 = n * 0.95 - bar_px, n * 0.93
    ax.plot([x0, x0 + bar_px], [y0, y0], color="white", linewidth=2)
    ax.text(x0 + bar_px / 2, y0 - n * 0.015, "10 mm", color="white", fontsize=8, ha="center", va="bottom")
