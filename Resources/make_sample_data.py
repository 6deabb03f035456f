"""Write the module's sample CT: LIDC-IDRI-0001's 16-slice DICOM sub-stack as one NRRD, and print its SHA256.

Real CT from LIDC-IDRI (The Cancer Imaging Archive, CC BY 3.0; cite Armato et al. 2011 and 2015, Clark et al.
2013). Upload the file as the asset of the repository's "sample-data" release and put the printed checksum in
SAMPLE_SHA256 of LungNoduleExplain/LungNoduleExplain.py (a test checks they agree when the file is present).

    python Resources/make_sample_data.py [DICOM_FOLDER] [OUT.nrrd]
"""

import hashlib
import sys
import tempfile
from pathlib import Path

import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DICOM = ROOT.parent / "shared" / "data" / "lidc-ct" / "LIDC-IDRI-0001" / "dicom"
DEFAULT_OUT = Path(tempfile.gettempdir()) / "LIDC-IDRI-0001-substack.nrrd"  # never inside the repository


def write_sample(dicom: Path, out: Path) -> str:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(dicom)))
    image = reader.Execute()
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.Cast(image, sitk.sitkInt16), str(out), useCompression=True)
    return hashlib.sha256(out.read_bytes()).hexdigest()


if __name__ == "__main__":
    dicom = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DICOM
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_OUT
    print(f"{out}\nSHA256:{write_sample(dicom, out)}")
