"""The one place a --device value becomes a torch.device (CLI, app, pipeline and torchrun)."""
from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A device this machine cannot use; the message is one line for the CLI and the app."""


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: str | None) -> torch.device:
    """A --device value -> a device this machine can use (None: `default_device()`).

    Raises DeviceError (a ValueError) with a one-line reason for an unknown or unavailable device, so the
    CLI and app can refuse it before any weights load."""
    if not name:
        return default_device()
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:  # AssertionError: torch built without that backend
        reason = (str(error).splitlines() or [""])[0]
        raise DeviceError(f"--device {name} cannot be used here ({reason})") from None
    return device
