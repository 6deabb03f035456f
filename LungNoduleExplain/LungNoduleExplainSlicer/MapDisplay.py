"""How activation maps look: a heat colour table, values under a threshold transparent, shown over the CT.

Works on any MRML scene (Slicer's or slicer-core's); no qt. The threshold lives in each map's display node
(ApplyThreshold: voxels below it are not drawn), so the slider changes it without touching the voxels.
"""

from __future__ import annotations

from typing import Iterable

import slicer

HEAT_COLOR_NODE_NAME = "LungNoduleExplain Heat"
DEFAULT_THRESHOLD = 0.25  # the paper hides activation values below 0.25
DEFAULT_OPACITY = 0.6
NUMBER_OF_COLORS = 256

# (position in [0, 1], r, g, b): dark red -> red -> orange -> yellow -> white, like the paper's figures.
_HEAT_STOPS = ((0.0, 0.35, 0.0, 0.0), (0.35, 0.9, 0.05, 0.0), (0.6, 1.0, 0.5, 0.0), (0.85, 1.0, 0.95, 0.1),
               (1.0, 1.0, 1.0, 0.9))


def heatColor(position: float) -> tuple[float, float, float]:
    """Linear interpolation between the heat stops; position in [0, 1]."""
    position = min(max(position, 0.0), 1.0)
    for (p0, *c0), (p1, *c1) in zip(_HEAT_STOPS, _HEAT_STOPS[1:]):
        if position <= p1:
            t = (position - p0) / (p1 - p0)
            return tuple(a + t * (b - a) for a, b in zip(c0, c1))
    return tuple(_HEAT_STOPS[-1][1:])


def getOrCreateHeatColorNode(scene: "slicer.vtkMRMLScene") -> "slicer.vtkMRMLColorTableNode":
    """The module's own colour table (file-based tables such as ColdToHotRainbow are not always present)."""
    existing = scene.GetFirstNodeByName(HEAT_COLOR_NODE_NAME)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    node = slicer.vtkMRMLColorTableNode()
    node.SetName(HEAT_COLOR_NODE_NAME)
    node.SetTypeToUser()
    node.SetNumberOfColors(NUMBER_OF_COLORS)
    for index in range(NUMBER_OF_COLORS):
        r, g, b = heatColor(index / (NUMBER_OF_COLORS - 1))
        node.SetColor(index, f"{index / (NUMBER_OF_COLORS - 1):.3f}", r, g, b, 1.0)
    node.SetAttribute("Category", "LungNoduleExplain")
    scene.AddNode(node)
    return node


def configureMapDisplay(mapNode: "slicer.vtkMRMLScalarVolumeNode", colorNode: "slicer.vtkMRMLColorTableNode",
                        threshold: float = DEFAULT_THRESHOLD) -> "slicer.vtkMRMLScalarVolumeDisplayNode":
    """Heat colours over the full [0, 1] map range, voxels below `threshold` transparent."""
    displayNode = mapNode.GetDisplayNode()
    if displayNode is None:
        displayNode = slicer.vtkMRMLScalarVolumeDisplayNode()
        displayNode.SetName(f"{mapNode.GetName()} display")
        mapNode.GetScene().AddNode(displayNode)
        mapNode.SetAndObserveDisplayNodeID(displayNode.GetID())
    wasModifying = displayNode.StartModify()
    displayNode.SetAndObserveColorNodeID(colorNode.GetID())
    displayNode.SetAutoWindowLevel(False)
    displayNode.SetWindowLevelMinMax(0.0, 1.0)
    displayNode.SetAutoThreshold(False)
    displayNode.SetApplyThreshold(True)
    displayNode.SetThreshold(threshold, 1.0e6)  # upper bound far above 1: nothing above is ever hidden
    displayNode.SetInterpolate(True)
    displayNode.EndModify(wasModifying)
    return displayNode


def setMapThreshold(mapNodes: Iterable["slicer.vtkMRMLScalarVolumeNode"], threshold: float) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"map threshold must be within [0, 1], got {threshold}")
    for node in mapNodes:
        displayNode = node.GetDisplayNode()
        if displayNode is not None:
            displayNode.SetLowerThreshold(threshold)


def sliceCompositeNodes(scene: "slicer.vtkMRMLScene") -> list:
    return [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]


def showMap(scene: "slicer.vtkMRMLScene", ctNode, mapNode, opacity: float = DEFAULT_OPACITY) -> None:
    """In every slice view: the CT as background, `mapNode` (or nothing, if None) as foreground."""
    for composite in sliceCompositeNodes(scene):
        wasModifying = composite.StartModify()
        if ctNode is not None:
            composite.SetBackgroundVolumeID(ctNode.GetID())
        composite.SetForegroundVolumeID(mapNode.GetID() if mapNode is not None else None)
        composite.SetForegroundOpacity(opacity)
        composite.EndModify(wasModifying)


def setMapOpacity(scene: "slicer.vtkMRMLScene", opacity: float) -> None:
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"map opacity must be within [0, 1], got {opacity}")
    for composite in sliceCompositeNodes(scene):
        composite.SetForegroundOpacity(opacity)
