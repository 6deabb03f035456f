"""One nodule's result folder (the layout of the engine's `write_findings`) -> MRML nodes, and back out again.

Folder: finding.json, segmentation.nrrd, segmentation_probability.nrrd, maps/<output>.nrrd (on the CT's grid over
the nodule's region only: a few MB per nodule instead of a whole-CT volume per output).
Nodes: a subject-hierarchy folder under the CT's study holding a segmentation, a table (output, finding,
probability, threshold, result) and one scalar volume per output. Every node and the folder carry the nodule's
key as an attribute, so re-running a nodule replaces exactly its own nodes.

Loading is two-step so that a bad folder never leaves half a result in the scene: `readNodule` reads and checks
everything (the segmentation import included) into nodes that are not yet in the scene; `addNodule` only adds them
and sets their display and transform. A caller that must undo an add uses `removeAddedNodule`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import vtk

from LungNoduleExplainLib.meaning import tone

from .MapDisplay import DEFAULT_THRESHOLD, configureMapDisplay

NODULE_KEY_ATTRIBUTE = "LungNoduleExplain.NoduleKey"
ROLE_ATTRIBUTE = "LungNoduleExplain.Role"
OUTPUT_ATTRIBUTE = "LungNoduleExplain.Output"
SOURCE_VOLUME_ATTRIBUTE = "LungNoduleExplain.SourceVolumeID"  # on each map: the ID of the CT it was computed on
# on each map: what a colour means (finding.json map_display.legend) and how much of the output the map cannot show
MAP_LEGEND_ATTRIBUTE = "LungNoduleExplain.MapLegend"
DESCRIPTOR_SHARE_ATTRIBUTE = "LungNoduleExplain.DescriptorShare"
TABLE_COLUMNS = ("output", "finding", "probability", "threshold", "result", "members")
CALIBRATED_ATTRIBUTE = "LungNoduleExplain.Calibrated"  # on the table: "true" / "false" (raw scores)
# on the table: the result folder it was read from (in the session folder; Export to DICOM reads it again)
RESULT_FOLDER_ATTRIBUTE = "LungNoduleExplain.ResultFolder"
# finding.json size fields -> table attributes (mm, mm^3); the table's name also says the axial axes
SIZE_ATTRIBUTES = {"long_axis_mm": "LungNoduleExplain.LongAxisMm", "short_axis_mm": "LungNoduleExplain.ShortAxisMm",
                   "diameter_mm": "LungNoduleExplain.EquivalentDiameterMm", "volume_mm3": "LungNoduleExplain.VolumeMm3"}
GEOMETRY_TOLERANCE_MM = 1e-3


class ResultError(RuntimeError):
    """A worker result folder is incomplete or does not lie on the CT's grid."""


@dataclass
class NoduleNodes:
    key: str
    name: str
    finding: dict
    segmentationNode: "slicer.vtkMRMLSegmentationNode | None"  # None where no nodule was found
    tableNode: "slicer.vtkMRMLTableNode"
    mapNodes: dict = field(default_factory=dict)  # output name -> vtkMRMLScalarVolumeNode
    folderItemID: int = 0  # set by addNodule as soon as the folder exists

    def nodes(self) -> list:
        return [n for n in (self.segmentationNode, self.tableNode, *self.mapNodes.values()) if n is not None]


def readFindingJson(folder: Path) -> dict:
    path = folder / "finding.json"
    if not path.is_file():
        raise ResultError(f"result folder {folder} has no finding.json")
    try:
        finding = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ResultError(f"{path} is not valid JSON: {exc}") from exc
    if isinstance(finding, dict) and finding.get("no_nodule_found") is True:
        if not isinstance(finding.get("reason"), str):
            raise ResultError(f"{path}: a 'no_nodule_found' result needs its 'reason' (text)")
        return finding
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


