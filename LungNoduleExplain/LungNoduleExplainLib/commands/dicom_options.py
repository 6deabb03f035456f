"""The DICOM side of `analyze`: --series-uid, --dicom, and a DICOMweb server as source (--dicomweb) and
destination (--store). The engine's dicom package does the work; this module only reads the options."""

from __future__ import annotations

import argparse
import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import urlsplit

import SimpleITK as sitk

from ..errors import InputImageError

logger = logging.getLogger(__name__)

ClientFactory = Callable[..., Any]  # (url, verify_tls=) -> a DICOMwebClient


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("DICOM and PACS")
    group.add_argument("--series-uid", metavar="UID",
                       help="the SeriesInstanceUID to analyse, where the DICOM folder holds several series "
                            "(they are listed when it is not given); with --dicomweb, the series to retrieve")
    group.add_argument("--dicom", action="store_true",
                       help="also write the results as DICOM into OUT/dicom/: a Segmentation, one Parametric Map per "
                            "nodule and output, and a TID 1500 measurement report (SR); needs a DICOM series")
    group.add_argument("--dicomweb", metavar="URL",
                       help="read the CT from this DICOMweb server (with --study-uid and --series-uid) instead of "
                            "CT; credentials from LUNGNODULE_DICOMWEB_TOKEN, LUNGNODULE_DICOMWEB_USER/_PASSWORD "
                            "or netrc")
    group.add_argument("--study-uid", metavar="UID", help="the StudyInstanceUID to retrieve with --dicomweb")
    group.add_argument("--store", action="store_true",
                       help="store the DICOM results back on the --dicomweb server (STOW-RS; the SR last, only "
                            "when the segmentation and maps were accepted); implies --dicom")
    group.add_argument("--no-verify-tls", dest="verify_tls", action="store_false",
                       help="do not verify the DICOMweb server's TLS certificate (test servers only)")


def wants_dicom(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "dicom", False) or getattr(args, "store", False))


def check_arguments(args: argparse.Namespace) -> None:
    """The combinations that cannot work, refused before any work."""
    url = getattr(args, "dicomweb", None)
    if url is None:
        if args.ct is None:
            raise InputImageError("no CT given: pass a CT path, or --dicomweb URL --study-uid UID --series-uid UID")
        if getattr(args, "store", False) or getattr(args, "study_uid", None):
            raise InputImageError("--store and --study-uid need --dicomweb URL (the server to read from and store to)")
        return
    if args.ct is not None:
        raise InputImageError(f"give either a CT path ({args.ct}) or --dicomweb, not both")
    if urlsplit(url).password is not None or urlsplit(url).username is not None:
        raise InputImageError("--dicomweb URL holds a user name or password; credentials go in "
                              "LUNGNODULE_DICOMWEB_USER/_PASSWORD, LUNGNODULE_DICOMWEB_TOKEN or netrc, never on the "
                              "command line (it is visible to every user of the machine)")
    if not args.study_uid or not args.series_uid:
        raise InputImageError("--dicomweb needs --study-uid and --series-uid (the series to analyse)")


@contextmanager
def ct_source(args: argparse.Namespace, client_factory: ClientFactory | None = None) -> Iterator[tuple[Path, Any]]:
    """(the CT path, the DICOMweb client or None): with --dicomweb the series retrieved into a temporary folder,
    removed afterwards."""
    if getattr(args, "dicomweb", None) is None:
        yield args.ct, None
        return
    from ..dicom import web

    client = (client_factory or web.connect)(args.dicomweb, verify_tls=args.verify_tls)
    with tempfile.TemporaryDirectory(prefix="lungnodule-dicomweb-") as folder:
        web.retrieve_series(client, args.study_uid, args.series_uid, folder)
        yield Path(folder), client


def read_input(args: argparse.Namespace, ct_path: Path) -> tuple[sitk.Image, Any]:
    """(the CT, its DicomSeries or None for a NIfTI/NRRD/MHA file)."""
    from ..volume import read_ct, read_dicom_series

    if not Path(ct_path).exists():
        raise InputImageError(f"CT not found: {ct_path}")
    if not Path(ct_path).is_dir():
        if wants_dicom(args):
            raise InputImageError(f"--dicom needs the CT as a DICOM series folder (the results reference its "
                                  f"images); {ct_path} is a file")
        if getattr(args, "series_uid", None):
            raise InputImageError(f"--series-uid chooses among the series of a DICOM folder; {ct_path} is a file")
        return read_ct(ct_path), None
    from ..dicom.series import find_series

    series = find_series(ct_path, getattr(args, "series_uid", None))
    return read_dicom_series(series, Path(ct_path)), series


def build(args: argparse.Namespace, findings: Sequence[Any], ct: sitk.Image, series: Any):  # noqa: ANN201
    """The DICOM results (dicom.objects.DicomResults) when asked for, else None; built before anything is
    written, so that a failure here leaves no output."""
    if not wants_dicom(args):
        return None
    from ..dicom.objects import build_dicom_results

    return build_dicom_results(findings, ct, series)


def writer(results: Any) -> Callable[[Path], None] | None:
    """write_findings' extra_writer: the objects into <report folder>/dicom/."""
    if results is None:
        return None
    from ..dicom.objects import write_dicom

    return lambda folder: write_dicom(results, folder / "dicom")


def store(args: argparse.Namespace, client: Any, results: Any) -> None:
    """--store: the objects to the server, the SR last; prints what was stored."""
    if not getattr(args, "store", False):
        return
    from ..dicom.web import store_results

    outcome = store_results(client, results.segmentation_and_maps, results.report)
    print(f"stored on {args.dicomweb}: {len(outcome.objects)} objects (segmentation and maps), then the report "
          f"{outcome.report}")
