"""The Slicer module's logic on the real MRML libraries (slicer-core), with a real LIDC CT and a real background
process. The worker is the fake engine (Testing/fake_engine.py: same protocol and file layout as the engine)
until the real analysis is available; `test_real_engine_*` then runs the real one."""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO_ROOT

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) provides the MRML libraries")
vtk = pytest.importorskip("vtk")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package has no MRML (needs slicer-core)", allow_module_level=True)

sys.path.insert(0, str(REPO_ROOT / "LungNoduleExplain"))
from LungNoduleExplainSlicer import MapDisplay, ResultNodes  # noqa: E402
from LungNoduleExplainSlicer.AnalysisLogic import AnalysisLogic, NoduleRequest  # noqa: E402
from LungNoduleExplainSlicer.HeadlessScene import addSliceView, loadVolume, makeScene, renderAxialSlice  # noqa: E402
from LungNoduleExplainSlicer.ResultNodes import (NODULE_KEY_ATTRIBUTE, SIZE_ATTRIBUTES,  # noqa: E402
                                                 SOURCE_VOLUME_ATTRIBUTE, ResultError, nodesOfNodule)

FAKE_WORKER = [sys.executable, str(Path(__file__).with_name("fake_engine.py"))]


LOGICS: list[AnalysisLogic] = []  # every logic a test made; its worker and temporary files end with the test


def makeLogic(scene, workerCommand=FAKE_WORKER) -> AnalysisLogic:
    logic = AnalysisLogic(scene, workerCommand=workerCommand)
    LOGICS.append(logic)
    return logic


@pytest.fixture(autouse=True)
def cleanupLogics():
    yield
    while LOGICS:
        LOGICS.pop().cleanup()


@pytest.fixture()
def scene():
    scene, logics = makeScene()
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = scene  # slicer.util's array helpers use it
    yield scene
    slicer.mrmlScene = previous


@pytest.fixture(scope="module")
def lidc_nrrd(ct_dir, tmp_path_factory) -> tuple[Path, list[float]]:
    """LIDC-IDRI-0001's real DICOM sub-stack as NRRD (as Slicer's DICOM module would load it) and its nodule."""
    from LungNoduleExplainLib.volume import read_ct
    image = read_ct(ct_dir / "LIDC-IDRI-0001" / "dicom")
    path = tmp_path_factory.mktemp("ct") / "LIDC-IDRI-0001.nrrd"
    sitk.WriteImage(image, str(path))
    nodules = json.loads((ct_dir / "nodules.json").read_text())
    centroid = next(n["centroid_ras_mm"] for n in nodules if n["patient_id"] == "LIDC-IDRI-0001")
    return path, centroid


@pytest.fixture(scope="module")
def lidc_crop(lidc_nrrd, tmp_path_factory) -> tuple[Path, list[float]]:
    """A 160 x 160 in-plane crop of the same real series around the nodule, for the tests that run many times."""
    image = sitk.ReadImage(str(lidc_nrrd[0]))
    centre = image.TransformPhysicalPointToIndex([-lidc_nrrd[1][0], -lidc_nrrd[1][1], lidc_nrrd[1][2]])
    lower = [max(0, centre[0] - 80), max(0, centre[1] - 80), 0]
    crop = sitk.RegionOfInterest(image, [160, 160, image.GetSize()[2]], lower)
    path = tmp_path_factory.mktemp("crop") / "LIDC-IDRI-0001-crop.nrrd"
    sitk.WriteImage(crop, str(path))
    return path, lidc_nrrd[1]


@pytest.fixture()
def ctNode(scene, lidc_crop):
    return addCt(scene, lidc_crop[0])


def addCt(scene, path: Path):
    """The CT in the scene, placed in a patient/study in the subject hierarchy as DICOM loading does."""
    node = loadVolume(scene, path, "LIDC-IDRI-0001 CT")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "LIDC-IDRI-0001")
    study = sh.CreateStudyItem(patient, "CT chest")
    item = sh.GetItemByDataNode(node) or sh.CreateItem(study, node)
    sh.SetItemParent(item, study)
    return node


@pytest.fixture(scope="module")
def analysed(lidc_nrrd):
    """One analysis shared by the tests that only look at its result: (scene, ctNode, the nodule's nodes)."""
    scene, logics = makeScene()
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = scene
    ctNode = addCt(scene, lidc_nrrd[0])
    outcome = run(makeLogic(scene), ctNode, nodules(lidc_nrrd, 0.0))
    assert outcome.succeeded, outcome.message
    yield scene, ctNode, outcome.nodules[0]
    slicer.mrmlScene = previous


def nodules(lidc_nrrd, *offsets_mm: float) -> list[NoduleRequest]:
    centroid = lidc_nrrd[1]
    return [NoduleRequest(key=f"points/{i}", name=f"Nodule {i + 1}",
                          pointRas=(centroid[0] + dx, centroid[1], centroid[2])) for i, dx in enumerate(offsets_mm)]


