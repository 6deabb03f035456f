"""One nodule's result folder (the layout of the engine's `write_findings`) -> MRML nodes, and back out again.

Folder: finding.json, segmentation.nrrd, segmentation_probability.nrrd, maps/<output>.nrrd (all on the CT grid).
Nodes: a subject-hierarchy folder under the CT's study holding a segmentation, a table (output, finding,
probability, threshold, result) and one scalar volume per output. Every node and the folder carry the nodule's
key as an attribute, so re-running a nodule replaces exactly its own nodes.

Loading is two-step so that a bad folder never leaves half a result in the scene: `readNodule` reads and checks
everything into nodes that are not yet in the scene; `addNodule` only adds them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import vtk

from .MapDisplay import DEFAULT_THRESHOLD, configureMapDisplay

NODULE_KEY_ATTRIBUTE = "LungNoduleExplain.NoduleKey"
ROLE_ATTRIBUTE = "LungNoduleExplain.Role"
OUTPUT_ATTRIBUTE = "LungNoduleExplain.Output"
TABLE_COLUMNS = ("output", "finding", "probability", "threshold", "result")
GEOMETRY_TOLERANCE_MM = 1e-3


class ResultError(RuntimeError):
    """A worker result folder is incomplete or does not lie on the CT's grid."""


@dataclass
class NoduleNodes:
    key: str
    name: str
    finding: dict
    segmentationNode: "slicer.vtkMRMLSegmentationNode"
    tableNode: "slicer.vtkMRMLTableNode"
    mapNodes: dict = field(default_factory=dict)  # output name -> vtkMRMLScalarVolumeNode
    folderItemID: int = 0
    labelmap: object = None  # read by readNodule, imported into the segmentation (then dropped) by addNodule

    def nodes(self) -> list:
        return [self.segmentationNode, self.tableNode, *self.mapNodes.values()]


def readFindingJson(folder: Path) -> dict:
    path = folder / "finding.json"
    if not path.is_file():
        raise ResultError(f"result folder {folder} has no finding.json")
    try:
        finding = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ResultError(f"{path} is not valid JSON: {exc}") from exc
    outputs = finding.get("outputs") if isinstance(finding, dict) else None
    if not outputs or not all(isinstance(o, dict) and {"name", "probability", "threshold"} <= o.keys()
                               for o in outputs):
        raise ResultError(f"{path}: expected 'outputs', a list of {{name, probability, threshold, ...}}")
    return finding


def readVolume(path: Path, node) -> None:
    """Read a volume file into `node` without adding anything to a scene; ResultError when it cannot."""
    if not path.is_file():
        raise ResultError(f"missing result file {path}")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetSingleFile(True)
    if not storage.ReadData(node):
        raise ResultError(f"cannot read volume {path}")


