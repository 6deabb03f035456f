"""DICOM in and out: choosing and checking a CT series (series), the results as DICOM Segmentation, Parametric
Maps and a TID 1500 SR (objects, report), and a DICOMweb server as source and destination (web)."""