def placedPoints(scene, lidc_nrrd, *offsets_mm: float):
    """A markups node with one placed point per offset (mm in x from the nodule), labelled Nodule-1, -2, ..."""
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Nodule")
    x, y, z = lidc_nrrd[1]
    for n, dx in enumerate(offsets_mm, start=1):
        points.AddControlPoint(vtk.vtkVector3d(x + dx, y, z), f"Nodule-{n}")
    return points


def sceneInventory(scene) -> tuple[int, int, list[str]]:
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    items = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), items, True)
    names = sorted(scene.GetNthNode(i).GetName() or "" for i in range(scene.GetNumberOfNodes()))
    return scene.GetNumberOfNodes(), items.GetNumberOfIds(), names


def ijkToRas(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def assertAlignedSubGrid(node, ctNode) -> None:
    """node lies on ctNode's grid over a box of it: same spacing and direction, first voxel on a CT voxel."""
    own, ct = ijkToRas(node), ijkToRas(ctNode)
    np.testing.assert_allclose(own[:3, :3], ct[:3, :3], atol=1e-4)
    start = (np.linalg.inv(ct) @ own[:, 3])[:3]
    np.testing.assert_allclose(start, np.round(start), atol=1e-3)
    assert np.all(np.round(start) >= 0)
    assert np.all(np.round(start) + node.GetImageData().GetDimensions() <= ctNode.GetImageData().GetDimensions())


def run(logic: AnalysisLogic, ctNode, requests):
    logic.startAnalysis(ctNode, requests, device="cpu")
    return logic.waitForFinished(timeout_s=60)


def test_analysis_puts_segmentation_table_and_maps_on_the_ct_grid_under_the_study(analysed):
    scene, ctNode, nodule = analysed

    assert set(nodule.mapNodes) == {"malignancy", "spiculated", "calcified"}
    dims = ctNode.GetImageData().GetDimensions()
    for mapNode in nodule.mapNodes.values():
        assert mapNode.GetScene() is scene
        assertAlignedSubGrid(mapNode, ctNode)
        assert np.prod(mapNode.GetImageData().GetDimensions()) < 0.05 * np.prod(dims)  # the nodule's region only

    segmentation = nodule.segmentationNode.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1 and segmentation.GetNthSegment(0).GetName() == "nodule"

    table = nodule.tableNode.GetTable()
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == \
        ["output", "finding", "probability", "threshold", "result", "members"]
    members = {table.GetValue(r, 0).ToString(): table.GetValue(r, 5).ToString() for r in range(table.GetNumberOfRows())}
    # the fake's three members: only spiculated's (0.35-0.55) fall on both sides of its threshold 0.4
    assert members == {"malignancy": "0.05-0.25", "spiculated": "0.35-0.55 · members disagree",
                       "calcified": "0.65-0.85"}
    rows = {table.GetValue(r, 0).ToString(): (table.GetValue(r, 2).ToDouble(), table.GetValue(r, 4).ToString())
            for r in range(table.GetNumberOfRows())}
    # the call's meaning for the patient beside it: no malignancy and calcification reassure, spicules concern
    assert rows == {"malignancy": (pytest.approx(0.2), "negative (reassuring)"),
                    "spiculated": (pytest.approx(0.5), "positive (concerning)"),
                    "calcified": (pytest.approx(0.8), "positive (reassuring)")}
    # the fake's 6 mm radius sphere: about 12 mm long and short axis on its widest axial slice
    size = {k: float(nodule.tableNode.GetAttribute(a)) for k, a in SIZE_ATTRIBUTES.items()}
    assert size["long_axis_mm"] == pytest.approx(12.0, abs=1.0)
    assert size["short_axis_mm"] == pytest.approx(12.0, abs=1.0)
    assert size["volume_mm3"] > 0 and nodule.tableNode.GetName().endswith("mm axial)")

    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = sh.GetItemParent(sh.GetItemByDataNode(ctNode))
    assert sh.GetItemLevel(study) == "Study"
    assert sh.GetItemParent(nodule.folderItemID) == study and sh.GetItemName(nodule.folderItemID) == "Nodule 1"
    for node in nodule.nodes():
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == nodule.folderItemID


def test_the_segmentation_covers_the_clicked_point(analysed, lidc_nrrd):
    scene, ctNode, nodule = analysed
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    scene.AddNode(labelmap)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(nodule.segmentationNode, labelmap)
    rasToIjk = np.linalg.inv(ijkToRas(labelmap))
    i, j, k = np.round(rasToIjk @ [*lidc_nrrd[1], 1.0])[:3].astype(int)
    voxels = slicer.util.arrayFromVolume(labelmap)
    sphere = 4 / 3 * np.pi * 6.0 ** 3 / np.prod(ctNode.GetSpacing())  # the fake's 6 mm sphere, in voxels
    assert voxels[k, j, i] == 1 and 0.8 * sphere < voxels.sum() < 1.2 * sphere


def test_maps_use_the_heat_colours_and_hide_values_below_a_quarter_in_the_foreground(analysed):
    scene, ctNode, nodule = analysed
    heat = scene.GetFirstNodeByName(MapDisplay.HEAT_COLOR_NODE_NAME)
    for mapNode in nodule.mapNodes.values():
        display = mapNode.GetDisplayNode()
        assert display.GetColorNodeID() == heat.GetID()
        assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(0.25)
        assert (display.GetWindow(), display.GetLevel()) == (pytest.approx(1.0), pytest.approx(0.5))
    for composite in MapDisplay.sliceCompositeNodes(scene):
        assert composite.GetBackgroundVolumeID() == ctNode.GetID()
        assert composite.GetForegroundVolumeID() == nodule.mapNodes["malignancy"].GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(MapDisplay.DEFAULT_OPACITY)
    r, g, b = MapDisplay.heatColor(0.0)
    assert r > g and r > b  # dark red at the bottom, white at the top
    assert MapDisplay.heatColor(1.0) == pytest.approx((1.0, 1.0, 0.9))


def test_the_slice_view_shows_the_map_in_colour_only_where_it_reaches_the_threshold(scene, ctNode, lidc_crop):
    sliceLogic = addSliceView(scene, "Red", size=512)
    logic = makeLogic(scene)
    nodule = run(logic, ctNode, nodules(lidc_crop, 0.0)).nodules[0]
    assert sliceLogic.GetSliceCompositeNode().GetForegroundVolumeID() == nodule.mapNodes["malignancy"].GetID()

    def colouredPixels() -> int:
        rgb = renderAxialSlice(sliceLogic, lidc_crop[1][2]).astype(int)
        return int(((rgb[..., 0] - rgb[..., 2]) > 40).sum())  # heat colours: red well above blue; CT is grey

    # The fake map is exp(-(d / 6 mm)^2): it reaches 0.25 within 6 * sqrt(ln 4) = 7.1 mm of the point.
    coloured = colouredPixels()
    pixelArea = np.prod(np.array(sliceLogic.GetSliceNode().GetFieldOfView()[:2]) / 512)  # mm^2, after the fit
    expected = np.pi * (6.0 * np.sqrt(np.log(4))) ** 2 / pixelArea
    assert 0.7 * expected < coloured < 1.3 * expected
    logic.setMapThreshold(0.9)  # now only within 6 * sqrt(ln(1/0.9)) = 1.9 mm
    assert colouredPixels() < 0.15 * expected


def test_map_selector_opacity_and_threshold_controls_change_the_display(scene, ctNode, lidc_crop):
    logic = makeLogic(scene)
    progress = []
    logic.onProgress = lambda fraction, message: progress.append(fraction)
    nodule = run(logic, ctNode, nodules(lidc_crop, 0.0)).nodules[0]
    assert progress[-1] == 1.0
    logic.setMapOpacity(0.3)
    logic.setMapThreshold(0.5)
    logic.showMap(ctNode, nodule.mapNodes["calcified"])
    for composite in MapDisplay.sliceCompositeNodes(scene):
        assert composite.GetForegroundVolumeID() == nodule.mapNodes["calcified"].GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.3)
    assert all(n.GetDisplayNode().GetLowerThreshold() == pytest.approx(0.5) for n in nodule.mapNodes.values())
    with pytest.raises(ValueError, match="within \\[0, 1\\]"):
        logic.setMapThreshold(1.5)


