"""What every benchmark's JSON records about the machine it ran on (time-budgeted figures depend on it), and
the lines every benchmark ends with: its goals, met or not."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def torch_info(device: str) -> dict:
    """torch's version and thread count, the device the benchmark ran on, and the GPU's name on CUDA."""
    import torch

    info = {"torch_threads": torch.get_num_threads(), "torch": torch.__version__, "device": device}
    if device.startswith("cuda"):
        info["cuda_device"] = torch.cuda.get_device_name(torch.device(device))
    return info


def machine_info(**extra) -> dict:
    """Platform, CPU model and count, Python version, and the benchmark's own ``extra`` entries."""
    return {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), **extra}


def print_goals(goals: dict[str, bool]) -> None:
    """One line per goal of a benchmark's ``goals`` mapping: met, or NOT met."""
    for goal, ok in goals.items():
        print(f"goal {goal}: {'met' if ok else 'NOT met'}")
