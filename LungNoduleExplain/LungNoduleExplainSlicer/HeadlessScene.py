"""An MRML scene that behaves like Slicer's, without the application: for tests and scripts on slicer-core.

Inside Slicer, use slicer.mrmlScene instead; nothing in the module needs this file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import slicer

from .ResultNodes import readVolume

LOGIC_CLASSES = ("vtkSlicerApplicationLogic", "vtkSlicerColorLogic", "vtkSlicerMarkupsLogic",
                 "vtkSlicerSegmentationsModuleLogic", "vtkSlicerTablesLogic", "vtkSlicerVolumesLogic")


def makeScene(sliceCompositeNodes: int = 3):
    """(scene, logics): a scene with cache/IO managers and the module logics Slicer registers (markups,
    segmentations, tables, volumes, colors), plus `sliceCompositeNodes` bare slice views. Keep `logics`
    referenced for as long as the scene is used."""
    scene = slicer.vtkMRMLScene()
    cache = slicer.vtkCacheManager()
    # No remote cache folder: nothing is downloaded here, and a folder per scene would litter the temp folder.
    io = slicer.vtkDataIOManager()
    io.SetCacheManager(cache)
    scene.SetCacheManager(cache)
    scene.SetDataIOManager(io)
    logics = [getattr(slicer, name)() for name in LOGIC_CLASSES]
    for logic in logics:
        logic.SetMRMLScene(scene)
    for _ in range(sliceCompositeNodes):
        scene.AddNode(slicer.vtkMRMLSliceCompositeNode())
    return scene, logics


def loadVolume(scene, path, name: str):
    """Read a scalar volume file into the scene (what slicer.util.loadVolume does in the application)."""
    node = slicer.vtkMRMLScalarVolumeNode()
    readVolume(Path(path), node)
    node.SetName(name)
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    return node


def addSliceView(scene, name: str = "Red", size: int = 512):
    """A slice logic with its slice and composite nodes, as a slice view widget would have."""
    sliceLogic = slicer.vtkMRMLSliceLogic()
    sliceLogic.SetMRMLScene(scene)
    sliceLogic.AddSliceNode(name).SetDimensions(size, size, 1)
    return sliceLogic


def renderAxialSlice(sliceLogic, zRas: float) -> np.ndarray:
    """What the slice view shows at axial position zRas (background blended with foreground), RGB uint8
    [rows, columns, 3] in VTK order: row 0 is the bottom of the view (flip vertically to display)."""
    from vtk.util.numpy_support import vtk_to_numpy
    sliceLogic.GetSliceNode().SetOrientationToAxial()
    sliceLogic.FitSliceToAll()
    sliceLogic.SetSliceOffset(zRas)
    producer = sliceLogic.GetImageDataConnection().GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(0)
    columns, rows, _ = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(rows, columns, -1)[..., :3].copy()
