"""The module's logic without the GUI: CT + points -> background worker -> nodes in the scene.

Usage (Slicer's Python console or a test on slicer-core):
    logic = AnalysisLogic(slicer.mrmlScene)
    logic.onProgress = lambda fraction, message: print(f"{fraction:.0%} {message}")
    logic.startAnalysis(ctNode, logic.nodulesFromMarkups(pointsNode), device="auto")
    outcome = logic.waitForFinished()        # or call logic.poll() from a QTimer, as the widget does
    outcome.nodules[0].tableNode, outcome.nodules[0].mapNodes["malignancy"]
    logic.cleanup()                          # stops the worker, deletes the temporary files

The worker process stays between analyses with the model loaded (AnalysisWorker.py): only the first Analyze of a
session, or the first after a cancel, a crash or a change of bundle or device, waits for it to start.

The scene changes only when a run succeeds, and then only the analysed nodules' own nodes are replaced: loading
is all or nothing (see loadResults).
The process runner is injectable (`runnerFactory(onMessage, onFinished)`), as in SlicerNNUNet.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import slicer
import vtk
from LungNoduleExplainLib.progress import Progress
from LungNoduleExplainLib.vocabulary import Device, PointSpace
from LungNoduleExplainLib.worker import Request

from . import DicomExport, MapDisplay, NoduleSelection
from .AnalysisWorker import AnalysisWorker
from .ResultNodes import (ROLE_ATTRIBUTE, SOURCE_VOLUME_ATTRIBUTE, NoduleNodes, ResultError, addNodule,
                          foldersOfNodule, nodesOfNodule, readNodule, removeAddedNodule, removeNodes, removeNodule)
from .WorkerProcess import ProcessRunnerProtocol, WorkerProcess

MODULE_DIR = Path(__file__).resolve().parents[1]  # holds LungNoduleExplainLib, put on the worker's PYTHONPATH


@dataclass(frozen=True)
class NoduleRequest:
    """One point to analyse. key: stable identity (markups node ID + control point ID); name: shown to users."""

    key: str
    name: str
    pointRas: tuple[float, float, float]


@dataclass
class AnalysisOutcome:
    status: str  # "succeeded" | "failed" | "cancelled"
    message: str = ""
    errorType: str = ""
    nodules: list[NoduleNodes] = field(default_factory=list)
    outDir: Path | None = None
    device: str = ""

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


def pythonExecutable() -> str:
    """Slicer's own Python for the worker (PythonSlicer), or this interpreter outside Slicer."""
    return shutil.which("PythonSlicer") or sys.executable


