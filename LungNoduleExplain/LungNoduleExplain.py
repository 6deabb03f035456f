"""LungNoduleExplain: click a lung nodule, see its malignancy and manifestations, and where each comes from.

Module / Widget / Logic / Test, as Slicer modules are written. The Widget is thin: everything that can run
without Qt lives in LungNoduleExplainSlicer (AnalysisLogic, ResultNodes, MapDisplay, WorkerProcess,
InstallLogic) and is tested on slicer-core; the science lives in the engine, LungNoduleExplainLib, which runs
in a background process (its worker entry point) so the UI never freezes.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import unittest
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from LungNoduleExplainLib.vocabulary import Device
from LungNoduleExplainSlicer import NoduleSelection
from LungNoduleExplainSlicer.AnalysisLogic import AnalysisLogic, AnalysisOutcome
from LungNoduleExplainSlicer.DicomExport import NotExportable, notFromDatabase
from LungNoduleExplainSlicer.InstallLogic import InstallCancelled, InstallLogic, cudaNote, environmentProblem
from LungNoduleExplainSlicer.MapDisplay import DEFAULT_OPACITY, DEFAULT_THRESHOLD

# The sample: LIDC-IDRI-0001 cropped around its nodule (real CT, LIDC-IDRI, CC BY 3.0), a file inside the engine
# (LungNoduleExplainLib/sample, written by Resources/make_sample_data.py); SampleData copies it from a file:// URI
# and checks its SHA256 from sample.json: no download.
SAMPLE_NAME = "LungNoduleExplainLIDC0001"
SAMPLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "LungNoduleExplainLib", "sample")
SAMPLE_FILE = "LIDC-IDRI-0001-crop.nrrd"


def sampleInfo() -> dict:
    """sample.json beside the sample: its SHA256 and the readers' centroid of its nodule (LPS mm)."""
    with open(os.path.join(SAMPLE_DIR, "sample.json"), encoding="utf-8") as file:
        return json.load(file)


def sampleNoduleRas() -> tuple:
    x, y, z = sampleInfo()["point_lps_mm"]
    return (-x, -y, z)


POLL_INTERVAL_MS = 100
SUBMODULES = ("WorkerProcess", "SessionFolder", "AnalysisWorker", "MapDisplay", "ResultNodes", "NoduleSelection",
              "InstallLogic", "DicomExport", "AnalysisLogic", "HeadlessScene")


class LungNoduleExplain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Lung Nodule Explain")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Markups", "Segmentations"]
        self.parent.contributors = ["LungNoduleExplain contributors"]
        self.parent.helpText = _(
            "Click a lung nodule in a chest CT and press Analyze: the nodule is segmented (nnU-Net v2), a 3D "
            "multi-task network predicts malignancy and manifestations (e.g. spiculated, calcified) and shows "
            "where each prediction comes from as a heat map over the CT. Research use only, not for clinical "
            "decisions.")
        self.parent.acknowledgementText = _(
            "The method follows the multi-task explainable pulmonary nodule model (HESAM with anatomical attention "
            "gates). Sample data: LIDC-IDRI (Armato et al., The Cancer Imaging Archive, CC BY 3.0).")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    import SampleData
    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="LungNoduleExplain",
        sampleName=SAMPLE_NAME,
        thumbnailFileName=os.path.join(iconsPath, "LungNoduleExplain.png"),
        uris=pathlib.Path(SAMPLE_DIR, SAMPLE_FILE).as_uri(),
        fileNames=SAMPLE_FILE,
        checksums="SHA256:" + sampleInfo()["sha256"][SAMPLE_FILE],
        nodeNames="LIDC-IDRI-0001",
    )


@parameterNodeWrapper
class LungNoduleExplainParameterNode:
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    points: slicer.vtkMRMLMarkupsFiducialNode
    device: Annotated[str, Choice(list(Device.names()))] = Device.AUTO.value  # the combo box lists these
    bundlePath: pathlib.Path
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = DEFAULT_OPACITY
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = DEFAULT_THRESHOLD