def test_rerunning_a_nodule_replaces_only_its_own_nodes(scene, ctNode, lidc_crop):
    logic = makeLogic(scene)
    first, second = run(logic, ctNode, nodules(lidc_crop, 0.0, 20.0)).nodules
    secondIds = sorted(n.GetID() for n in nodesOfNodule(scene, second.key))
    firstIds = sorted(n.GetID() for n in nodesOfNodule(scene, first.key))
    before = sceneInventory(scene)

    again = run(logic, ctNode, nodules(lidc_crop, 0.0)).nodules[0]
    assert sorted(n.GetID() for n in nodesOfNodule(scene, second.key)) == secondIds
    newIds = sorted(n.GetID() for n in nodesOfNodule(scene, again.key))
    assert len(newIds) == len(firstIds) and not set(newIds) & set(firstIds)
    assert all(scene.GetNodeByID(i) is None for i in firstIds)
    assert sceneInventory(scene) == before  # same number of nodes, items and names: nothing left behind


@pytest.mark.parametrize("failure, expected", [("input", "far from any tissue"), ("crash", "simulated crash")])
def test_a_failed_run_leaves_the_scene_unchanged(scene, ctNode, lidc_crop, monkeypatch, failure, expected):
    logic = makeLogic(scene)
    run(logic, ctNode, nodules(lidc_crop, 0.0))
    before = sceneInventory(scene)
    monkeypatch.setenv("FAKE_FAIL", failure)  # read when a worker starts: a second logic's worker fails
    outcome = run(makeLogic(scene), ctNode, nodules(lidc_crop, 0.0))
    assert outcome.status == "failed" and expected in outcome.message
    assert sceneInventory(scene) == before


