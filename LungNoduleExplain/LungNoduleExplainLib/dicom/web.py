"""A DICOMweb server (a PACS) as the CT's source and the results' destination, through dicomweb-client.

Credentials never come from the command line: LUNGNODULE_DICOMWEB_TOKEN (a bearer token), or
LUNGNODULE_DICOMWEB_USER and LUNGNODULE_DICOMWEB_PASSWORD, or else the user's netrc file (requests reads it for
the server's host). TLS certificates are verified unless the caller turns it off. Nothing logged here names the
patient: counts and the server's address only, never a header value.

Storing is done so that the PACS is never left with a report that points at nothing: the Segmentation and the
Parametric Maps go in one STOW-RS request, the SR in a second one only when every object of the first was
accepted. DICOMweb has no transaction or delete, so a failure says exactly what was stored.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import requests
from pydicom.dataset import Dataset

from ..atomic import atomic_path
from ..errors import LungNoduleExplainError

logger = logging.getLogger(__name__)
logging.getLogger("dicomweb_client").setLevel(logging.WARNING)  # its debug lines carry full query URLs

TOKEN_VARIABLE = "LUNGNODULE_DICOMWEB_TOKEN"
USER_VARIABLE, PASSWORD_VARIABLE = "LUNGNODULE_DICOMWEB_USER", "LUNGNODULE_DICOMWEB_PASSWORD"
TIMEOUT_S = 60.0
ATTEMPTS = 3  # a busy server (429, 503...) or a refused connection is tried 3 times, 0.5 s then 1 s apart


class DicomWebError(LungNoduleExplainError, RuntimeError):
    """The DICOMweb server cannot be reached, refuses a request, or does not hold what was asked for.
    `stored`: SOP Instance UIDs already stored when a store failed part-way."""

    def __init__(self, message: str, stored: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.stored = list(stored)


@dataclass(frozen=True)
class StoreOutcome:
    """What a store sent: the SOP Instance UIDs of the SEG and maps (first request) and of the SR (second)."""

    objects: list[str]
    report: str


def connect(url: str, *, verify_tls: bool = True):  # noqa: ANN201 - dicomweb_client.DICOMwebClient
    """A DICOMwebClient for `url` with the credentials of the environment or netrc (see the module notes)."""
    from dicomweb_client import DICOMwebClient

    session = requests.Session()
    session.verify = verify_tls
    if not verify_tls:
        logger.warning("TLS certificate verification is off for %s", url)
    token = os.environ.get(TOKEN_VARIABLE)
    user, password = os.environ.get(USER_VARIABLE), os.environ.get(PASSWORD_VARIABLE)
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    elif user is not None or password is not None:
        if user is None or password is None:
            raise DicomWebError(f"set both {USER_VARIABLE} and {PASSWORD_VARIABLE}, or neither")
        session.auth = (user, password)
    # else: requests takes the host's login from ~/.netrc (or $NETRC) by itself
    client = DICOMwebClient(url, session=session, timeout=TIMEOUT_S)
    client.set_http_retry_params(max_attempts=ATTEMPTS, wait_exponential_multiplier=500)  # default: 5, 30 s
    return client


def retrieve_series(client, study_uid: str, series_uid: str, folder: str | Path) -> list[Path]:  # noqa: ANN001
    """WADO-RS: save every instance of the series as `folder/<n>.dcm`; raises DicomWebError when the server is
    down or does not hold the series."""
    folder = Path(folder)
    where = f"study {study_uid} series {series_uid} on {client.base_url}"
    with _talking_to(client, f"retrieving {where}"):
        datasets = client.retrieve_series(study_uid, series_uid)
    if not datasets:
        raise DicomWebError(f"the DICOMweb server holds no instance of {where}")
    paths = []
    for n, dataset in enumerate(datasets, start=1):
        paths.append(folder / f"{n:05d}.dcm")
        with atomic_path(paths[-1]) as tmp:
            dataset.save_as(tmp, enforce_file_format=True)
    logger.info("retrieved %d instances from %s", len(paths), client.base_url)
    return paths


def store_results(client, objects: Sequence[Dataset], report: Dataset) -> StoreOutcome:  # noqa: ANN001
    """STOW-RS the SEG and maps (`objects`), then, only when all were accepted, the SR (`report`)."""
    uids = [str(d.SOPInstanceUID) for d in objects]
    with _talking_to(client, f"storing {len(objects)} objects (segmentation and maps)"):
        _check_stored(client.store_instances(list(objects)), uids, [])
    with _talking_to(client, "storing the report (SR); the segmentation and maps were stored", stored=uids):
        _check_stored(client.store_instances([report]), [str(report.SOPInstanceUID)], uids)
    logger.info("stored %d objects and the report on %s", len(objects), client.base_url)
    return StoreOutcome(uids, str(report.SOPInstanceUID))


def _check_stored(response: Dataset | None, sent: list[str], before: list[str]) -> None:
    """A STOW-RS response lists refused instances in FailedSOPSequence (0008,1198)."""
    failed = [str(item.ReferencedSOPInstanceUID) for item in (response or Dataset()).get("FailedSOPSequence", [])]
    if failed:
        accepted = [uid for uid in sent if uid not in failed]
        raise DicomWebError(f"the server refused {len(failed)} of {len(sent)} objects ({', '.join(failed)}); "
                            f"stored before: {len(before)}, stored now: {len(accepted)} "
                            f"({', '.join(before + accepted) or 'none'})", stored=before + accepted)


@contextmanager
def _talking_to(client, doing: str, stored: Sequence[str] = ()) -> Iterator[None]:  # noqa: ANN001
    """Turn requests' errors into one DicomWebError saying what was being done (and what was stored)."""
    already = f"; already stored: {', '.join(stored)}" if stored else ""
    try:
        yield
    except requests.HTTPError as error:
        status = error.response.status_code if error.response is not None else 0
        reason = {401: "credentials missing or refused", 403: "not allowed",
                  404: "not found on the server"}.get(status, getattr(error.response, "reason", "") or "")
        raise DicomWebError(f"DICOMweb server {client.base_url} answered HTTP {status} ({reason}) when "
                            f"{doing}{already}", stored) from None
    except requests.RequestException as error:
        raise DicomWebError(f"DICOMweb server {client.base_url} cannot be reached when {doing}: "
                            f"{type(error).__name__}{already}", stored) from None
