"""What a benchmark records of the machine it ran on: versions, device, threads, load average, git commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch


def environment(device: str) -> dict:
    """The machine and checkout; ``load_average`` (1 minute) says whether it was idle."""
    cuda = torch.device(device).type == "cuda"
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device_name": torch.cuda.get_device_name() if cuda else f"cpu ({platform.machine()})",
        "cpu_threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
        "python": platform.python_version(),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": None if (status := git("status", "--porcelain", "--untracked-files=no")) is None else bool(status),
    }


def git(*args: str) -> str | None:
    """Output of a git command in this checkout; None where there is no git or no repository (a copied tree)."""
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()