class AnalysisLogic:
    def __init__(self, scene=None, runnerFactory: Callable[..., ProcessRunnerProtocol] = WorkerProcess,
                 workerCommand: Sequence[str] | None = None):
        self.scene = scene if scene is not None else slicer.mrmlScene
        self.workerCommand = list(workerCommand or [pythonExecutable(), "-m", "LungNoduleExplainLib.worker"])
        self.worker = AnalysisWorker(self.workerCommand, self._onMessage, self._onWorkerEnded,
                                     onLog=lambda level, message: self.onLog(level, message),
                                     runnerFactory=runnerFactory, pythonPath=[str(MODULE_DIR)])
        self.onProgress: Progress = lambda fraction, message: None
        self.onLog: Callable[[str, str], None] = lambda level, message: None  # warnings include CPU fallback
        self.onFinished: Callable[[AnalysisOutcome], None] = lambda outcome: None
        self.lastOutcome: AnalysisOutcome | None = None
        self.lastResultDir: Path | None = None  # the last successful run's folder, kept for the report export
        self._runFolders: list[Path] = []  # kept run folders: the last one, and those whose nodules are shown
        self.mapOpacity = MapDisplay.DEFAULT_OPACITY
        self.mapThreshold = MapDisplay.DEFAULT_THRESHOLD
        self._workDir: Path | None = None  # the running analysis' folder (in the worker's session folder)
        self._ctNode = None
        self._nodules: list[NoduleRequest] = []
        self._settings = ""  # NoduleSelection.analysisSettings of the running analysis

    # --- inputs ---------------------------------------------------------------------------------------------

    @staticmethod
    def nodulesFromMarkups(pointsNode) -> list[NoduleRequest]:
        """Every placed control point of a markups node is one nodule, named by its label (e.g. "Nodule-1").
        Points without a position (skipped or unplaced) or still being placed (preview) are left out."""
        nodules = []
        for index in range(pointsNode.GetNumberOfControlPoints()):
            if pointsNode.GetNthControlPointPositionStatus(index) != slicer.vtkMRMLMarkupsNode.PositionDefined:
                continue
            position = [0.0, 0.0, 0.0]
            pointsNode.GetNthControlPointPositionWorld(index, position)
            label = pointsNode.GetNthControlPointLabel(index) or f"Nodule {index + 1}"
            nodules.append(NoduleRequest(key=NoduleSelection.pointKey(pointsNode, index), name=label,
                                         pointRas=tuple(position)))
        return nodules

    def nodulesToAnalyze(self, ctNode, nodules: Sequence[NoduleRequest], bundlePath: str | Path | None = None,
                         classifyAnyway: bool = False) -> list[NoduleRequest]:
        """Of `nodules`, those without a current result (new, moved, results deleted, or analysed with another CT,
        bundle or classify-anyway): what Analyze runs (NoduleSelection.pointsToAnalyze)."""
        settings = NoduleSelection.analysisSettings(ctNode, bundlePath, classifyAnyway)
        return NoduleSelection.pointsToAnalyze(self.scene, nodules, settings)

    # --- running --------------------------------------------------------------------------------------------

    def isRunning(self) -> bool:
        """An analysis is in flight (the worker process itself stays between analyses)."""
        return self.worker.busy

    def prepareWorker(self, device: str = Device.AUTO, bundlePath: str | Path | None = None) -> None:
        """Start the worker and load the model now, so that the first Analyze does not wait for it."""
        self.worker.prepare(str(bundlePath) if bundlePath else None, device)

    def startAnalysis(self, ctNode, nodules: Sequence[NoduleRequest], device: str = Device.AUTO,
                      bundlePath: str | Path | None = None, classifyAnyway: bool = False) -> None:
        """Start the worker; returns at once. Raises ValueError (nothing started) when the inputs are unusable.
        classifyAnyway: classify points where no nodule is found (research; their table says so); by default
        such a point gets a "no nodule found" table, and a single such point fails the run with the reason."""
        if self.isRunning():
            raise RuntimeError("an analysis is already running; cancel it first")
        if ctNode is None or ctNode.GetImageData() is None:
            raise ValueError("select a CT volume first")
        if ctNode.GetAttribute(ROLE_ATTRIBUTE) == "map":
            raise ValueError(f"{ctNode.GetName()!r} is an activation map of an earlier analysis, not a CT; "
                             "select the CT")
        if not nodules:
            raise ValueError("place at least one nodule point (\"Place nodule point\", then click the nodule)")
        if device not in Device.names():  # which device it runs on is the worker's (devices.choose_device)
            raise ValueError(f"device {device!r} is not one of {Device.names()}")
        if bundlePath and not Path(bundlePath).exists():
            raise ValueError(f"model bundle not found: {bundlePath}")
        self._workDir = self.worker.runFolder()
        self._ctNode, self._nodules = ctNode, list(nodules)
        self._settings = NoduleSelection.analysisSettings(ctNode, bundlePath, classifyAnyway)
        try:
            self._startWorker(ctNode, nodules, device, bundlePath, classifyAnyway)
        except (OSError, ValueError):
            _removeFolder(self._workDir)
            self._workDir = None
            raise

    def _startWorker(self, ctNode, nodules: Sequence[NoduleRequest], device: str, bundlePath,
                     classifyAnyway: bool = False) -> None:
        self.onProgress(0.0, f"Exporting {ctNode.GetName()} for the analysis")
        matrix = vtk.vtkMatrix4x4()
        ctNode.GetIJKToRASMatrix(matrix)  # the CT is written again only when its voxels or geometry changed
        ctKey = (ctNode.GetID(), ctNode.GetImageData().GetMTime(),
                 tuple(matrix.GetElement(r, c) for r in range(3) for c in range(4)))
        ctPath = self.worker.ctFile(ctKey, lambda path: self._writeVolume(ctNode, path))
        points = [volumeRasFromWorld(ctNode, n.pointRas) for n in nodules]
        request = Request(ct=ctPath, points=points, out_dir=self._workDir / "results",
                          space=PointSpace.RAS, bundle=Path(bundlePath) if bundlePath else None, device=device,
                          source=f"Slicer volume {ctNode.GetName()!r}", classify_anyway=classifyAnyway)
        self.worker.submit(request.to_json(), str(bundlePath) if bundlePath else None, device)

    @staticmethod
    def _writeVolume(volumeNode, path: Path) -> None:
        """Write without adding a storage node to the scene (the scene must stay unchanged on failure)."""
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        storage.SetUseCompression(False)  # faster; the file lives only for this session
        if not storage.WriteData(volumeNode):
            raise ValueError(f"cannot export {volumeNode.GetName()} to {path}")

    def poll(self) -> bool:
        """Deliver the worker's messages (call from the main thread); True while an analysis is in flight."""
        return self.worker.poll()

    def isPreparing(self) -> bool:
        """prepareWorker's model load has not answered yet (poll() delivers its answer to onLog)."""
        return self.worker.preparing

    def cancel(self) -> None:
        """Kill the worker and its children (the next Analyze starts a fresh one); the scene stays as it was."""
        self.worker.cancel()

    def waitForFinished(self, timeout_s: float = 600.0, interval_s: float = 0.05) -> AnalysisOutcome:
        deadline = time.monotonic() + timeout_s
        while self.poll():
            if time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"the analysis did not finish within {timeout_s:g} s and was cancelled")
            time.sleep(interval_s)
        return self.lastOutcome

    def _onMessage(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "progress":
            self.onProgress(float(message.get("fraction", 0.0)), str(message.get("message", "")))
        elif kind == "log":
            self.onLog(str(message.get("level", "info")), str(message.get("message", "")))
        elif kind == "result":
            self._finish(self._loadResult(message))
        elif kind == "error":
            self._finish(AnalysisOutcome("failed", message.get("message", ""), message.get("error_type", "")))

    def _onWorkerEnded(self, exitCode: int | None) -> None:
        """The worker ended during the analysis. exitCode None: cancel(); negative: killed by that signal (POSIX)."""
        if exitCode is None:
            self._finish(AnalysisOutcome("cancelled", "Analysis cancelled; the scene was left unchanged."))
        else:
            self._finish(AnalysisOutcome("failed", describeAbnormalExit(exitCode)))

    def _finish(self, outcome: AnalysisOutcome) -> None:
        if outcome.succeeded:
            self._keepWorkDir()
        else:
            _removeFolder(self._workDir)
        self._workDir = None
        self.lastOutcome = outcome
        self.onFinished(outcome)

    def _loadResult(self, result: dict) -> AnalysisOutcome:
        if not self.scene.IsNodePresent(self._ctNode):
            # Nothing observes the CT while the worker runs; results for a deleted CT would float detached.
            return AnalysisOutcome("failed", f"the CT {self._ctNode.GetName()!r} was removed from the scene "
                                             "during the analysis; nothing was added")
        findings = [Path(p).parent for p in result.get("findings", [])]
        try:
            nodules = self.loadResults(self._ctNode, self._nodules, findings)
        except ResultError as exc:
            return AnalysisOutcome("failed", str(exc), type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - the UI must leave its running state whatever happens here
            self.onLog("error", traceback.format_exc())
            return AnalysisOutcome("failed", f"loading the results failed: {type(exc).__name__}: {exc}",
                                   type(exc).__name__)
        for request, nodule in zip(self._nodules, nodules):  # what Analyze need not run again
            NoduleSelection.markAnalysed(nodule.tableNode, request.pointRas, self._settings)
        return AnalysisOutcome("succeeded", f"Analysed {len(nodules)} nodule(s) on {result.get('device', '?')}",
                               nodules=nodules, outDir=Path(result["out_dir"]), device=result.get("device", ""))

    def _keepWorkDir(self) -> None:
        self._runFolders.append(self._workDir)
        self.lastResultDir = self._workDir / "results"
        self._removeUnusedRunFolders()

    def _removeUnusedRunFolders(self) -> None:
        """Delete the run folders that neither hold the last run (the HTML report) nor a nodule shown in the scene
        (Export to DICOM reads its folder again)."""
        used = [NoduleSelection.resultFolder(t) for t in NoduleSelection.resultTables(self.scene).values()]
        kept = []
        for run in self._runFolders:
            if (self.lastResultDir is not None and self.lastResultDir.parent == run) or \
                    any(folder is not None and folder.is_relative_to(run) for folder in used):
                kept.append(run)
            else:
                _removeFolder(run)
        self._runFolders = kept

    # --- results into the scene -----------------------------------------------------------------------------

    def loadResults(self, ctNode, nodules: Sequence[NoduleRequest], folders: Sequence[Path]) -> list[NoduleNodes]:
        """All or nothing: read and check every folder off-scene, add all new nodes, and only then remove the old
        nodes of the re-analysed nodules. If anything raises, what this call added is removed again (the heat
        colour table too, if this call created it) and the old nodes are untouched."""
        if len(folders) != len(nodules):
            raise ResultError(f"the worker returned {len(folders)} result(s) for {len(nodules)} point(s)")
        loaded = [readNodule(folder, ctNode, n.key, n.name) for folder, n in zip(folders, nodules)]
        # Collected before adding: the new nodes and folders carry the same key as the old ones.
        old = [(nodesOfNodule(self.scene, n.key), foldersOfNodule(self.scene, n.key)) for n in loaded]
        previousColorNode = self.scene.GetFirstNodeByName(MapDisplay.HEAT_COLOR_NODE_NAME)
        colorNode = MapDisplay.getOrCreateHeatColorNode(self.scene)
        added: list[NoduleNodes] = []
        try:
            for nodule in loaded:
                added.append(nodule)  # before addNodule, so that a nodule added part-way is removed too
                addNodule(self.scene, nodule, ctNode, colorNode, self.mapThreshold)
            shown = [n for n in loaded if n.mapNodes]  # points without a nodule have no maps
            if shown:
                first = shown[0]
                self.showMap(ctNode, first.mapNodes[first.finding["outputs"][0]["name"]])
        except BaseException:
            for nodule in added:
                removeAddedNodule(self.scene, nodule)
            if colorNode is not previousColorNode:  # created by this call
                removeNodes(self.scene, [colorNode], [])
            raise
        for nodes, folders in old:
            removeNodes(self.scene, nodes, folders)
        return loaded

    def showMap(self, ctNode, mapNode) -> None:
        """mapNode as the foreground over ctNode in every slice view, at the logic's opacity, with its colour
        legend (and no other map's)."""
        MapDisplay.showMap(self.scene, ctNode, mapNode, self.mapOpacity)
        if mapNode is not None:
            NoduleSelection.showColorLegend(self.scene, mapNode)

    def setMapOpacity(self, opacity: float) -> None:
        MapDisplay.setMapOpacity(self.scene, opacity)
        self.mapOpacity = opacity

    def setMapThreshold(self, threshold: float) -> None:
        """Hide map values below `threshold` in every map of the scene (the paper's figures use 0.25)."""
        MapDisplay.setMapThreshold(self.mapNodes(), threshold)
        self.mapThreshold = threshold

    def sourceVolume(self, mapNode):
        """The CT `mapNode` was computed on, or None when that is no longer in the scene."""
        sourceID = mapNode.GetAttribute(SOURCE_VOLUME_ATTRIBUTE)
        return self.scene.GetNodeByID(sourceID) if sourceID else None

    def mapNodes(self) -> list:
        className = "vtkMRMLScalarVolumeNode"
        nodes = [self.scene.GetNthNodeByClass(i, className)
                 for i in range(self.scene.GetNumberOfNodesByClass(className))]
        return [n for n in nodes if n.GetAttribute(ROLE_ATTRIBUTE) == "map"]

    def removeNodule(self, key: str) -> int:
        """Remove a nodule's nodes and folder (and its result files, unless the last run's report needs them)."""
        removed = removeNodule(self.scene, key)
        self._removeUnusedRunFolders()
        return removed

    def removeResultsWithoutPoint(self, pointsNode) -> list[str]:
        """Remove the results of the nodules whose control point was deleted from `pointsNode` (call when a point
        is removed, and after a run during which one was); returns their keys."""
        keys = NoduleSelection.keysWithoutPoint(self.scene, pointsNode)
        for key in keys:
            self.removeNodule(key)
        return keys

    # --- report ---------------------------------------------------------------------------------------------

    def exportReport(self, targetDir: str | Path) -> Path:
        """Copy the last successful run's report (report.html, per-nodule folders) to targetDir."""
        if self.lastResultDir is None or not self.lastResultDir.is_dir():
            raise ValueError("no analysis result to export yet; run Analyze first")
        self.worker.waitForFile(self.lastResultDir / "report.html")  # written just after the results were shown
        targetDir = Path(targetDir)
        shutil.copytree(self.lastResultDir, targetDir, dirs_exist_ok=True)
        report = targetDir / "report.html"
        if not report.is_file():
            raise ResultError(f"the analysis wrote no report.html in {self.lastResultDir}")
        return report

    def exportDicom(self, keys: Sequence[str], database=None,
                    importer: Callable[[str, object], object] | None = None) -> DicomExport.DicomExported:
        """The results of the nodules `keys` (analysed on one CT loaded from Slicer's DICOM database) as one DICOM
        Segmentation, their Parametric Maps and one TID 1500 SR, written by the engine's writer into a private
        folder and imported (copied) into Slicer's DICOM database (DicomExport); the objects name the nodules as the
        Nodule list does. Points without a nodule are left out. DicomExport.NotExportable says why it cannot run."""
        views = [v for v in NoduleSelection.noduleViews(self.scene) if v.key in keys and v.mapNodes]
        if not views:
            raise DicomExport.NotExportable("no analysed nodule to export (a point where no nodule was found has "
                                            "nothing to export); run Analyze first")
        if any(v.ctNode is None for v in views) or len({v.ctNode.GetID() for v in views}) > 1:
            raise DicomExport.NotExportable("the nodules must have been analysed on one CT that is still in the "
                                            "scene")
        folders = [(v.name, NoduleSelection.resultFolder(v.tableNode)) for v in views]
        gone = [name for name, folder in folders if folder is None]
        if gone:
            raise DicomExport.NotExportable(
                f"the result files of {', '.join(gone)} are gone (they are kept only while this Slicer session shows "
                "them, not in a saved scene); press Analyze to analyse every point again, then export")
        staging = Path(tempfile.mkdtemp(prefix="dicom-", dir=self.worker.sessionFolder()))
        try:
            return DicomExport.exportToDicom(folders, views[0].ctNode, staging / "objects", database, importer)
        finally:
            _removeFolder(staging)

    def clearPatientData(self) -> None:
        """Cancel any run and delete the exported CT and the kept results (e.g. when the scene closes); the worker
        stays, with the model loaded."""
        self.cancel()
        self.worker.removeCtFile()
        for run in self._runFolders:
            _removeFolder(run)
        self._runFolders, self.lastResultDir = [], None

    def cleanup(self) -> None:
        """Stop the worker and delete every temporary file (call when the module or the application closes)."""
        self.worker.close()
        self._runFolders, self.lastResultDir = [], None


def volumeRasFromWorld(volumeNode, pointWorld: Sequence[float]) -> tuple[float, float, float]:
    """Points are clicked in world RAS; the CT is written without its parent transform, so the worker needs
    the point in the CT's own RAS frame (the result nodes then get the CT's transform again)."""
    parent = volumeNode.GetParentTransformNode()
    if parent is None:
        return tuple(float(v) for v in pointWorld)
    fromWorld = vtk.vtkGeneralTransform()
    parent.GetTransformFromWorld(fromWorld)
    return tuple(float(v) for v in fromWorld.TransformPoint([float(v) for v in pointWorld]))


def describeAbnormalExit(exitCode: int) -> str:
    """Why the worker ended during an analysis, for the user; a negative exit code is the signal that killed it
    (POSIX)."""
    if exitCode < 0:
        try:
            name = signal.Signals(-exitCode).name
        except ValueError:
            name = "unknown signal"
        if name == "SIGKILL":  # not our cancel() (that reports no exit code); usually the out-of-memory killer
            name += ": often the system running out of memory"
        ended = f"was killed by signal {-exitCode} ({name})"
    else:
        ended = f"ended with exit code {exitCode}"
    return (f"the analysis process {ended} without a result; the scene was left unchanged (see the log for its "
            "output); the next Analyze starts a fresh analysis process")


def _removeFolder(folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
