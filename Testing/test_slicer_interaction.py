"""What the radiologist's clicks do, on the real MRML libraries (slicer-core) with the real LIDC CT and the fake
engine as worker: Analyze runs only new or moved points, a nodule's table and maps are found from a selection, a
table row gives its output's map, the colour legend follows the shown map, numbers print with two decimals, a
deleted point takes its results along."""

from __future__ import annotations

import re
import types

import pytest

import vtk
from test_slicer_logic import (FAKE_WORKER, cleanupLogics, ctNode, lidc_crop, lidc_nrrd, makeLogic,  # noqa: F401
                               moduleFile, nodules, placedPoints, run, scene)

from LungNoduleExplainSlicer import NoduleSelection, ResultNodes  # noqa: E402  (test_slicer_logic put it on the path)
from LungNoduleExplainSlicer.AnalysisLogic import AnalysisLogic, NoduleRequest  # noqa: E402
from LungNoduleExplainSlicer.ResultNodes import removeNodule  # noqa: E402


def moved(request: NoduleRequest, dx_mm: float) -> NoduleRequest:
    x, y, z = request.pointRas
    return NoduleRequest(request.key, request.name, (x + dx_mm, y, z))


def test_analyze_runs_only_new_or_moved_points(scene, ctNode, lidc_crop):  # noqa: F811
    logic = makeLogic(scene)
    first, second = requests = nodules(lidc_crop, 0.0, 20.0)
    assert logic.nodulesToAnalyze(ctNode, requests) == requests  # nothing analysed yet
    assert run(logic, ctNode, requests).succeeded
    assert logic.nodulesToAnalyze(ctNode, requests) == []
    assert logic.nodulesToAnalyze(ctNode, [moved(first, 0.3), second]) == []  # a nudge under 0.5 mm keeps it
    assert logic.nodulesToAnalyze(ctNode, [first, moved(second, 2.0)]) == [moved(second, 2.0)]
    third = NoduleRequest("points/new", "Nodule 3", first.pointRas)
    assert logic.nodulesToAnalyze(ctNode, [*requests, third]) == [third]

    # running only the moved one records its new place and leaves the other's result as it was
    tableOfFirst = NoduleSelection.resultTables(scene)[first.key]
    assert run(logic, ctNode, [moved(second, 2.0)]).succeeded
    assert NoduleSelection.resultTables(scene)[first.key] is tableOfFirst
    assert logic.nodulesToAnalyze(ctNode, [first, moved(second, 2.0)]) == []

    removeNodule(scene, first.key)  # the user deleted its results
    assert logic.nodulesToAnalyze(ctNode, [first, moved(second, 2.0)]) == [first]


def test_another_ct_bundle_or_classify_setting_runs_every_point_again(scene, ctNode, lidc_crop, tmp_path):  # noqa: F811
    logic = makeLogic(scene)
    requests = nodules(lidc_crop, 0.0)
    assert run(logic, ctNode, requests).succeeded
    other = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "another CT")
    assert logic.nodulesToAnalyze(other, requests) == requests
    assert logic.nodulesToAnalyze(ctNode, requests, bundlePath=tmp_path) == requests
    assert logic.nodulesToAnalyze(ctNode, requests, classifyAnyway=True) == requests
    assert logic.nodulesToAnalyze(ctNode, requests) == []


def test_a_selected_nodule_gives_its_own_table_and_maps_and_a_row_gives_its_map(scene, ctNode, lidc_crop):  # noqa: F811
    logic = makeLogic(scene)
    loaded = run(logic, ctNode, nodules(lidc_crop, 0.0, 20.0)).nodules
    views = NoduleSelection.noduleViews(scene)
    assert [v.key for v in views] == [n.key for n in loaded]
    for view, nodule in zip(views, loaded):
        assert view.tableNode is nodule.tableNode and view.ctNode is ctNode
        assert view.mapNodes == nodule.mapNodes and view.name == nodule.name
        outputs = [o["name"] for o in nodule.finding["outputs"]]
        assert list(view.mapNodes) == outputs  # in the table's order
        column = view.tableNode.GetTable().GetColumn(0)  # what a click on a row reads: its first cell
        for row, output in enumerate(outputs):
            assert view.mapOfOutput(column.GetValue(row)) is nodule.mapNodes[output]
        assert view.mapOfOutput("output") is None and view.mapOfOutput(None) is None  # the header, nothing
    assert NoduleSelection.noduleView(scene, loaded[1].key).tableNode is loaded[1].tableNode
    assert NoduleSelection.noduleView(scene, "no/such") is None


