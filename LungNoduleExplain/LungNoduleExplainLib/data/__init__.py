"""Datasets: the nodule table format (`lidc-voi`), LIDC from DICOM, and a hospital's own cases."""