def test_a_point_without_a_nodule_gets_a_table_saying_so_and_the_others_load(scene, ctNode, lidc_crop, monkeypatch):
    monkeypatch.setenv("FAKE_NO_NODULE", "2")
    outcome = run(makeLogic(scene), ctNode, nodules(lidc_crop, 0.0, 2.0))
    assert outcome.succeeded, outcome.message
    found, missing = outcome.nodules
    assert found.segmentationNode is not None and found.mapNodes
    assert missing.segmentationNode is None and missing.mapNodes == {}
    table = missing.tableNode.GetTable()
    assert table.GetNumberOfRows() == 1 and table.GetValueByName(0, "result").ToString() == "no nodule found"
    assert "7.8 mm from the point" in table.GetValueByName(0, "finding").ToString()
    assert "no nodule found" in missing.tableNode.GetName() and scene.IsNodePresent(missing.tableNode)


def test_a_single_point_without_a_nodule_fails_with_the_reason(scene, ctNode, lidc_crop, monkeypatch):
    monkeypatch.setenv("FAKE_NO_NODULE", "1")
    before = sceneInventory(scene)
    outcome = run(makeLogic(scene), ctNode, nodules(lidc_crop, 0.0))
    assert outcome.status == "failed" and outcome.errorType == "NoNoduleError"
    assert "no nodule found" in outcome.message and "7.8 mm" in outcome.message
    assert sceneInventory(scene) == before


def test_classify_anyway_puts_the_warning_in_the_table(scene, ctNode, lidc_crop, monkeypatch):
    monkeypatch.setenv("FAKE_NO_NODULE", "1")
    logic = makeLogic(scene)
    logic.startAnalysis(ctNode, nodules(lidc_crop, 0.0), device="cpu", classifyAnyway=True)
    outcome = logic.waitForFinished(timeout_s=60)
    assert outcome.succeeded, outcome.message
    table = outcome.nodules[0].tableNode.GetTable()
    assert table.GetValueByName(0, "result").ToString() == "no nodule found"
    assert "classified anyway" in table.GetValueByName(0, "finding").ToString()
    assert table.GetNumberOfRows() == 1 + len(outcome.nodules[0].mapNodes)


class SecondNoduleFailure:
    """While armed, makes one loading step fail for the second nodule of a run."""

    def __init__(self, monkeypatch, step: str):
        self.armed, self.imports = False, 0
        if step == "segmentation import":  # while reading, before the scene is touched
            realLogic = slicer.vtkSlicerSegmentationsModuleLogic
            failure = self

            class FailingLogic:
                @staticmethod
                def ImportLabelmapToSegmentationNode(labelmap, segmentation):
                    failure.imports += 1
                    if failure.armed and failure.imports == 2:
                        return False
                    return realLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)

            monkeypatch.setattr(slicer, "vtkSlicerSegmentationsModuleLogic", FailingLogic)
        else:  # while adding: the first nodule and part of the second are in the scene by then
            realConfigure = ResultNodes.configureMapDisplay

            def failingConfigure(mapNode, *args):
                if self.armed and mapNode.GetName().startswith("Nodule 2 "):
                    raise RuntimeError("simulated failure of the map display")
                return realConfigure(mapNode, *args)

            monkeypatch.setattr(ResultNodes, "configureMapDisplay", failingConfigure)

    def arm(self, armed: bool = True) -> None:
        self.armed, self.imports = armed, 0


def nodeIdsByNodule(scene, requests) -> list[list[str]]:
    return [sorted(n.GetID() for n in nodesOfNodule(scene, r.key)) for r in requests]


@pytest.mark.parametrize("step, expected", [("segmentation import", "cannot import the segmentation of Nodule 2"),
                                            ("map display", "simulated failure of the map display")],
                         ids=["while reading", "while adding"])
def test_a_failure_loading_the_second_nodule_leaves_the_scene_and_the_old_nodes_unchanged(
        scene, ctNode, lidc_crop, monkeypatch, step, expected):
    failure = SecondNoduleFailure(monkeypatch, step)
    logic = makeLogic(scene)
    requests = nodules(lidc_crop, 0.0, 20.0)
    empty = sceneInventory(scene)
    failure.arm()
    assert run(logic, ctNode, requests).status == "failed"
    assert sceneInventory(scene) == empty  # not even the heat colour table this run created is left

    failure.arm(False)
    assert run(logic, ctNode, requests).succeeded
    oldIds, before = nodeIdsByNodule(scene, requests), sceneInventory(scene)
    failure.arm()
    outcome = run(logic, ctNode, requests)
    assert outcome.status == "failed" and expected in outcome.message
    assert sceneInventory(scene) == before  # same nodes, hierarchy items and names
    assert nodeIdsByNodule(scene, requests) == oldIds  # the first nodule's old nodes were not replaced


