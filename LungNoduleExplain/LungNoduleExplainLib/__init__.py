"""LungNoduleExplain engine: Slicer-free science for explainable lung nodule diagnosis.

Never imports slicer, qt or vtk; every face (command line, Slicer module, CLI module) is thin glue over it.
"""

__version__ = "0.1.0"