def test_a_point_without_a_nodule_has_a_table_but_no_map_to_select(scene, ctNode, lidc_crop, monkeypatch):  # noqa: F811
    monkeypatch.setenv("FAKE_NO_NODULE", "2")  # the fake engine finds no nodule at the 2nd point
    logic = makeLogic(scene)
    requests = nodules(lidc_crop, 0.0, 2.0)
    found, missing = run(logic, ctNode, requests).nodules
    view = NoduleSelection.noduleView(scene, missing.key)
    assert view.tableNode is missing.tableNode and view.mapNodes == {}
    assert view.mapOfOutput(view.tableNode.GetTable().GetColumn(0).GetValue(0)) is None  # "no nodule found"
    assert logic.nodulesToAnalyze(ctNode, requests) == []  # answered: not run again until it moves


def test_probabilities_and_thresholds_read_with_two_decimals(scene, ctNode, lidc_crop):  # noqa: F811
    nodule = run(makeLogic(scene), ctNode, nodules(lidc_crop, 0.0)).nodules[0]
    table = nodule.tableNode.GetTable()
    for column in ("probability", "threshold"):
        values = [table.GetColumnByName(column).GetValue(r) for r in range(table.GetNumberOfRows())]
        assert values and all(re.fullmatch(r"\d\.\d\d", v) for v in values), values
    expected = [f"{o['probability']:.2f}" for o in nodule.finding["outputs"]]
    assert [table.GetColumnByName("probability").GetValue(r) for r in range(len(expected))] == expected


def test_the_colour_legend_belongs_to_the_shown_map_and_a_line_says_what_the_colour_means(
        scene, ctNode, lidc_crop):  # noqa: F811
    logic = makeLogic(scene)
    nodule = run(logic, ctNode, nodules(lidc_crop, 0.0)).nodules[0]
    first, second = list(nodule.mapNodes.values())[:2]

    def legends() -> dict:
        found = {}
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorLegendDisplayNode")):
            legend = scene.GetNthNodeByClass(i, "vtkMRMLColorLegendDisplayNode")
            found[legend.GetDisplayableNode().GetID()] = legend
        return found

    logic.showMap(ctNode, first)  # what loading does for the first output, and what a selection does
    logic.showMap(ctNode, second)
    shown = legends()
    assert shown[second.GetID()].GetVisibility() and not shown[first.GetID()].GetVisibility()
    legend = shown[second.GetID()]
    assert legend.GetTitleText() == second.GetAttribute("LungNoduleExplain.Output")
    assert legend.GetLabelFormat() == "%.2f"
    assert legend.GetPrimaryDisplayNode() is second.GetDisplayNode()
    assert legend.GetPrimaryDisplayNode().GetColorNode().GetName() == "LungNoduleExplain Heat"  # what it draws
    logic.showMap(ctNode, second)
    assert len(legends()) == 2  # showing again adds no second legend

    line = NoduleSelection.legendText(second, 0.25)
    assert "values below 0.25 are not coloured" in line
    assert second.GetAttribute("LungNoduleExplain.Output") in line
    second.SetAttribute("LungNoduleExplain.MapLegend", "Map: evidence; clipped at 1. Values below 0.25 are not "
                                                       "coloured; the map is 0 outside the CT box the network saw.")
    line = NoduleSelection.legendText(second, 0.1)  # the slider moved: only its value is stated
    assert "values below 0.10 are not coloured" in line and "0.25" not in line and "The map is 0 outside" in line
    second.SetAttribute("LungNoduleExplain.DescriptorShare", "0.78")
    assert "78% of this output comes from the nodule descriptors" in NoduleSelection.legendText(second, 0.4)