def test_an_unexpected_error_while_loading_ends_the_run_as_failed_with_its_traceback(scene, ctNode, lidc_crop):
    logic = makeLogic(scene)
    logs = []
    logic.onLog = lambda level, message: logs.append((level, message))

    def broken(*args):
        raise KeyError("segment")

    logic.loadResults = broken
    before = sceneInventory(scene)
    outcome = run(logic, ctNode, nodules(lidc_crop, 0.0))
    assert outcome.status == "failed" and "KeyError" in outcome.message
    assert any(level == "error" and "Traceback" in message for level, message in logs)
    assert not logic.isRunning() and sceneInventory(scene) == before


def test_a_cancelled_run_leaves_the_scene_unchanged_and_removes_its_files(scene, ctNode, lidc_crop, monkeypatch):
    logic = makeLogic(scene)
    before = sceneInventory(scene)
    monkeypatch.setenv("FAKE_DELAY_S", "60")
    finished = []
    logic.onFinished = finished.append
    started = []
    logic.onProgress = lambda fraction, message: started.append(message)
    logic.startAnalysis(ctNode, nodules(lidc_crop, 0.0), device="cpu")
    workDir = logic._workDir
    while not any("segmenting" in m for m in started):
        assert logic.poll(), "the worker ended before it could be cancelled"
    logic.cancel()
    assert [o.status for o in finished] == ["cancelled"]
    assert not logic.isRunning() and not workDir.exists()
    assert sceneInventory(scene) == before


def translate(scene, node, xMm: float):
    transform = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(transform)
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, xMm)
    transform.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())
    return transform


def test_a_ct_under_a_transform_gets_the_point_in_its_own_frame_and_results_follow_its_transform(
        scene, ctNode, lidc_crop):
    transform = translate(scene, ctNode, 30.0)  # the CT is shown 30 mm to the right
    centroid = lidc_crop[1]
    clicked = NoduleRequest("points/0", "Nodule 1", (centroid[0] + 30.0, centroid[1], centroid[2]))
    nodule = run(makeLogic(scene), ctNode, [clicked]).nodules[0]
    np.testing.assert_allclose(nodule.finding["point_ras_mm"], centroid, atol=1e-3)
    assert all(n.GetTransformNodeID() == transform.GetID() for n in (nodule.segmentationNode,
                                                                     *nodule.mapNodes.values()))


def test_a_transformed_cts_segmentation_lies_on_the_nodule_in_the_cts_own_frame(scene, ctNode, lidc_crop):
    """The segmentation gets the CT's transform, so its voxels and grid must stay in the CT's own frame (an
    import after setting the transform moved them by its inverse: 30 mm off)."""
    translate(scene, ctNode, 30.0)
    centroid = lidc_crop[1]
    clicked = NoduleRequest("points/0", "Nodule 1", (centroid[0] + 30.0, centroid[1], centroid[2]))
    segmentation = run(makeLogic(scene), ctNode, [clicked]).nodules[0].segmentationNode
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    scene.AddNode(labelmap)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(segmentation, labelmap)
    k, j, i = np.nonzero(slicer.util.arrayFromVolume(labelmap))
    segmentCentre = (ijkToRas(labelmap) @ [i.mean(), j.mean(), k.mean(), 1.0])[:3]  # the segmentation's frame
    np.testing.assert_allclose(segmentCentre, centroid, atol=1.0)
    ctIjkToRas = vtk.vtkMatrix4x4()
    ctNode.GetIJKToRASMatrix(ctIjkToRas)
    geometry = segmentation.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    assert geometry == slicer.vtkSegmentationConverter.SerializeImageGeometry(ctIjkToRas, ctNode.GetImageData())


