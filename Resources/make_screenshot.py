"""Make Resources/Screenshots/analysis.png: Slicer's slice view of a real LIDC CT after Analyze, drawn by Slicer's
own libraries offscreen (slicer-core: MRML slice logic and the slice-view displayable managers for the
segmentation, the nodule point and the colour legend; VTK with EGL), beside the nodule's results table node.

    python Resources/make_screenshot.py [LIDC_CT_DIR]

Runs the module's logic with the real worker and the shipped model bundle on LIDC-IDRI-0001 (from LIDC_CT_DIR,
default ../shared/data/lidc-ct; else the sample CT inside the engine) clicked at its readers' nodule centroid, the
way the module does it: AnalysisLogic.startAnalysis, then the threshold slider and showMap of one output's map
(SHOWN_OUTPUT), with the segmentation drawn as an outline. What it cannot draw is the
Qt module panel; the table is the table node's content written with VTK text, where Slicer shows a table view.
The extension's metadata points at this file on GitHub (CMakeLists.txt, EXTENSION_SCREENSHOTURLS).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import SimpleITK as sitk
import slicer
import vtk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "LungNoduleExplain"))
from LungNoduleExplainLib.volume import read_ct  # noqa: E402
from LungNoduleExplainSlicer.AnalysisLogic import AnalysisLogic  # noqa: E402
from LungNoduleExplainSlicer.HeadlessScene import loadVolume, makeScene  # noqa: E402
from LungNoduleExplainSlicer import NoduleSelection  # noqa: E402

OUT = ROOT / "Resources" / "Screenshots" / "analysis.png"
PATIENT = "LIDC-IDRI-0001"
VIEW_SIZE = (620, 620)
PANEL_WIDTH = 460
SHOWN_OUTPUT = "spiculated"  # a positive call whose map reaches above the hidden range on this nodule
MAP_THRESHOLD = 0.10  # the "Hide map below" slider moved down from 0.25, as a reader exploring the map would
DISPLAYABLE_MANAGERS = ("vtkMRMLSegmentationsDisplayableManager2D", "vtkMRMLMarkupsDisplayableManager",
                        "vtkMRMLColorLegendDisplayableManager", "vtkMRMLRulerDisplayableManager")


def loadCt(scene, ctDir: Path):
    """The CT node and the readers' nodule centroid (RAS mm): the full series when the data folder is there,
    else the engine's sample crop of the same series."""
    if (ctDir / PATIENT / "dicom").is_dir():
        centroid = next(n["centroid_ras_mm"] for n in json.loads((ctDir / "nodules.json").read_text())
                        if n["patient_id"] == PATIENT)
        # the copy of the patient's CT lives only while the scene reads it
        with tempfile.TemporaryDirectory(prefix="LungNoduleExplain-shot-") as folder:
            path = Path(folder) / "ct.nrrd"
            sitk.WriteImage(read_ct(ctDir / PATIENT / "dicom"), str(path))
            ctNode = loadVolume(scene, path, PATIENT)
    else:
        from LungNoduleExplainLib.sample import SAMPLE_CT
        x, y, z = json.loads((SAMPLE_CT.parent / "sample.json").read_text())["point_lps_mm"]
        centroid = [-x, -y, z]
        ctNode = loadVolume(scene, SAMPLE_CT, PATIENT)
    ctNode.GetDisplayNode().SetAutoWindowLevel(False)
    ctNode.GetDisplayNode().SetWindowLevel(1500, -600)  # lung window
    return ctNode, tuple(centroid)


class OffscreenSliceView:
    """A slice view as Slicer's qMRMLSliceWidget builds it (slice logic, its image as the background actor, the
    slice-view displayable managers), in an offscreen render window."""

    def __init__(self, scene, appLogic, size, name="Red"):
        self.renderWindow = vtk.vtkRenderWindow()
        self.renderWindow.SetOffScreenRendering(1)
        self.renderWindow.SetSize(*size)
        self.interactor = vtk.vtkRenderWindowInteractor()  # the markups displayable manager needs one, as in a view
        self.interactor.SetRenderWindow(self.renderWindow)
        self.interactor.SetInteractorStyle(vtk.vtkInteractorStyleUser())
        self.renderer = vtk.vtkRenderer()
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        self.renderWindow.AddRenderer(self.renderer)
        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(appLogic)
        for manager in DISPLAYABLE_MANAGERS:
            if not factory.IsDisplayableManagerRegistered(manager):
                factory.RegisterDisplayableManager(manager)
        self.managers = factory.InstantiateDisplayableManagers(self.renderer)
        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(appLogic)
        self.logic.SetMRMLScene(scene)
        self.node = self.logic.AddSliceNode(name)
        appLogic.GetSliceLogics().AddItem(self.logic)
        self.managers.SetMRMLDisplayableNode(self.node)
        self.mapper = vtk.vtkImageMapper()  # the slice image is RGBA 0-255 already (window/level applied by MRML)
        self.mapper.SetColorWindow(255)
        self.mapper.SetColorLevel(127.5)
        actor = vtk.vtkActor2D()
        actor.SetMapper(self.mapper)
        actor.GetProperty().SetDisplayLocationToBackground()
        self.renderer.AddViewProp(actor)
        self.node.SetOrientationToAxial()
        self.logic.ResizeSliceNode(*size)

    def centreOn(self, ras, fieldOfViewMm: float) -> None:
        self.logic.FitSliceToBackground()
        self.node.SetFieldOfView(fieldOfViewMm, fieldOfViewMm, self.node.GetFieldOfView()[2])
        self.node.JumpSliceByCentering(*ras)

    def image(self) -> vtk.vtkImageData:
        """Render and capture (the layers' blend is connected now: it changes when volumes are set)."""
        self.mapper.SetInputConnection(self.logic.GetImageDataConnection())
        return _capture(self.renderWindow)