def test_removing_a_nodule_removes_its_legends_too(scene, ctNode, lidc_crop):  # noqa: F811
    logic = makeLogic(scene)
    nodule = run(logic, ctNode, nodules(lidc_crop, 0.0)).nodules[0]
    logic.showMap(ctNode, next(iter(nodule.mapNodes.values())))
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorLegendDisplayNode") == 1
    logic.removeNodule(nodule.key)
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorLegendDisplayNode") == 0


def test_the_analyze_button_names_the_points_it_will_run(moduleFile, scene, ctNode, lidc_crop):  # noqa: F811
    from test_slicer_logic import bareWidget
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Nodule")
    centroid = lidc_crop[1]
    points.AddControlPoint(vtk.vtkVector3d(*centroid), "Nodule-1")
    logic = makeLogic(scene)
    widget = bareWidget(moduleFile, logic, ctNode, points)
    widget.updateButtons()
    assert widget.ui.analyzeButton.enabled and widget.ui.analyzeButton.toolTip.endswith("Nodule-1.")
    assert run(logic, ctNode, logic.nodulesFromMarkups(points)).succeeded
    points.AddControlPoint(vtk.vtkVector3d(centroid[0] + 20, centroid[1], centroid[2]), "Nodule-2")
    widget.updateButtons()
    assert widget.ui.analyzeButton.toolTip.endswith(": Nodule-2.")  # only the new one
    assert [n.name for n in widget._pointsToAnalyze()] == ["Nodule-2"]
    widget.environmentProblem = "needs Slicer 5.10"
    widget.updateButtons()
    assert widget.ui.analyzeButton.enabled is False  # too old a Slicer: nothing runs


@pytest.mark.parametrize("version, installed, says", [
    ((5, 8), {}, "needs Slicer 5.10 or later; this is Slicer 5.8"),
    ((5, 10), {"nnunetv2": None}, "required Python packages: missing: nnunetv2"),
    ((5, 10), {"torch": "2.9.1"}, "torch installed 2.9.1"),
    ((5, 10), {}, None),
])
def test_the_self_test_is_skipped_never_passed_without_its_prerequisites(moduleFile, monkeypatch, version,
                                                                         installed, says):
    import io
    import types
    import unittest

    from LungNoduleExplainSlicer.InstallLogic import InstallLogic
    complete = {"torch": "2.8.0", "nnunetv2": "2.8.1", "numpy": "2.1.0", "scikit-learn": "1.5.0",
                "matplotlib": "3.9.0", "tqdm": "4.66.0", "safetensors": "0.4.5", "packaging": "24.0",
                "highdicom": "0.28.2", "pydicom": "3.0.1"}
    versions = {**complete, **installed}
    monkeypatch.setattr(moduleFile.slicer, "app", types.SimpleNamespace(majorVersion=version[0],
                                                                        minorVersion=version[1]), raising=False)
    monkeypatch.setattr(moduleFile, "InstallLogic", lambda: InstallLogic(versionOf=versions.get))
    selfTest = moduleFile.LungNoduleExplainTest()

    class Ran(Exception):
        pass

    def setUp():
        raise Ran("the self-test started")

    selfTest.setUp = setUp

    class SlicerRunsIt(unittest.TestCase):  # as slicer.testing.runUnitTest does, through unittest
        def runTest(self):
            selfTest.runTest()

    result = unittest.TextTestRunner(stream=io.StringIO()).run(SlicerRunsIt())
    assert result.testsRun == 1
    if says is None:  # everything there: the real test starts (here: the stand-in setUp raises)
        assert not result.skipped and len(result.errors) == 1 and "Ran" in result.errors[0][1]
    else:
        assert not result.wasSuccessful() or result.skipped  # never a plain pass
        assert len(result.skipped) == 1 and says in result.skipped[0][1]


# --- a deleted point takes its results along --------------------------------------------------------------------

def resultNodeIds(scene, key: str) -> list[str]:
    return sorted(node.GetID() for node in ResultNodes.nodesOfNodule(scene, key))