def _ijkToRas(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def checkSameGrid(node, ctNode, path: Path) -> None:
    """The engine promises every image on the CT's own grid; anything else would be drawn in the wrong place."""
    dims, ctDims = node.GetImageData().GetDimensions(), ctNode.GetImageData().GetDimensions()
    if dims != ctDims:
        raise ResultError(f"{path} has size {dims}, the CT {ctNode.GetName()!r} has {ctDims}")
    if not np.allclose(_ijkToRas(node), _ijkToRas(ctNode), atol=GEOMETRY_TOLERANCE_MM):
        raise ResultError(f"{path} is not on the grid of the CT {ctNode.GetName()!r} "
                          "(origin, spacing or direction differ)")


def _makeTable(finding: dict) -> "slicer.vtkMRMLTableNode":
    table = slicer.vtkMRMLTableNode()
    columns = {"output": vtk.vtkStringArray(), "finding": vtk.vtkStringArray(), "probability": vtk.vtkDoubleArray(),
               "threshold": vtk.vtkDoubleArray(), "result": vtk.vtkStringArray()}
    for name, array in columns.items():
        array.SetName(name)
    for output in finding["outputs"]:
        probability, threshold = float(output["probability"]), float(output["threshold"])
        columns["output"].InsertNextValue(output["name"])
        columns["finding"].InsertNextValue(output.get("kind", ""))
        columns["probability"].InsertNextValue(probability)
        columns["threshold"].InsertNextValue(threshold)
        positive = output.get("positive", probability >= threshold)
        columns["result"].InsertNextValue("positive" if positive else "negative")
    for name in TABLE_COLUMNS:
        table.GetTable().AddColumn(columns[name])
    table.SetLocked(True)
    return table


def readNodule(folder: Path, ctNode, key: str, name: str) -> NoduleNodes:
    """Read one result folder into nodes that are NOT yet in any scene; raises ResultError on any problem."""
    folder = Path(folder)
    finding = readFindingJson(folder)
    files = finding.get("files") or {}  # relative paths, when the writer lists them; else the default layout

    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    segmentationPath = folder / files.get("segmentation", "segmentation.nrrd")
    readVolume(segmentationPath, labelmap)
    checkSameGrid(labelmap, ctNode, segmentationPath)

    maps = {}
    for output in finding["outputs"]:
        mapNode = slicer.vtkMRMLScalarVolumeNode()
        path = folder / (files.get("maps") or {}).get(output["name"], f"maps/{output['name']}.nrrd")
        readVolume(path, mapNode)
        checkSameGrid(mapNode, ctNode, path)
        mapNode.SetName(f"{name} {output['name']} map")
        mapNode.SetAttribute(OUTPUT_ATTRIBUTE, output["name"])
        maps[output["name"]] = mapNode

    segmentation = slicer.vtkMRMLSegmentationNode()
    segmentation.SetName(f"{name} segmentation")
    table = _makeTable(finding)
    table.SetName(f"{name} results")
    return NoduleNodes(key=key, name=name, finding=finding, segmentationNode=segmentation, tableNode=table,
                       mapNodes=maps, labelmap=labelmap)


def addNodule(scene, nodule: NoduleNodes, ctNode, colorNode, threshold: float = DEFAULT_THRESHOLD) -> NoduleNodes:
    """Add a nodule read by readNodule to the scene, under a folder beside the CT (in its study)."""
    transformID = ctNode.GetTransformNodeID()
    for node in nodule.nodes():
        node.SetAttribute(NODULE_KEY_ATTRIBUTE, nodule.key)
        scene.AddNode(node)
        if node.IsA("vtkMRMLTransformableNode"):
            node.SetAndObserveTransformNodeID(transformID)
    nodule.segmentationNode.SetAttribute(ROLE_ATTRIBUTE, "segmentation")
    nodule.tableNode.SetAttribute(ROLE_ATTRIBUTE, "table")

    segmentation = nodule.segmentationNode
    segmentation.CreateDefaultDisplayNodes()
    segmentation.GetDisplayNode().SetName(f"{segmentation.GetName()} display")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(ctNode)
    labelmap, nodule.labelmap = nodule.labelmap, None
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation):
        raise ResultError(f"cannot import the segmentation of {nodule.name}")
    if segmentation.GetSegmentation().GetNumberOfSegments() == 1:
        segment = segmentation.GetSegmentation().GetNthSegment(0)
        segment.SetName("nodule")
        segment.SetColor(0.2, 0.9, 0.3)

    for mapNode in nodule.mapNodes.values():
        mapNode.SetAttribute(ROLE_ATTRIBUTE, "map")
        configureMapDisplay(mapNode, colorNode, threshold)

    nodule.folderItemID = _placeInHierarchy(scene, nodule, ctNode)
    return nodule


def _placeInHierarchy(scene, nodule: NoduleNodes, ctNode) -> int:
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    ctItem = sh.GetItemByDataNode(ctNode)
    parent = sh.GetItemParent(ctItem) if ctItem else sh.GetSceneItemID()
    folder = sh.CreateFolderItem(parent, nodule.name)
    sh.SetItemAttribute(folder, NODULE_KEY_ATTRIBUTE, nodule.key)
    for node in nodule.nodes():
        item = sh.GetItemByDataNode(node)
        if item:
            sh.SetItemParent(item, folder)
        else:
            sh.CreateItem(folder, node)
    return folder


def nodesOfNodule(scene, key: str) -> list:
    nodes = []
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if node.GetAttribute(NODULE_KEY_ATTRIBUTE) == key:
            nodes.append(node)
    return nodes


def removeNodule(scene, key: str) -> int:
    """Remove every node and folder carrying `key`, with their display and storage nodes; returns how many
    data nodes went. Hierarchy items first (without the subject-hierarchy logic nothing else would drop them),
    then the nodes."""
    nodes = nodesOfNodule(scene, key)
    helpers = []
    for node in nodes:
        if node.IsA("vtkMRMLDisplayableNode"):
            helpers += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        if node.IsA("vtkMRMLStorableNode"):
            helpers += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    items = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), items, True)
    folders = [items.GetId(i) for i in range(items.GetNumberOfIds())
               if sh.GetItemAttribute(items.GetId(i), NODULE_KEY_ATTRIBUTE) == key]
    for node in nodes:
        item = sh.GetItemByDataNode(node)
        if item:
            sh.RemoveItem(item, False, False)
    for folder in folders:
        sh.RemoveItem(folder, False, True)
    for node in [*nodes, *helpers]:
        if node is not None and scene.IsNodePresent(node):
            scene.RemoveNode(node)
    return len(nodes)