def _capture(renderWindow) -> vtk.vtkImageData:
    renderWindow.Render()
    capture = vtk.vtkWindowToImageFilter()
    capture.SetInput(renderWindow)
    capture.Update()
    return capture.GetOutput()


def resultsPanel(size, nodule, mapNode, threshold: float) -> vtk.vtkImageData:
    """The results table node's rows and the legend line, as text in a panel beside the view."""
    renderWindow = vtk.vtkRenderWindow()
    renderWindow.SetOffScreenRendering(1)
    renderWindow.SetSize(*size)
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0.16, 0.16, 0.17)
    renderWindow.AddRenderer(renderer)
    table = nodule.tableNode.GetTable()
    rows = [[table.GetColumnByName(c).GetValue(r) for c in ("output", "probability", "threshold", "result")]
            for r in range(table.GetNumberOfRows())]
    lines = [f"{'output':<19}{'prob.':>6}{'thr.':>6}  result"]
    lines += [f"{o:<19}{p:>6}{t:>6}  {res}" for o, p, t, res in rows]

    def text(string: str, y: float, size: int, bold: bool = False, mono: bool = False, colour=(0.93, 0.93, 0.93)):
        actor = vtk.vtkTextActor()
        actor.SetInput(string)
        actor.GetPositionCoordinate().SetCoordinateSystemToNormalizedViewport()
        actor.GetPositionCoordinate().SetValue(0.04, y)
        props = actor.GetTextProperty()
        props.SetFontSize(size)
        props.SetBold(bold)
        props.SetColor(*colour)
        props.SetVerticalJustificationToTop()
        if mono:
            props.SetFontFamilyToCourier()
        renderer.AddViewProp(actor)

    text("Lung Nodule Explain", 0.975, 19, bold=True)
    text(f"{nodule.tableNode.GetName()}", 0.925, 12, colour=(0.75, 0.85, 1.0))
    text("\n".join(lines), 0.875, 12, mono=True)
    legend = NoduleSelection.legendText(mapNode, threshold)
    words, wrapped, line = legend.split(), [], ""
    for word in words:  # wrap the legend line to the panel
        if len(line) + len(word) + 1 > 66:
            wrapped.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    wrapped.append(line)
    text("\n".join(wrapped[:12]), 0.47, 11, colour=(0.85, 0.85, 0.85))
    text("Research use only. Not for clinical decisions.", 0.06, 12, bold=True, colour=(1.0, 0.75, 0.35))
    text("LIDC-IDRI (CC BY 3.0). Slice view rendered by Slicer's MRML libraries (slicer-core).", 0.025, 9,
         colour=(0.6, 0.6, 0.6))
    return _capture(renderWindow)


def main(ctDir: Path) -> Path:
    scene, logics = makeScene(sliceCompositeNodes=0)
    slicer.mrmlScene = scene
    appLogic = next(logic for logic in logics if logic.IsA("vtkSlicerApplicationLogic"))
    appLogic.SetSliceLogics(vtk.vtkCollection())
    markupsLogic = next(logic for logic in logics if logic.IsA("vtkSlicerMarkupsLogic"))
    appLogic.SetModuleLogic("Markups", markupsLogic)  # the markups displayable manager asks for it by name
    view = OffscreenSliceView(scene, appLogic, VIEW_SIZE)

    ctNode, centroid = loadCt(scene, ctDir)
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Nodule")
    points.AddControlPoint(vtk.vtkVector3d(*centroid), "Nodule-1")
    points.GetDisplayNode().SetSelectedColor(0.2, 0.9, 0.3)
    logic = AnalysisLogic(scene)  # the real worker (python -m LungNoduleExplainLib.worker), shipped bundle
    logic.onProgress = lambda fraction, message: print(f"{fraction:4.0%} {message}")
    logic.startAnalysis(ctNode, logic.nodulesFromMarkups(points), device="auto")
    outcome = logic.waitForFinished(timeout_s=900)
    if not outcome.succeeded:
        raise SystemExit(f"analysis failed: {outcome.message}")
    nodule = outcome.nodules[0]
    mapNode = nodule.mapNodes[SHOWN_OUTPUT]
    logic.setMapThreshold(MAP_THRESHOLD)
    logic.showMap(ctNode, mapNode)  # what selecting the row does in the module: map layer + its colour legend
    nodule.segmentationNode.GetDisplayNode().SetOpacity2DFill(0.0)  # outline only, the map visible inside
    legend = NoduleSelection.showColorLegend(scene, mapNode)
    legend.SetSize(0.12, 0.4)  # a third smaller than the default, for a 620-pixel view
    view.centreOn(centroid, fieldOfViewMm=130.0)
    side = vtk.vtkImageAppend()  # the view, then the panel to its right
    side.SetAppendAxis(0)
    side.AddInputData(view.image())
    side.AddInputData(resultsPanel((PANEL_WIDTH, VIEW_SIZE[1]), nodule, mapNode, logic.mapThreshold))
    rgb = vtk.vtkImageExtractComponents()  # RGB: smaller, and no transparent corners
    rgb.SetComponents(0, 1, 2)
    rgb.SetInputConnection(side.GetOutputPort())
    OUT.parent.mkdir(parents=True, exist_ok=True)
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(OUT))
    writer.SetCompressionLevel(9)
    writer.SetInputConnection(rgb.GetOutputPort())
    writer.Write()
    logic.cleanup()
    del logics
    return OUT


if __name__ == "__main__":
    default = ROOT.parent / "shared" / "data" / "lidc-ct"
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else default))