def test_deleting_a_point_removes_its_results_and_only_its_results(scene, ctNode, lidc_crop):  # noqa: F811
    logic = makeLogic(scene)
    points = placedPoints(scene, lidc_crop, 0.0, 15.0, 30.0)
    first, second, third = logic.nodulesFromMarkups(points)
    assert run(logic, ctNode, [first, second]).succeeded  # the third point is placed but not analysed
    kept = resultNodeIds(scene, second.key)
    assert resultNodeIds(scene, first.key) and kept
    assert logic.removeResultsWithoutPoint(points) == []  # every analysed point is still there

    points.RemoveNthControlPoint(0)  # the user deletes Nodule-1
    assert NoduleSelection.keysWithoutPoint(scene, points) == [first.key]
    assert logic.removeResultsWithoutPoint(points) == [first.key]
    assert resultNodeIds(scene, first.key) == [] and ResultNodes.foldersOfNodule(scene, first.key) == []
    assert resultNodeIds(scene, second.key) == kept  # the other nodule's table, maps and segmentation stay
    assert [v.key for v in NoduleSelection.noduleViews(scene)] == [second.key]
    assert logic.nodulesToAnalyze(ctNode, logic.nodulesFromMarkups(points)) == [third]

    other = placedPoints(scene, lidc_crop, -20.0)  # another markups node's results are not this node's to judge
    assert run(logic, ctNode, logic.nodulesFromMarkups(other)).succeeded
    points.RemoveAllControlPoints()
    assert logic.removeResultsWithoutPoint(points) == [second.key]
    assert [v.name for v in NoduleSelection.noduleViews(scene)] == ["Nodule-1"]  # the other node's first point
    assert NoduleSelection.noduleViews(scene)[0].key.startswith(other.GetID() + "/")

    scene.RemoveNode(other)  # the whole points node deleted: its points' results go with it
    assert other.GetNumberOfControlPoints() == 1 and logic.removeResultsWithoutPoint(other) != []
    assert NoduleSelection.noduleViews(scene) == [] and NoduleSelection.resultTables(scene) == {}


def test_result_files_stay_while_their_nodule_is_shown_and_go_with_it(scene, ctNode, lidc_crop):  # noqa: F811
    logic = makeLogic(scene)
    points = placedPoints(scene, lidc_crop, 0.0, 20.0)
    first, second = logic.nodulesFromMarkups(points)
    assert run(logic, ctNode, [first]).succeeded
    firstRun = logic.lastResultDir.parent
    assert run(logic, ctNode, [second]).succeeded
    assert firstRun.is_dir()  # Nodule-1 is still shown: Export to DICOM reads its folder again
    table = NoduleSelection.resultTables(scene)[first.key]
    assert NoduleSelection.resultFolder(table).is_relative_to(firstRun)
    points.RemoveNthControlPoint(0)
    logic.removeResultsWithoutPoint(points)
    assert not firstRun.exists() and logic.lastResultDir.is_dir()  # the last run stays for the HTML report
    logic.clearPatientData()
    assert not list(logic.worker.sessionFolder().glob("run-*"))


