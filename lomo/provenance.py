"""What made a result: the code (git commit, and whether the tree had uncommitted changes), the
packages that compute it, Python and the hardware. Recorded in every run folder (resources.json,
beside the device, thread count and ranks) and shown by `lomo table` when the runs of one table
come from different code or packages."""

import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a run needs it: `lomo table` reads records only
    import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "transformers", "deepspeed", "peft", "datasets")


def git_state(root: Path = ROOT) -> dict[str, str | bool | None]:
    """{"commit", "dirty"} of the checkout the code runs from; None each outside a git checkout
    (an installed wheel) or without git."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform reports."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def hardware(device: "torch.device") -> str:
    """The CPU model, or the GPU's name."""
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def provenance(device: "torch.device") -> dict:
    """The record of one run on `device` (its thread count and ranks are recorded beside it)."""
    return {
        **git_state(),
        "packages": package_versions(),
        "python": platform.python_version(),
        "hardware": hardware(device),
    }


def code_and_environment(record: dict | None) -> str:
    """A one-line summary that tells apart runs of different code or packages: 'abc1234567
    (+uncommitted), torch 2.13.0, transformers ...'. Hardware and threads are left out: runs of
    one table may spread over machines by design."""
    if not record:
        return "unrecorded"
    commit = (record.get("commit") or "no git")[:10] + (
        " (+uncommitted)" if record.get("dirty") else ""
    )
    packages = ", ".join(f"{k} {v}" for k, v in record.get("packages", {}).items() if v)
    return f"{commit}, python {record.get('python')}, {packages}"