class LungNoduleExplainLogic(AnalysisLogic, ScriptedLoadableModuleLogic):
    """AnalysisLogic on Slicer's scene, plus the module's parameter node. AnalysisLogic comes first in the MRO so
    that ScriptedLoadableModuleLogic's super().__init__() reaches object, not AnalysisLogic a second time."""

    def __init__(self, scene=None, **kwargs) -> None:
        AnalysisLogic.__init__(self, scene if scene is not None else slicer.mrmlScene, **kwargs)
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self) -> LungNoduleExplainParameterNode:
        return LungNoduleExplainParameterNode(super().getParameterNode())


class LungNoduleExplainWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    environmentProblem: Optional[str] = None  # why this Slicer cannot run the module (too old), else None
    _selectedKey: Optional[str] = None  # the nodule whose results the Results section shows

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[LungNoduleExplainLogic] = None
        self._parameterNode: Optional[LungNoduleExplainParameterNode] = None
        self._parameterNodeGuiTag = None
        self._observedPoints = None  # the markups node whose point additions/removals update the buttons
        self.timer = qt.QTimer()

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LungNoduleExplain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = LungNoduleExplainLogic()
        self.logic.onProgress = self.onProgress
        self.logic.onLog = self.onLog
        self.logic.onFinished = self.onFinished
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.timeout.connect(self.onPollTimer)  # delivers the worker's messages on the main thread

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onNodeRemoved)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.analyzeButton.connect("clicked(bool)", self.onAnalyzeButton)
        self.ui.installButton.connect("clicked(bool)", self.onInstallButton)
        self.ui.exportReportButton.connect("clicked(bool)", self.onExportReport)
        self.ui.exportDicomButton.connect("clicked(bool)", self.onExportDicom)
        self.ui.mapSelector.connect("currentIndexChanged(int)", self.onMapSelected)
        self.ui.opacitySlider.connect("valueChanged(double)", self.logic.setMapOpacity)
        self.ui.thresholdSlider.connect("valueChanged(double)", self.logic.setMapThreshold)
        self.ui.pointsSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.ui.placeWidget.setCurrentNode)
        # One point per click of "Place": a further click in a view does not add another nodule.
        self.ui.placeWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
        self.ui.noduleSelector.connect("currentIndexChanged(int)", self.onNoduleSelected)
        self.ui.resultsTableView.connect("clicked(QModelIndex)", self.onTableRowClicked)
        # the arrow keys move the current row too; the view keeps one model (qMRMLTableView), so one connection
        self.ui.resultsTableView.selectionModel().connect("currentRowChanged(QModelIndex,QModelIndex)",
                                                          self.onTableCurrentRowChanged)
        self.ui.restartButton.connect("clicked(bool)", slicer.util.restart)
        self.ui.restartButton.hide()
        self.ui.progressBar.hide()
        self.environmentProblem = environmentProblem((slicer.app.majorVersion, slicer.app.minorVersion))
        self.updateDependencyStatus()
        self.initializeParameterNode()

    # --- parameter node (the template's pattern) --------------------------------------------------------------

    def cleanup(self) -> None:
        self.timer.stop()
        if self.logic is not None:
            self.logic.cleanup()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.updateNoduleSelector()  # results already in the scene (a saved scene, another module's deletions)
        self.prepareAnalysis()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.clearPatientData()  # cancels a run; the exported CT and the results go with the scene
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        self.updateNoduleSelector()  # empty now: no table, no maps, no legend line
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        if not self._parameterNode.points:
            points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Nodule")  # Nodule-1, ...
            points.GetDisplayNode().SetSelectedColor(0.2, 0.9, 0.3)
            self._parameterNode.points = points

    def setParameterNode(self, inputParameterNode: Optional[LungNoduleExplainParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.ui.placeWidget.setCurrentNode(self._parameterNode.points)
            self.updateButtons()

    def _observePoints(self, points) -> None:
        if points is self._observedPoints:
            return
        events = (slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, slicer.vtkMRMLMarkupsNode.PointRemovedEvent,
                  slicer.vtkMRMLMarkupsNode.PointPositionUndefinedEvent, slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)
        for event in events:
            if self._observedPoints is not None:
                self.removeObserver(self._observedPoints, event, self.updateButtons)
            if points is not None:
                self.addObserver(points, event, self.updateButtons)
        handlers = ((slicer.vtkMRMLMarkupsNode.PointStartInteractionEvent, self.onPointClicked),
                    (slicer.vtkMRMLMarkupsNode.PointRemovedEvent, self.onPointRemoved))
        for event, handler in handlers:
            if self._observedPoints is not None:
                self.removeObserver(self._observedPoints, event, handler)
            if points is not None:
                self.addObserver(points, event, handler)
        self._observedPoints = points

    def updateButtons(self, caller=None, event=None) -> None:
        self._observePoints(self._parameterNode.points if self._parameterNode else None)
        if self.logic.isRunning():
            self.ui.analyzeButton.text = _("Cancel")
            self.ui.analyzeButton.toolTip = _("Stop the analysis; the scene stays as it was.")
            self.ui.analyzeButton.enabled = True
            return
        self.ui.analyzeButton.text = _("Analyze")
        p = self._parameterNode
        # Only placed points count: skipped, unplaced and preview points are not analysed (nodulesFromMarkups).
        ready = bool(p and p.inputVolume and p.points and p.points.GetNumberOfDefinedControlPoints())
        todo = self._pointsToAnalyze() if ready else []
        self.ui.analyzeButton.enabled = ready and not self.environmentProblem
        if not ready:
            self.ui.analyzeButton.toolTip = _("Select a CT volume and place at least one nodule point.")
        elif todo:
            self.ui.analyzeButton.toolTip = _("Analyze the new or moved points: {names}.").format(
                names=", ".join(n.name for n in todo))
        else:
            self.ui.analyzeButton.toolTip = _("Every point has its result; click to analyse them all again.")

    def _pointsToAnalyze(self) -> list:
        p = self._parameterNode
        return self.logic.nodulesToAnalyze(p.inputVolume, self.logic.nodulesFromMarkups(p.points), self._bundle())

    def _bundle(self) -> Optional[str]:
        p = self._parameterNode
        return str(p.bundlePath) if p.bundlePath and str(p.bundlePath) not in ("", ".") else None

    # --- running (Analyze doubles as Cancel) -------------------------------------------------------------------

    def prepareAnalysis(self) -> None:
        """Start the analysis process and load the model now (the module is entered, or the packages were just
        installed), so that the first Analyze does not wait for them. Returns at once: the process is started and
        sent one line; its answer comes through the poll timer to the log. Nothing is started while Slicer is too
        old, packages are missing, a run is in flight or the process already runs (a device or bundle changed since
        restarts it at the next Analyze, not on every edit), or for a bundle path that does not exist. A failure is
        a log line, never a dialog: Analyze starts the process again and says what fails."""
        p = self._parameterNode
        if (self.environmentProblem or p is None or self.logic.isRunning() or self.logic.worker.isAlive()
                or not InstallLogic().check().ok):
            return
        bundle = self._bundle()
        if bundle and not pathlib.Path(bundle).exists():
            return
        try:
            self.logic.prepareWorker(p.device, bundle)
        except OSError as exc:
            self.onLog("warning", _("Could not start the analysis process ahead of Analyze: {error}").format(
                error=exc))
            return
        self.timer.start()

    def onPollTimer(self) -> None:
        self.logic.poll()
        if not self.logic.isRunning() and not self.logic.isPreparing():
            self.timer.stop()

    def onAnalyzeButton(self) -> None:
        if self.logic.isRunning():
            self.logic.cancel()
            return
        if not InstallLogic().check().ok and not self.onInstallButton():
            return
        p = self._parameterNode
        self.ui.deviceNoteLabel.text = self._cudaNote(p.device)
        self.ui.logTextEdit.clear()
        # Only new or moved points run; with none, every point runs again (the button's tooltip says which).
        nodules = self._pointsToAnalyze() or self.logic.nodulesFromMarkups(p.points)
        with slicer.util.tryWithErrorDisplay(_("Cannot start the analysis."), waitCursor=True):
            self.logic.mapOpacity, self.logic.mapThreshold = p.opacity, p.threshold
            self.logic.startAnalysis(p.inputVolume, nodules, device=p.device, bundlePath=self._bundle())
            self._selectedKey = nodules[-1].key  # the results of the last point clicked are shown
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
            self.timer.start()
        self.updateButtons()

    def onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message

    def onLog(self, level: str, message: str) -> None:
        self.ui.logTextEdit.appendPlainText(message)
        if level == "warning":
            self.ui.deviceNoteLabel.text = message  # e.g. "CUDA not available: running on CPU"

    @staticmethod
    def _cudaNote(device: str) -> str:
        try:
            import torch  # installed by now (onAnalyzeButton checks first); the worker imports it anyway
        except ImportError:
            return ""
        return cudaNote(torch.backends.cuda.is_built(), torch.cuda.is_available(), device)

    def onFinished(self, outcome: AnalysisOutcome) -> None:
        self.timer.stop()
        self.ui.progressBar.hide()
        self.ui.statusLabel.text = outcome.message
        self.updateButtons()
        if outcome.status == "failed":
            slicer.util.errorDisplay(_("The analysis failed: {message}").format(message=outcome.message))
            return
        if outcome.succeeded:
            if self._parameterNode and self._parameterNode.points:  # points deleted while it ran take theirs along
                self.logic.removeResultsWithoutPoint(self._parameterNode.points)
            self.updateNoduleSelector()

    # --- results: a nodule, its table, its maps ---------------------------------------------------------------

    def updateNoduleSelector(self) -> None:
        """List every analysed nodule in the scene and show the selected one (the last analysed by default)."""
        views = NoduleSelection.noduleViews(slicer.mrmlScene)
        wasBlocked = self.ui.noduleSelector.blockSignals(True)
        self.ui.noduleSelector.clear()
        for view in views:
            self.ui.noduleSelector.addItem(view.name, view.key)
        keys = [v.key for v in views]
        self.ui.noduleSelector.currentIndex = keys.index(self._selectedKey) if self._selectedKey in keys else 0
        self.ui.noduleSelector.blockSignals(wasBlocked)
        self.onNoduleSelected(self.ui.noduleSelector.currentIndex)

    def onPointRemoved(self, caller, event) -> None:
        """A deleted nodule point (or all of them) takes its results along: table, maps, segmentation, list entry."""
        if slicer.mrmlScene.IsClosing():
            return
        if self.logic.removeResultsWithoutPoint(caller):
            self.updateNoduleSelector()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeRemoved(self, caller, event, node) -> None:
        """A deleted points node takes its nodules' results along, as a deleted point does."""
        if slicer.mrmlScene.IsClosing() or node is None or not node.IsA("vtkMRMLMarkupsFiducialNode"):
            return
        if self.logic.removeResultsWithoutPoint(node):
            self.updateNoduleSelector()

    def onPointClicked(self, caller, event) -> None:
        """Clicking a nodule's point in a view shows that nodule's results."""
        index = caller.GetDisplayNode().GetActiveControlPoint()  # the point under the mouse
        if index < 0:
            return
        key = NoduleSelection.pointKey(caller, index)
        found = self.ui.noduleSelector.findData(key)
        if found >= 0:
            self.ui.noduleSelector.currentIndex = found

    def onNoduleSelected(self, index: int) -> None:
        view = NoduleSelection.noduleView(slicer.mrmlScene, self.ui.noduleSelector.itemData(index)) \
            if index >= 0 else None
        self._selectedKey = view.key if view is not None else None
        self.ui.resultsTableView.setMRMLTableNode(view.tableNode if view is not None else None)
        wasBlocked = self.ui.mapSelector.blockSignals(True)
        previous = self.ui.mapSelector.currentText
        self.ui.mapSelector.clear()
        for output, node in (view.mapNodes.items() if view is not None else ()):
            self.ui.mapSelector.addItem(output, node.GetID())
        kept = self.ui.mapSelector.findText(previous)  # the same output as before, on the new nodule
        self.ui.mapSelector.currentIndex = kept if kept >= 0 else 0
        self.ui.mapSelector.blockSignals(wasBlocked)
        self.onMapSelected(self.ui.mapSelector.currentIndex)
        self.updateExportButtons()

    def updateExportButtons(self) -> None:
        """The HTML report is the last run's; Export to DICOM sends the analysed nodules of the shown nodule's CT."""
        self.ui.exportReportButton.enabled = self.logic.lastResultDir is not None
        views = NoduleSelection.nodulesToExport(slicer.mrmlScene, self._selectedKey)
        self.ui.exportDicomButton.enabled = bool(views)
        if not views:
            self.ui.exportDicomButton.toolTip = _("Analyze a nodule first: its results, and those of the other "
                                                  "nodules of its CT, go into Slicer's DICOM database.")
            return
        why = notFromDatabase(views[0].ctNode)
        self.ui.exportDicomButton.toolTip = _(
            "Add {names} to Slicer's DICOM database as a Segmentation, Parametric Maps and a Structured Report "
            "(QuantitativeReporting shows it).").format(names=", ".join(v.name for v in views)) + (
            " " + _("Not possible here: {why}.").format(why=why) if why else "")

    def onTableRowClicked(self, modelIndex) -> None:
        """A table row shows its output's map (column 0 holds the output's name)."""
        view = NoduleSelection.noduleView(slicer.mrmlScene, self._selectedKey) if self._selectedKey else None
        mapNode = view.mapOfOutput(modelIndex.sibling(modelIndex.row(), 0).data()) if view is not None else None
        if mapNode is not None:
            self.ui.mapSelector.currentIndex = self.ui.mapSelector.findData(mapNode.GetID())

    def onTableCurrentRowChanged(self, current, previous) -> None:
        if current.isValid():
            self.onTableRowClicked(current)

    def onMapSelected(self, index: int) -> None:
        node = slicer.mrmlScene.GetNodeByID(self.ui.mapSelector.itemData(index)) if index >= 0 else None
        if node is None:
            self.ui.legendLabel.text = ""
            return
        # Over the CT it was computed on: the input selector may show another CT by now.
        ctNode = self.logic.sourceVolume(node)
        self.logic.showMap(ctNode if ctNode is not None else self._parameterNode.inputVolume, node)
        self.ui.legendLabel.text = NoduleSelection.legendText(node, self.logic.mapThreshold)

    def onExportReport(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Export the report to"))
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("Cannot export the report."), waitCursor=True):
            report = self.logic.exportReport(folder)
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(report)))

    def onExportDicom(self) -> None:
        views = NoduleSelection.nodulesToExport(slicer.mrmlScene, self._selectedKey)
        refused = None
        with slicer.util.tryWithErrorDisplay(_("Export to DICOM failed."), waitCursor=True):
            try:
                exported = self.logic.exportDicom([v.key for v in views])
            except NotExportable as exc:  # what the user can change: say it plainly, no traceback
                refused = str(exc)
        if refused:
            self.ui.statusLabel.text = _("Not exported to DICOM: {reason}").format(reason=refused)
            slicer.util.warningDisplay(self.ui.statusLabel.text, windowTitle=_("Export to DICOM"))
            return
        self.ui.statusLabel.text = exported.describe()
        self.onLog("info", exported.describe())

    # --- first use ---------------------------------------------------------------------------------------------

    def updateDependencyStatus(self) -> None:
        if self.environmentProblem:  # too old a Slicer: say so, offer no install that would fail
            self.ui.dependencyLabel.text = self.environmentProblem
            self.ui.dependencyLabel.styleSheet = "color: #c0392b; font-weight: bold;"
            self.ui.dependencyLabel.visible, self.ui.installButton.visible = True, False
            return
        status = InstallLogic().check()
        self.ui.dependencyLabel.text = "" if status.ok else _("Required Python packages: {status}").format(
            status=status.describe())
        self.ui.dependencyLabel.visible = self.ui.installButton.visible = not status.ok

    def onInstallButton(self) -> bool:
        logic = InstallLogic(confirm=slicer.util.confirmOkCancelDisplay, log=self.onLogInfo,
                             progress=self.onInstallProgress)
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        try:
            with slicer.util.tryWithErrorDisplay(_("Installing the required packages failed."), waitCursor=True):
                try:
                    status = logic.install()
                except InstallCancelled:
                    return False
        finally:
            self.ui.progressBar.hide()
        self.updateDependencyStatus()
        if logic.needsRestart:
            self.ui.statusLabel.text = _("The packages were updated: restart Slicer before running the analysis.")
            self.ui.restartButton.show()
            return False
        if status.ok:
            self.prepareAnalysis()
        return status.ok

    def onInstallProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message
        slicer.app.processEvents()

    def onLogInfo(self, message: str) -> None:
        self.onLog("info", message)
        slicer.app.processEvents()

    def onReload(self) -> None:
        """Reload the Slicer-side library too, so edits are picked up without restarting Slicer."""
        for name in SUBMODULES:
            module = importlib.import_module(f"LungNoduleExplainSlicer.{name}")
            importlib.reload(module)
        ScriptedLoadableModuleWidget.onReload(self)