class FakeComboBox:
    """The part of QComboBox the widget uses: items with data, an index out of range reads -1 (as in Qt); setting
    currentIndex emits nothing here (the widget calls its handlers itself where it blocks the signals)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, object]] = []
        self._index = -1

    @property
    def currentIndex(self) -> int:
        return self._index

    @currentIndex.setter
    def currentIndex(self, index: int) -> None:
        self._index = index if 0 <= index < len(self.items) else -1

    def blockSignals(self, block: bool) -> bool:
        return False

    def clear(self) -> None:
        self.items, self._index = [], -1

    def addItem(self, text: str, data=None) -> None:
        self.items.append((text, data))
        self._index = max(self._index, 0)

    def itemData(self, index: int):
        return self.items[index][1] if 0 <= index < len(self.items) else None

    def findData(self, data) -> int:
        return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)

    def findText(self, text: str) -> int:
        return next((i for i, (t, _) in enumerate(self.items) if t == text), -1)

    @property
    def currentText(self) -> str:
        return self.items[self.currentIndex][0] if 0 <= self.currentIndex < len(self.items) else ""


def resultsWidget(moduleFile, logic, ctNode, points):
    """bareWidget with the Results section: the nodule and map lists, the table view, the export buttons."""
    from test_slicer_logic import bareWidget
    widget = bareWidget(moduleFile, logic, ctNode, points)
    button = lambda: types.SimpleNamespace(enabled=None, toolTip="")  # noqa: E731
    widget.ui.noduleSelector, widget.ui.mapSelector = FakeComboBox(), FakeComboBox()
    widget.ui.resultsTableView = types.SimpleNamespace(setMRMLTableNode=lambda node: None)
    widget.ui.exportReportButton, widget.ui.exportDicomButton = button(), button()
    widget.updateButtons()  # observes the points node, as the parameter node's observer does in Slicer
    return widget


def test_the_widget_drops_a_deleted_points_results_from_the_scene_and_the_nodule_list(moduleFile, scene, ctNode,
                                                                                      lidc_crop):  # noqa: F811
    logic = makeLogic(scene)
    points = placedPoints(scene, lidc_crop, 0.0, 20.0)
    first, second = logic.nodulesFromMarkups(points)
    widget = resultsWidget(moduleFile, logic, ctNode, points)
    assert run(logic, ctNode, [first, second]).succeeded
    widget._selectedKey = first.key
    widget.updateNoduleSelector()
    assert [data for _, data in widget.ui.noduleSelector.items] == [first.key, second.key]
    assert widget.ui.exportDicomButton.enabled and "Nodule-1, Nodule-2" in widget.ui.exportDicomButton.toolTip
    assert "not loaded from Slicer's DICOM database" in widget.ui.exportDicomButton.toolTip  # a NRRD file here

    points.RemoveNthControlPoint(0)  # what the Markups module or the view's context menu does: the observer acts
    assert resultNodeIds(scene, first.key) == [] and resultNodeIds(scene, second.key)
    assert widget.ui.noduleSelector.items == [("Nodule-2", second.key)] and widget._selectedKey == second.key
    assert widget.ui.mapSelector.items and all(scene.GetNodeByID(d) for _, d in widget.ui.mapSelector.items)

    points.RemoveAllControlPoints()
    assert NoduleSelection.noduleViews(scene) == [] and widget.ui.noduleSelector.items == []
    assert widget.ui.exportDicomButton.enabled is False and widget.ui.legendLabel.text == ""

    assert run(logic, ctNode, logic.nodulesFromMarkups(placedPoints(scene, lidc_crop, 5.0))).succeeded
    widget.updateNoduleSelector()
    others = [n for n in NoduleSelection.noduleViews(scene)]
    assert len(others) == 1 and widget.ui.noduleSelector.items
    removed = scene.GetNodeByID(others[0].key.split("/")[0])
    scene.RemoveNode(removed)  # the whole points node deleted (Data module): what the scene observer hands on
    widget.onNodeRemoved(scene, scene.NodeRemovedEvent, removed)
    assert NoduleSelection.noduleViews(scene) == [] and widget.ui.noduleSelector.items == []


class FakeIndex:
    """The part of a QModelIndex of the results table the widget reads: its row, and column 0's text (the output)."""

    def __init__(self, output: str | None):
        self.output = output

    def isValid(self) -> bool:
        return self.output is not None

    def row(self) -> int:
        return 0

    def sibling(self, row: int, column: int) -> "FakeIndex":
        return self

    def data(self) -> str | None:
        return self.output


def test_a_table_row_made_current_by_mouse_or_keys_shows_its_outputs_map(moduleFile, scene, ctNode,
                                                                          lidc_crop):  # noqa: F811
    logic = makeLogic(scene)
    points = placedPoints(scene, lidc_crop, 0.0)
    widget = resultsWidget(moduleFile, logic, ctNode, points)
    assert run(logic, ctNode, logic.nodulesFromMarkups(points)).succeeded
    widget.updateNoduleSelector()
    view = NoduleSelection.noduleView(scene, widget._selectedKey)
    for output in ("spiculated", "calcified"):
        widget.onTableCurrentRowChanged(FakeIndex(output), FakeIndex(None))  # an arrow key moved the current row
        assert widget.ui.mapSelector.itemData(widget.ui.mapSelector.currentIndex) == view.mapOfOutput(output).GetID()
    shown = widget.ui.mapSelector.currentIndex
    widget.onTableCurrentRowChanged(FakeIndex(None), FakeIndex("calcified"))  # no current row: nothing changes
    assert widget.ui.mapSelector.currentIndex == shown
