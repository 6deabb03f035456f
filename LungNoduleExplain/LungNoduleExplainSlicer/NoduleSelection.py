"""What the radiologist's clicks mean, decided without Qt: which points Analyze must run, which nodule and map a
selection shows, and the colour legend with a line saying what the colour means.

Which points were analysed, where and how, is kept on each nodule's table node (attributes), so it survives a
module reload and a saved and reloaded scene, and a nodule whose results were deleted is analysed again:
- ANALYSED_POINT_ATTRIBUTE: the point in world RAS (mm) as it was when analysed;
- ANALYSED_WITH_ATTRIBUTE: the CT node, model bundle and classify-anyway setting it was analysed with.
A point is run again when it is new, moved by more than MOVE_TOLERANCE_MM, its results are gone, or the CT, bundle
or setting changed. A deleted point takes its results with it (keysWithoutPoint); Export to DICOM sends the
analysed nodules of the selected nodule's CT (nodulesToExport).

The widget only connects Qt signals to these functions (LungNoduleExplain.py).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import slicer

from .ResultNodes import (DESCRIPTOR_SHARE_ATTRIBUTE, MAP_LEGEND_ATTRIBUTE, NODULE_KEY_ATTRIBUTE, OUTPUT_ATTRIBUTE,
                          RESULT_FOLDER_ATTRIBUTE, ROLE_ATTRIBUTE, SOURCE_VOLUME_ATTRIBUTE)

ANALYSED_POINT_ATTRIBUTE = "LungNoduleExplain.AnalysedPointRas"
ANALYSED_WITH_ATTRIBUTE = "LungNoduleExplain.AnalysedWith"
MOVE_TOLERANCE_MM = 0.5  # a point dragged less than this keeps its result (well under a CT voxel)
LEGEND_LABEL_FORMAT = "%.2f"
LEGEND_NAME_SUFFIX = " colour legend"


def pointKey(markupsNode, index: int) -> str:
    """A control point's stable identity: markups node ID + control point ID (kept when points are reordered)."""
    return f"{markupsNode.GetID()}/{markupsNode.GetNthControlPointID(index)}"


def analysisSettings(ctNode, bundlePath: str | Path | None, classifyAnyway: bool) -> str:
    """What else decides a result besides the point: the CT node, the bundle, classify-anyway (JSON text)."""
    return json.dumps({"ct": ctNode.GetID() if ctNode is not None else "",
                       "bundle": str(Path(bundlePath).resolve()) if bundlePath else "",
                       "classifyAnyway": bool(classifyAnyway)}, sort_keys=True)


def markAnalysed(tableNode, pointRas: Sequence[float], settings: str) -> None:
    tableNode.SetAttribute(ANALYSED_POINT_ATTRIBUTE, ",".join(f"{float(v):.4f}" for v in pointRas))
    tableNode.SetAttribute(ANALYSED_WITH_ATTRIBUTE, settings)


def _analysedPoint(tableNode) -> tuple[float, ...] | None:
    text = tableNode.GetAttribute(ANALYSED_POINT_ATTRIBUTE)
    try:
        point = tuple(float(v) for v in text.split(","))
    except (AttributeError, ValueError):
        return None
    return point if len(point) == 3 else None


def _nodes(scene, className: str) -> list:
    return [scene.GetNthNodeByClass(i, className) for i in range(scene.GetNumberOfNodesByClass(className))]


def resultTables(scene) -> dict[str, object]:
    """nodule key -> its results table, for every analysed nodule in the scene (in the scene's order)."""
    return {t.GetAttribute(NODULE_KEY_ATTRIBUTE): t for t in _nodes(scene, "vtkMRMLTableNode")
            if t.GetAttribute(ROLE_ATTRIBUTE) == "table" and t.GetAttribute(NODULE_KEY_ATTRIBUTE)}


def keysWithoutPoint(scene, markupsNode) -> list[str]:
    """The keys of the nodules analysed from `markupsNode`'s control points whose point has been deleted since, or
    all of them once the node itself left the scene: their results belong to no point any more. Results of other
    markups nodes are not this node's to judge."""
    prefix = f"{markupsNode.GetID()}/"
    points = {pointKey(markupsNode, index) for index in range(markupsNode.GetNumberOfControlPoints())} \
        if scene.IsNodePresent(markupsNode) else set()
    nodes = (scene.GetNthNode(index) for index in range(scene.GetNumberOfNodes()))
    keys = dict.fromkeys(node.GetAttribute(NODULE_KEY_ATTRIBUTE) for node in nodes)  # in the scene's order
    return [key for key in keys if key and key.startswith(prefix) and key not in points]


def pointsToAnalyze(scene, nodules: Sequence, settings: str, toleranceMm: float = MOVE_TOLERANCE_MM) -> list:
    """The NoduleRequests among `nodules` that have no current result: new, moved, results deleted, or analysed
    with another CT, bundle or classify-anyway setting. Analyze runs these only."""
    tables = resultTables(scene)
    todo = []
    for nodule in nodules:
        table = tables.get(nodule.key)
        point = _analysedPoint(table) if table is not None else None
        if (point is None or table.GetAttribute(ANALYSED_WITH_ATTRIBUTE) != settings
                or math.dist(point, nodule.pointRas) > toleranceMm):
            todo.append(nodule)
    return todo