@pytest.mark.parametrize("script, expected", [
    pytest.param("os.kill(os.getpid(), signal.SIGKILL)",
                 "the analysis process was killed by signal 9 (SIGKILL: often the system running out of memory) "
                 "without a result; the scene was left unchanged",
                 marks=pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")),
    ("sys.exit(3)", "the analysis process ended with exit code 3 without a result"),
], ids=["SIGKILL", "exit code 3"])
def test_a_worker_that_ends_abnormally_fails_and_says_how_it_ended(scene, ctNode, lidc_crop, tmp_path, script,
                                                                    expected):
    """A SIGKILL not sent by cancel() (the out-of-memory killer) is a failure, not a cancel."""
    worker = tmp_path / "worker.py"
    worker.write_text(f"import json, os, signal, sys\nsys.stdin.readline()\n{script}\n")  # dies on the request
    logic = makeLogic(scene, [sys.executable, str(worker)])
    before = sceneInventory(scene)
    outcome = run(logic, ctNode, nodules(lidc_crop, 0.0))
    assert outcome.status == "failed" and expected in outcome.message
    assert "the next Analyze starts a fresh analysis process" in outcome.message
    assert sceneInventory(scene) == before


def test_results_for_a_ct_removed_during_the_analysis_are_not_added(scene, ctNode, lidc_crop):
    logic = makeLogic(scene)
    logic.startAnalysis(ctNode, nodules(lidc_crop, 0.0), device="cpu")
    scene.RemoveNode(ctNode)  # the worker still runs: its results arrive through poll()
    before = sceneInventory(scene)
    outcome = logic.waitForFinished(timeout_s=60)
    assert outcome.status == "failed"
    assert outcome.message == ("the CT 'LIDC-IDRI-0001 CT' was removed from the scene during the analysis; "
                               "nothing was added")
    assert sceneInventory(scene) == before and logic.mapNodes() == []


def test_a_map_is_refused_as_the_input_and_each_map_names_the_ct_it_was_computed_on(scene, ctNode, lidc_crop):
    logic = makeLogic(scene)
    mapNode = run(logic, ctNode, nodules(lidc_crop, 0.0)).nodules[0].mapNodes["malignancy"]
    with pytest.raises(ValueError, match="'Nodule 1 malignancy map' is an activation map of an earlier analysis, "
                                         "not a CT"):
        logic.startAnalysis(mapNode, nodules(lidc_crop, 0.0), device="cpu")
    assert not logic.isRunning()
    assert [m.GetAttribute(SOURCE_VOLUME_ATTRIBUTE) for m in logic.mapNodes()] == [ctNode.GetID()] * 3
    assert logic.sourceVolume(mapNode).GetID() == ctNode.GetID()


def test_a_result_off_the_ct_grid_is_refused_and_nothing_is_added(scene, ctNode, lidc_crop, tmp_path):
    from fake_engine import FakeAnalyzer, fake_write_findings
    ct = sitk.ReadImage(str(lidc_crop[0]))
    shifted = sitk.Image(ct)
    shifted.SetOrigin([o + 5.0 for o in ct.GetOrigin()])
    finding = FakeAnalyzer().analyze(shifted, lidc_crop[1])
    fake_write_findings([finding], shifted, tmp_path)
    logic = makeLogic(scene)
    before = sceneInventory(scene)
    with pytest.raises(ResultError, match="not on the grid"):
        logic.loadResults(ctNode, nodules(lidc_crop, 0.0), [tmp_path / "nodule-01"])
    assert sceneInventory(scene) == before


def test_folders_written_by_the_real_report_writer_load_into_the_scene(scene, ctNode, lidc_crop, tmp_path):
    reports = pytest.importorskip("LungNoduleExplainLib.reports")
    from fake_engine import FakeAnalyzer
    ct = sitk.ReadImage(str(lidc_crop[0]))
    reports.write_findings([FakeAnalyzer().analyze(ct, lidc_crop[1])], ct, tmp_path / "out")
    logic = makeLogic(scene)
    nodule = logic.loadResults(ctNode, nodules(lidc_crop, 0.0), [tmp_path / "out" / "nodule-01"])[0]
    assert set(nodule.mapNodes) == {"malignancy", "spiculated", "calcified"}
    assert nodule.tableNode.GetTable().GetNumberOfRows() == 3


def test_inputs_are_checked_before_anything_starts(scene, ctNode, lidc_crop):
    logic = makeLogic(scene)
    with pytest.raises(ValueError, match="place at least one nodule point"):
        logic.startAnalysis(ctNode, [])
    with pytest.raises(ValueError, match="select a CT volume"):
        logic.startAnalysis(None, nodules(lidc_crop, 0.0))
    with pytest.raises(ValueError, match="model bundle not found"):
        logic.startAnalysis(ctNode, nodules(lidc_crop, 0.0), bundlePath="/no/such/bundle")
    assert not logic.isRunning()


def test_markups_points_become_nodules_keyed_by_their_control_point(scene):
    points = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(points)
    points.AddControlPoint(vtk.vtkVector3d(1.0, 2.0, 3.0), "Nodule-1")
    points.AddControlPoint(vtk.vtkVector3d(4.0, 5.0, 6.0), "right upper lobe")
    requests = AnalysisLogic.nodulesFromMarkups(points)
    assert [(r.name, r.pointRas) for r in requests] == [("Nodule-1", (1.0, 2.0, 3.0)),
                                                        ("right upper lobe", (4.0, 5.0, 6.0))]
    assert requests[0].key == f"{points.GetID()}/{points.GetNthControlPointID(0)}"


def unplacedAndPreviewPoints(scene):
    """Markups whose 2nd point was unplaced (or skipped in the place list) and whose 3rd is still being placed."""
    points = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(points)
    points.AddControlPoint(vtk.vtkVector3d(10.0, 20.0, -5.0), "Nodule-1")
    points.AddControlPoint(vtk.vtkVector3d(3.0, 4.0, -5.0), "Nodule-2")
    points.UnsetNthControlPointPosition(1)
    points.AddControlPoint(vtk.vtkVector3d(7.0, 7.0, 7.0), "Nodule-3")
    points.SetNthControlPointPosition(2, vtk.vtkVector3d(7.0, 7.0, 7.0), points.PositionPreview)
    return points


def test_only_placed_markups_points_become_nodules(scene):
    requests = AnalysisLogic.nodulesFromMarkups(unplacedAndPreviewPoints(scene))
    assert [(r.name, r.pointRas) for r in requests] == [("Nodule-1", (10.0, 20.0, -5.0))]


def test_the_report_export_copies_the_last_successful_run(scene, ctNode, lidc_crop, tmp_path):
    logic = makeLogic(scene)
    with pytest.raises(ValueError, match="no analysis result to export"):
        logic.exportReport(tmp_path / "early")
    run(logic, ctNode, nodules(lidc_crop, 0.0))
    report = logic.exportReport(tmp_path / "export")
    assert report.is_file() and (tmp_path / "export" / "nodule-01" / "finding.json").is_file()
    logic.cleanup()
    assert logic.lastResultDir is None


@pytest.fixture(scope="module")
def untrainedBundle(tmp_path_factory) -> Path:
    """A real bundle (format, manifest, task set) holding an untrained network, as test_cli_analyze builds it."""
    import torch
    from LungNoduleExplainLib.bundle import save_bundle
    from LungNoduleExplainLib.networks import NetworkConfig, build_network
    from LungNoduleExplainLib.tasks import load_task_set
    taskSet = load_task_set("lidc")
    network = NetworkConfig("hesam-mt-aag", (2, 4, 4, 8))
    torch.manual_seed(0)
    return save_bundle(tmp_path_factory.mktemp("bundle") / "bundle",
                       build_network(network, len(taskSet.manifestations)), taskSet, network,
                       {n: 0.5 for n in taskSet.names}, name="untrained-test", prior="nnunet",
                       training={"note": "untrained"}, metrics={})


def test_the_real_worker_analyzer_and_reports_load_into_the_scene(scene, ctNode, lidc_crop, untrainedBundle,
                                                                   monkeypatch):
    from LungNoduleExplainLib.tasks import load_task_set
    monkeypatch.setenv("FAKE_REAL_PIPELINE", "1")
    logic = makeLogic(scene)
    logic.startAnalysis(ctNode, nodules(lidc_crop, 0.0), device="cpu", bundlePath=untrainedBundle)
    outcome = logic.waitForFinished(timeout_s=300)
    assert outcome.succeeded, outcome.message
    nodule = outcome.nodules[0]
    names = load_task_set("lidc").names
    assert list(nodule.mapNodes) == names and nodule.tableNode.GetTable().GetNumberOfRows() == len(names)
    for mapNode in nodule.mapNodes.values():
        assertAlignedSubGrid(mapNode, ctNode)
    assert nodule.finding["model"]["name"] == "untrained-test"
    logic.worker.waitForFile(outcome.outDir / "report.html")  # written just after the result
    assert (outcome.outDir / "report.html").is_file()


def _engine_ready() -> bool:
    """The real pipeline and its shipped model bundle are in place."""
    if not all(importlib.util.find_spec(f"LungNoduleExplainLib.{m}") for m in ("analysis", "reports", "bundle")):
        return False
    from LungNoduleExplainLib.bundle import MANIFEST_NAME, default_bundle_path
    return (default_bundle_path() / MANIFEST_NAME).is_file()


@pytest.mark.skipif(not _engine_ready(), reason="the real analysis, reports or default model bundle is not there yet")
def test_real_engine_loads_a_real_finding_for_the_real_nodule(scene, lidc_nrrd):
    ctNode = addCt(scene, lidc_nrrd[0])
    logic = makeLogic(scene, [sys.executable, "-m", "LungNoduleExplainLib.worker"])
    logic.startAnalysis(ctNode, nodules(lidc_nrrd, 0.0), device="cpu")
    outcome = logic.waitForFinished(timeout_s=600)  # the real model on shared CPUs: only a guard against a hang
    assert outcome.succeeded, outcome.message
    nodule = outcome.nodules[0]
    assert nodule.finding["outputs"][0]["name"] in nodule.mapNodes
    assert all(n.GetAttribute(NODULE_KEY_ATTRIBUTE) == nodule.key for n in nodule.nodes())
    logic.worker.waitForFile(outcome.outDir / "report.html")  # written just after the result
    assert (outcome.outDir / "report.html").is_file()


# --- the module file itself, with stand-ins for what only the Slicer application provides ----------------------

@pytest.fixture()
def moduleFile(monkeypatch, scene):
    """Import LungNoduleExplain.py with stand-ins for qt, slicer.i18n, slicer.parameterNodeWrapper and
    slicer.ScriptedLoadableModule (the stand-in Logic base keeps Slicer's cooperative super().__init__())."""
    import importlib.util
    import types

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            super().__init__()
            self.moduleName = self.__class__.__name__.removesuffix("Logic")

    stubs = {
        "qt": types.ModuleType("qt"),
        "slicer.i18n": types.SimpleNamespace(tr=lambda text: text, translate=lambda context, text: text),
        "slicer.parameterNodeWrapper": types.SimpleNamespace(
            parameterNodeWrapper=lambda cls: cls, Choice=lambda choices: None, WithinRange=lambda lo, hi: None),
        "slicer.ScriptedLoadableModule": types.SimpleNamespace(
            ScriptedLoadableModule=type("ScriptedLoadableModule", (), {}),
            ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic,
            ScriptedLoadableModuleTest=type("ScriptedLoadableModuleTest", (), {}),
            ScriptedLoadableModuleWidget=type("ScriptedLoadableModuleWidget", (), {})),
    }
    for name, stub in stubs.items():
        monkeypatch.setitem(sys.modules, name, stub)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    path = REPO_ROOT / "LungNoduleExplain" / "LungNoduleExplain.py"
    spec = importlib.util.spec_from_file_location("LungNoduleExplain", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_module_logic_runs_the_analysis_once_constructed_on_slicers_scene(moduleFile, ctNode, lidc_crop):
    started = []

    def runnerFactory(onMessage, onFinished):
        from LungNoduleExplainSlicer.WorkerProcess import WorkerProcess
        started.append(1)
        return WorkerProcess(onMessage, onFinished)

    logic = moduleFile.LungNoduleExplainLogic(runnerFactory=runnerFactory, workerCommand=FAKE_WORKER)
    LOGICS.append(logic)
    assert started == [1], "the analysis logic was initialised more than once"
    assert logic.moduleName == "LungNoduleExplain" and logic.scene is slicer.mrmlScene
    assert run(logic, ctNode, nodules(lidc_crop, 0.0)).succeeded



def bareWidget(moduleFile, logic, inputVolume, points=None, mapID=None):
    """The module widget without Qt: just what updateButtons and onMapSelected use."""
    widget = object.__new__(moduleFile.LungNoduleExplainWidget)
    moduleFile.VTKObservationMixin.__init__(widget)
    widget.logic, widget._observedPoints = logic, None
    widget._parameterNode = types.SimpleNamespace(inputVolume=inputVolume, points=points, bundlePath=None)
    widget.ui = types.SimpleNamespace(analyzeButton=types.SimpleNamespace(text="", toolTip="", enabled=None),
                                      mapSelector=types.SimpleNamespace(itemData=lambda index: mapID),
                                      legendLabel=types.SimpleNamespace(text=""))
    return widget


def test_the_analyze_button_waits_for_a_placed_point(moduleFile, scene, ctNode):
    points = unplacedAndPreviewPoints(scene)
    points.RemoveNthControlPoint(0)  # left: one unplaced point and one being placed
    widget = bareWidget(moduleFile, makeLogic(scene), ctNode, points)
    widget.updateButtons()
    assert widget.ui.analyzeButton.enabled is False
    points.SetNthControlPointPosition(1, vtk.vtkVector3d(7.0, 7.0, 7.0))  # placed: the observer updates
    assert widget.ui.analyzeButton.enabled is True
    points.UnsetNthControlPointPosition(1)
    assert widget.ui.analyzeButton.enabled is False


def test_selecting_a_map_shows_it_over_the_ct_it_was_computed_on(moduleFile, scene, ctNode, lidc_crop):
    logic = makeLogic(scene)
    mapNode = run(logic, ctNode, nodules(lidc_crop, 0.0)).nodules[0].mapNodes["calcified"]
    selectedCt = loadVolume(scene, lidc_crop[0], "another CT")  # what the input selector shows now
    widget = bareWidget(moduleFile, logic, selectedCt, mapID=mapNode.GetID())

    def shown() -> set:
        composites = MapDisplay.sliceCompositeNodes(scene)
        return {(c.GetBackgroundVolumeID(), c.GetForegroundVolumeID()) for c in composites}

    widget.onMapSelected(0)
    assert shown() == {(ctNode.GetID(), mapNode.GetID())}
    scene.RemoveNode(ctNode)  # its CT gone, the map is shown over the selected input
    widget.onMapSelected(0)
    assert shown() == {(selectedCt.GetID(), mapNode.GetID())}


# --- first use: installing the engine's packages (the other install tests are in test_extension_files.py) ----

def test_install_deletes_each_constraints_file_once_pip_is_done(monkeypatch, tmp_path):
    from LungNoduleExplainSlicer.InstallLogic import InstallLogic
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the temporary folders go
    constraints = []

    def pipInstall(arguments: str) -> None:
        constraints.append(Path(arguments.split(" -c ")[1].strip('"')).read_text())  # there while pip runs

    InstallLogic(pipInstall=pipInstall, versionOf={"SimpleITK": "2.4.0"}.get, torchLogicFactory=lambda: None,
                 log=lambda message: None).install()
    assert len(constraints) == 2 and all("SimpleITK==2.4.0" in text.splitlines() for text in constraints)
    assert list(tmp_path.iterdir()) == []


def test_the_members_column_says_when_there_is_no_spread_or_no_field():
    assert ResultNodes.membersText({"member_probabilities": [], "member_spread": None}) == "single network"
    assert ResultNodes.membersText({"member_probabilities": [0.7, 0.9], "member_spread": {"min": 0.71, "max": 0.9},
                                    "members_disagree": False}) == "0.71-0.90"
    assert ResultNodes.membersText({}) == ""  # a finding.json written before the field existed
