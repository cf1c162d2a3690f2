"""What every benchmark prints about the machine it ran on: the CPU, threads, bf16 support and
the load average (the machine may be shared: a timing means little without it)."""

from __future__ import annotations

import os
import platform


def load() -> str:
    """The 1-, 5- and 15-minute load averages."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def header() -> str:
    """One line: CPU, CPU count, torch threads, native bf16, GPU, load average now."""
    import torch

    from longshort.models import cpu_has_bf16

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
            f"{torch.get_num_threads()}, native bf16 {cpu_has_bf16()}, GPU {gpu}; load average {load()} "
            f"(1/5/15 min)")