def checkOnCtGrid(node, ctNode, path: Path) -> None:
    """The engine writes every image on the CT's own grid over the nodule's region (an aligned sub-grid: the CT's
    spacing and direction, origin on a CT voxel) or over the whole CT; anything else would be drawn in the wrong
    place. Slicer overlays such an image voxel for voxel, nothing is resampled."""
    own, ct = _ijkToRas(node), _ijkToRas(ctNode)
    if not np.allclose(own[:3, :3], ct[:3, :3], atol=GEOMETRY_TOLERANCE_MM):
        raise ResultError(f"{path} is not on the grid of the CT {ctNode.GetName()!r} (spacing or direction differ)")
    start = (np.linalg.inv(ct) @ own[:, 3])[:3]  # the image's first voxel as a CT index
    if not np.allclose(start, np.round(start), atol=GEOMETRY_TOLERANCE_MM):
        raise ResultError(f"{path} is not on the grid of the CT {ctNode.GetName()!r} (its origin falls between "
                          f"the CT's voxels, at index {tuple(np.round(start, 3))})")
    start = np.round(start).astype(int)
    stop = start + np.asarray(node.GetImageData().GetDimensions())
    if np.any(start < 0) or np.any(stop > np.asarray(ctNode.GetImageData().GetDimensions())):
        raise ResultError(f"{path} reaches outside the CT {ctNode.GetName()!r} (voxels {tuple(start)} to "
                          f"{tuple(stop)}, the CT has {ctNode.GetImageData().GetDimensions()})")


def _makeTable(finding: dict) -> "slicer.vtkMRMLTableNode":
    table = slicer.vtkMRMLTableNode()
    # probability and threshold as text with two decimals: a table view prints a double with six digits
    columns = {name: vtk.vtkStringArray() for name in TABLE_COLUMNS}
    for name, array in columns.items():
        array.SetName(name)
    check = finding.get("nodule_check") or {}
    if finding.get("no_nodule_found") or check.get("found") is False:  # refused, or classified anyway
        reason = finding.get("reason") or check.get("reason", "")
        extra = "" if finding.get("no_nodule_found") else "; classified anyway (research)"
        for column, value in (("output", "no nodule found"), ("finding", f"{reason}{extra}"),
                              ("probability", ""), ("threshold", ""),
                              ("result", "no nodule found")):
            columns[column].InsertNextValue(value)
    for output in finding["outputs"]:
        probability, threshold = float(output["probability"]), float(output["threshold"])
        columns["output"].InsertNextValue(output["name"])
        columns["finding"].InsertNextValue(output.get("kind", ""))
        columns["probability"].InsertNextValue(f"{probability:.2f}")
        columns["threshold"].InsertNextValue(f"{threshold:.2f}")
        positive = output.get("positive", probability >= threshold)
        columns["result"].InsertNextValue(resultText(output["name"], bool(positive)))
    # members: one row per output, after any row the writer put above the outputs
    for _ in range(columns["output"].GetNumberOfValues() - len(finding["outputs"])):
        columns["members"].InsertNextValue("")
    for output in finding["outputs"]:
        columns["members"].InsertNextValue(membersText(output))
    for name in TABLE_COLUMNS:
        table.GetTable().AddColumn(columns[name])
    if isinstance(finding.get("calibrated"), bool):
        table.SetAttribute(CALIBRATED_ATTRIBUTE, "true" if finding["calibrated"] else "false")
    legend = (finding.get("map_display") or {}).get("legend")
    if legend:
        table.SetAttribute(MAP_LEGEND_ATTRIBUTE, legend)
    for key, attribute in SIZE_ATTRIBUTES.items():
        if isinstance(finding.get(key), (int, float)):
            table.SetAttribute(attribute, f"{float(finding[key]):g}")
    table.SetLocked(True)
    return table


def resultText(name: str, positive: bool) -> str:
    """'positive'/'negative' with what the call means for the patient where it means something (meaning.py):
    'positive (reassuring)' for a calcified nodule, 'positive (concerning)' for a spiculated one."""
    meaning = tone(name, positive)
    return ("positive" if positive else "negative") + ("" if meaning == "neutral" else f" ({meaning})")


def sizeText(finding: dict) -> str:
    """'24.1 x 10.2 mm axial' from finding.json's long and short axis; '' when it has none (older results)."""
    long_mm, short_mm = finding.get("long_axis_mm"), finding.get("short_axis_mm")
    if not isinstance(long_mm, (int, float)) or not isinstance(short_mm, (int, float)):
        return ""
    return f"{long_mm:.1f} x {short_mm:.1f} mm axial"