@dataclass
class NoduleView:
    """One analysed nodule as the Results section shows it: its table and its maps by output (table order)."""

    key: str
    name: str
    tableNode: object
    mapNodes: dict = field(default_factory=dict)
    ctNode: object = None

    def mapOfOutput(self, output: str | None):
        """The map of a table row's output (the text in its 'output' cell, column 0 as the table view shows it);
        None for a row that has no map (a 'no nodule found' row, the header)."""
        return self.mapNodes.get(output) if output else None


def noduleViews(scene) -> list[NoduleView]:
    maps: dict[str, dict] = {}
    for node in _nodes(scene, "vtkMRMLScalarVolumeNode"):
        if node.GetAttribute(ROLE_ATTRIBUTE) == "map" and node.GetAttribute(NODULE_KEY_ATTRIBUTE):
            maps.setdefault(node.GetAttribute(NODULE_KEY_ATTRIBUTE), {})[node.GetAttribute(OUTPUT_ATTRIBUTE)] = node
    views = []
    for key, table in resultTables(scene).items():
        found = maps.get(key, {})
        column = table.GetTable().GetColumnByName("output")
        order = [column.GetValue(r) for r in range(column.GetNumberOfValues())] if column is not None else []
        ordered = {name: found[name] for name in order if name in found}
        ordered.update({name: node for name, node in found.items() if name not in ordered})
        anyMap = next(iter(ordered.values()), None)
        ctID = anyMap.GetAttribute(SOURCE_VOLUME_ATTRIBUTE) if anyMap is not None else _analysedCtID(table)
        name = table.GetName().split(" results")[0]
        views.append(NoduleView(key, name, table, ordered, scene.GetNodeByID(ctID) if ctID else None))
    return views


def _analysedCtID(tableNode) -> str | None:
    """The CT a nodule without maps (no nodule found) was analysed on, from its analysisSettings."""
    try:
        return json.loads(tableNode.GetAttribute(ANALYSED_WITH_ATTRIBUTE) or "{}").get("ct") or None
    except (json.JSONDecodeError, AttributeError):
        return None


def noduleView(scene, key: str) -> NoduleView | None:
    return next((v for v in noduleViews(scene) if v.key == key), None)


def nodulesToExport(scene, selectedKey: str | None) -> list[NoduleView]:
    """What Export to DICOM sends when `selectedKey`'s nodule is shown: every analysed nodule of the same CT that
    has a nodule (points without one have nothing to export), in the Nodule list's order; one report per study."""
    views = noduleViews(scene)
    selected = next((v for v in views if v.key == selectedKey), None)
    if selected is None or selected.ctNode is None:
        return []
    return [v for v in views if v.mapNodes and v.ctNode is selected.ctNode]


def resultFolder(tableNode) -> Path | None:
    """The folder a nodule's results were read from, while it is still there (the session's temporary folder)."""
    folder = tableNode.GetAttribute(RESULT_FOLDER_ATTRIBUTE)
    return Path(folder) if folder and Path(folder).is_dir() else None


def legendText(mapNode, threshold: float) -> str:
    """The line under the map selector: which output, what brightness means, what is hidden, what no map shows."""
    output = mapNode.GetAttribute(OUTPUT_ATTRIBUTE) or mapNode.GetName()
    meaning = mapNode.GetAttribute(MAP_LEGEND_ATTRIBUTE) or (
        "Map: where the network found evidence for this output; brighter is stronger (0-1).")
    # the engine's legend states the default cut-off; the slider's value, said above, is the one that applies
    meaning = re.sub(r"Values below [\d.]+ are not coloured; the map", "The map", meaning)
    line = (f"Colour = evidence for '{output}': dark red weak, yellow-white strong (0-1, legend in the views); "
            f"values below {threshold:.2f} are not coloured. {meaning}")
    share = mapNode.GetAttribute(DESCRIPTOR_SHARE_ATTRIBUTE)
    if share:
        line += f" {float(share):.0%} of this output comes from the nodule descriptors, which no map shows."
    return line


def showColorLegend(scene, mapNode) -> "slicer.vtkMRMLColorLegendDisplayNode":
    """Slicer's colour legend (scalar bar in the slice views, labels with two decimals) for `mapNode`, and none for
    any other map, so the legend always belongs to the map that is shown."""
    for node in _nodes(scene, "vtkMRMLColorLegendDisplayNode"):
        if node.GetName().endswith(LEGEND_NAME_SUFFIX) and node.GetDisplayableNode() is not mapNode:
            node.SetVisibility(False)
    legend = next((mapNode.GetNthDisplayNode(i) for i in range(mapNode.GetNumberOfDisplayNodes())
                   if mapNode.GetNthDisplayNode(i).IsA("vtkMRMLColorLegendDisplayNode")), None)
    if legend is None:
        legend = slicer.vtkMRMLColorLegendDisplayNode()
        legend.SetName(mapNode.GetName() + LEGEND_NAME_SUFFIX)
        scene.AddNode(legend)
        legend.SetAndObservePrimaryDisplayNode(mapNode.GetDisplayNode())
        mapNode.AddAndObserveDisplayNodeID(legend.GetID())
    legend.SetTitleText(mapNode.GetAttribute(OUTPUT_ATTRIBUTE) or mapNode.GetName())
    legend.SetLabelFormat(LEGEND_LABEL_FORMAT)
    legend.SetVisibility(True)
    return legend
