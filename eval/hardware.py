"""What an evaluation ran on, recorded beside its timings (Table 4 is only comparable on named hardware)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_hardware() -> dict[str, Any]:
    """This machine: CPU, cores, memory, CUDA devices, torch threads."""
    info: dict[str, Any] = {"host": platform.node(), "os": platform.platform(), "cpu": _cpu_name(),
                            "cpu_cores": os.cpu_count()}
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return info


def hardware_summary(backend_info: dict[str, Any], host: dict[str, Any], note: str | None = None) -> str:
    """One line for Table 4: the user's note if given, else the accelerator or CPU that ran the model."""
    if note:
        return note
    if backend_info.get("engine") == "openai-compatible server":
        return f"server at {backend_info.get('server_url')} (hardware not visible to the client; pass --hardware)"
    gpus = backend_info.get("gpus") or host.get("gpus") or []
    if backend_info.get("device", "cpu").startswith("cuda") and gpus:
        return f"{len(gpus)}x {gpus[0]}" if len(set(gpus)) == 1 else ", ".join(gpus)
    threads = f", {host['torch_threads']} torch threads" if host.get("torch_threads") else ""
    return f"CPU: {host.get('cpu')} ({host.get('cpu_cores')} cores{threads})"