class LungNoduleExplainTest(ScriptedLoadableModuleTest):
    """The whole flow inside Slicer: sample CT -> point -> analysis -> nodes; re-run; cancel."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        missing = self.missingPrerequisite()
        if missing:
            # Reported as skipped (unittest, ctest's log) or raised (Reload and Test): never as passed.
            raise unittest.SkipTest(f"LungNoduleExplain self-test not run: {missing}")
        self.setUp()
        self.test_AnalyzeSampleNodule()
        self.setUp()
        self.test_CancelLeavesTheSceneUnchanged()

    @staticmethod
    def missingPrerequisite() -> Optional[str]:
        """Why the self-test cannot run here (too old a Slicer, packages missing), or None."""
        problem = environmentProblem((slicer.app.majorVersion, slicer.app.minorVersion))
        if problem:
            return problem
        status = InstallLogic().check()
        return None if status.ok else f"required Python packages: {status.describe()} (install them in the module)"

    def _sampleWithPoint(self):
        import SampleData
        registerSampleData()
        ctNode = SampleData.downloadSample(SAMPLE_NAME)
        points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Nodule")
        points.AddControlPoint(vtk.vtkVector3d(*sampleNoduleRas()), "Nodule-1")
        return ctNode, points

    def test_AnalyzeSampleNodule(self) -> None:
        self.delayDisplay("Analysing the sample nodule")
        ctNode, points = self._sampleWithPoint()
        logic = LungNoduleExplainLogic()
        logic.startAnalysis(ctNode, logic.nodulesFromMarkups(points))
        outcome = logic.waitForFinished(timeout_s=600)
        self.assertTrue(outcome.succeeded, outcome.message)
        nodule = outcome.nodules[0]
        self.assertEqual(nodule.tableNode.GetTable().GetNumberOfRows(), len(nodule.mapNodes))
        for mapNode in nodule.mapNodes.values():
            self.assertEqual(mapNode.GetImageData().GetDimensions(), ctNode.GetImageData().GetDimensions())
        countBefore = slicer.mrmlScene.GetNumberOfNodes()
        logic.startAnalysis(ctNode, logic.nodulesFromMarkups(points))
        self.assertTrue(logic.waitForFinished(timeout_s=600).succeeded)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), countBefore)  # re-run replaced, did not add
        self.delayDisplay("Analysis test passed")

    def test_CancelLeavesTheSceneUnchanged(self) -> None:
        ctNode, points = self._sampleWithPoint()
        countBefore = slicer.mrmlScene.GetNumberOfNodes()
        logic = LungNoduleExplainLogic()
        logic.startAnalysis(ctNode, logic.nodulesFromMarkups(points), device="cpu")
        logic.cancel()
        self.assertEqual(logic.lastOutcome.status, "cancelled")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), countBefore)
        self.delayDisplay("Cancel test passed")