def membersText(output: dict) -> str:
    """The members' range as the table shows it: '0.71-0.90', with ' · members disagree' when they fall on both
    sides of the threshold; 'single network' when there is no spread; '' for a finding.json without the fields."""
    spread = output.get("member_spread")
    if isinstance(spread, dict) and {"min", "max"} <= spread.keys():
        text = f"{float(spread['min']):.2f}-{float(spread['max']):.2f}"
        return text + (" · members disagree" if output.get("members_disagree") else "")
    return "single network" if "member_probabilities" in output else ""


def _geometryInOwnFrame(volumeNode) -> str:
    """The volume's grid in its own frame, ignoring its parent transform (which the segmentation gets too);
    SetReferenceImageGeometryParameterFromVolumeNode would apply the transform to a segmentation without one."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return slicer.vtkSegmentationConverter.SerializeImageGeometry(matrix, volumeNode.GetImageData())


def _importSegmentation(labelmap, ctNode, name: str) -> "slicer.vtkMRMLSegmentationNode":
    """The labelmap as a segmentation on the CT's grid, out of the CT's scene. Neither node has a parent
    transform here, so the import copies the voxels as they are (with the CT's transform already on the
    segmentation, the import would move them by its inverse)."""
    geometryParameter = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    # The import creates a display node, which needs a scene (else it logs an error): import in a scratch
    # scene and keep only the segments.
    scratchScene = slicer.vtkMRMLScene()
    importer = scratchScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    importer.GetSegmentation().SetConversionParameter(geometryParameter, _geometryInOwnFrame(ctNode))
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, importer):
        raise ResultError(f"cannot import the segmentation of {name}")
    segmentation = slicer.vtkMRMLSegmentationNode()
    segmentation.SetName(f"{name} segmentation")
    segmentation.GetSegmentation().DeepCopy(importer.GetSegmentation())  # segments and the reference geometry
    # Resolved once the segmentation is in the CT's scene: the Segment Editor then offers the CT as source.
    segmentation.SetNodeReferenceID(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole(),
                                    ctNode.GetID())
    if segmentation.GetSegmentation().GetNumberOfSegments() == 1:
        segment = segmentation.GetSegmentation().GetNthSegment(0)
        segment.SetName("nodule")
        segment.SetColor(0.2, 0.9, 0.3)
    return segmentation


def readNodule(folder: Path, ctNode, key: str, name: str) -> NoduleNodes:
    """Read one result folder into nodes that are NOT yet in any scene; raises ResultError on any problem."""
    folder = Path(folder)
    finding = readFindingJson(folder)
    if finding.get("no_nodule_found"):  # a table saying so and why; nothing to draw
        table = _makeTable(finding)
        table.SetName(f"{name} results (no nodule found)")
        table.SetAttribute(RESULT_FOLDER_ATTRIBUTE, str(folder))
        return NoduleNodes(key=key, name=name, finding=finding, segmentationNode=None, tableNode=table)
    files = finding.get("files") or {}  # relative paths, when the writer lists them; else the default layout

    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    segmentationPath = folder / files.get("segmentation", "segmentation.nrrd")
    readVolume(segmentationPath, labelmap)
    checkOnCtGrid(labelmap, ctNode, segmentationPath)

    maps = {}
    for output in finding["outputs"]:
        mapNode = slicer.vtkMRMLScalarVolumeNode()
        path = folder / (files.get("maps") or {}).get(output["name"], f"maps/{output['name']}.nrrd")
        readVolume(path, mapNode)
        checkOnCtGrid(mapNode, ctNode, path)
        mapNode.SetName(f"{name} {output['name']} map")
        mapNode.SetAttribute(OUTPUT_ATTRIBUTE, output["name"])
        legend = (finding.get("map_display") or {}).get("legend")
        if legend:
            mapNode.SetAttribute(MAP_LEGEND_ATTRIBUTE, legend)
        if isinstance(output.get("descriptor_share"), (int, float)):
            mapNode.SetAttribute(DESCRIPTOR_SHARE_ATTRIBUTE, f"{float(output['descriptor_share']):.3f}")
        maps[output["name"]] = mapNode

    segmentation = _importSegmentation(labelmap, ctNode, name)
    table = _makeTable(finding)
    size = sizeText(finding)
    table.SetName(f"{name} results" + (f" ({size})" if size else ""))
    table.SetAttribute(RESULT_FOLDER_ATTRIBUTE, str(folder))
    return NoduleNodes(key=key, name=name, finding=finding, segmentationNode=segmentation, tableNode=table,
                       mapNodes=maps)


def addNodule(scene, nodule: NoduleNodes, ctNode, colorNode, threshold: float = DEFAULT_THRESHOLD) -> NoduleNodes:
    """Add a nodule read by readNodule to the scene, under a folder beside the CT (in its study). The nodes are
    in the CT's own frame, so they get the CT's parent transform. If this raises, `removeAddedNodule` undoes it."""
    if nodule.segmentationNode is not None:
        nodule.segmentationNode.SetAttribute(ROLE_ATTRIBUTE, "segmentation")
    nodule.tableNode.SetAttribute(ROLE_ATTRIBUTE, "table")
    for mapNode in nodule.mapNodes.values():
        mapNode.SetAttribute(ROLE_ATTRIBUTE, "map")
        mapNode.SetAttribute(SOURCE_VOLUME_ATTRIBUTE, ctNode.GetID())
    transformID = ctNode.GetTransformNodeID()
    for node in nodule.nodes():
        node.SetAttribute(NODULE_KEY_ATTRIBUTE, nodule.key)
        scene.AddNode(node)
        if node.IsA("vtkMRMLTransformableNode"):
            node.SetAndObserveTransformNodeID(transformID)

    segmentation = nodule.segmentationNode
    if segmentation is not None:
        segmentation.CreateDefaultDisplayNodes()
        segmentation.GetDisplayNode().SetName(f"{segmentation.GetName()} display")
    for mapNode in nodule.mapNodes.values():
        configureMapDisplay(mapNode, colorNode, threshold)

    _placeInHierarchy(scene, nodule, ctNode)
    return nodule


def _placeInHierarchy(scene, nodule: NoduleNodes, ctNode) -> None:
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    ctItem = sh.GetItemByDataNode(ctNode)
    parent = sh.GetItemParent(ctItem) if ctItem else sh.GetSceneItemID()
    nodule.folderItemID = sh.CreateFolderItem(parent, nodule.name)  # at once, so that an undo finds it
    sh.SetItemAttribute(nodule.folderItemID, NODULE_KEY_ATTRIBUTE, nodule.key)
    for node in nodule.nodes():
        item = sh.GetItemByDataNode(node)
        if item:
            sh.SetItemParent(item, nodule.folderItemID)
        else:
            sh.CreateItem(nodule.folderItemID, node)


def nodesOfNodule(scene, key: str) -> list:
    nodes = []
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if node.GetAttribute(NODULE_KEY_ATTRIBUTE) == key:
            nodes.append(node)
    return nodes


def foldersOfNodule(scene, key: str) -> list[int]:
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    items = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), items, True)
    return [items.GetId(i) for i in range(items.GetNumberOfIds())
            if sh.GetItemAttribute(items.GetId(i), NODULE_KEY_ATTRIBUTE) == key]


def removeNodes(scene, nodes: list, folders: list[int]) -> None:
    """Remove `nodes` with their display and storage nodes, and the hierarchy `folders`. Hierarchy items first
    (without the subject-hierarchy logic nothing else would drop them), then the nodes."""
    nodes = [node for node in nodes if node is not None and scene.IsNodePresent(node)]
    helpers = []
    for node in nodes:
        if node.IsA("vtkMRMLDisplayableNode"):
            helpers += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        if node.IsA("vtkMRMLStorableNode"):
            helpers += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    for node in nodes:
        item = sh.GetItemByDataNode(node)
        if item:
            sh.RemoveItem(item, False, False)
    for folder in folders:
        sh.RemoveItem(folder, False, True)
    for node in [*nodes, *helpers]:
        if node is not None and scene.IsNodePresent(node):
            scene.RemoveNode(node)


def removeAddedNodule(scene, nodule: NoduleNodes) -> None:
    """Undo addNodule, also one that stopped part-way; found through the objects, not the key, which older
    nodes of the same nodule share."""
    removeNodes(scene, nodule.nodes(), [nodule.folderItemID] if nodule.folderItemID else [])


def removeNodule(scene, key: str) -> int:
    """Remove every node and folder carrying `key`, with their display and storage nodes; returns how many
    data nodes went."""
    nodes = nodesOfNodule(scene, key)
    removeNodes(scene, nodes, foldersOfNodule(scene, key))
    return len(nodes)
