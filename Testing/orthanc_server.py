"""A real Orthanc PACS with its DICOMweb plugin for the tests: free localhost ports, its own temporary storage and
configuration, a user and password (so that credentials are exercised), stopped and removed afterwards.

Skips with a reason when the `Orthanc` binary or the plugin (Debian packages orthanc, orthanc-dicomweb) is absent.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import requests

PLUGIN_PLACES = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/plugins/libOrthancDicomWeb.so",
                 "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "lungnodule", "test-password"


@dataclass(frozen=True)
class Orthanc:
    url: str  # the REST root, http://127.0.0.1:PORT

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def upload(self, files: list[Path]) -> None:
        """Orthanc's REST upload (not STOW-RS: the tests' set-up must not use the code it tests)."""
        for path in files:
            requests.post(f"{self.url}/instances", data=path.read_bytes(), auth=(USER, PASSWORD),
                          timeout=30).raise_for_status()

    def instances(self) -> list[dict]:
        """Every instance's main DICOM tags (SOPInstanceUID, SeriesInstanceUID, Modality...)."""
        ids = requests.get(f"{self.url}/instances", auth=(USER, PASSWORD), timeout=30).json()
        return [requests.get(f"{self.url}/instances/{i}/simplified-tags", auth=(USER, PASSWORD), timeout=30).json()
                for i in ids]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_orthanc(folder: Path) -> Iterator[Orthanc]:
    binary = shutil.which("Orthanc")
    plugin = next((p for p in PLUGIN_PLACES if Path(p).is_file()), None)
    if binary is None or plugin is None:
        pytest.skip("Orthanc or its DICOMweb plugin is not installed (Debian packages orthanc, orthanc-dicomweb; "
                    ".ci/run installs them)")
    port = free_port()
    config = {"Name": "lungnodule-test", "StorageDirectory": str(folder / "storage"),
              "IndexDirectory": str(folder / "storage"), "HttpPort": port, "DicomServerEnabled": False,
              "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
              "Plugins": [plugin], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "HttpTimeout": 60}
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")
    process = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, process, folder / "orthanc.log")
        yield Orthanc(url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with code {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if requests.get(f"{url}/system", auth=(USER, PASSWORD), timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"Orthanc did not answer on {url} within {timeout_s:.0f} s: {log.read_text()[-2000:]}")
