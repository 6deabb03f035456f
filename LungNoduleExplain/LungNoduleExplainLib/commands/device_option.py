"""--device, as every verb that runs a network takes it: the names of vocabulary.Device, the rule of
devices.choose_device."""

from __future__ import annotations

import argparse

from ..vocabulary import Device


def add_device_argument(parser: argparse.ArgumentParser, default: Device = Device.AUTO,
                        what: str = "where the networks run") -> None:
    parser.add_argument("--device", choices=Device.names(), default=default.value,
                        help=f"{what}: {Device.listed()} (default {default}). auto: the CUDA GPU when there is one, "
                             "else the CPU, and it says so; cuda: an error when there is none")
