"""Running converted checkpoints: device selection now; real-loader verification builds on it."""

from .devices import Device, select_device  # noqa: F401
