"""Shared fixtures. Slow tests (embedded SmolLM2 end to end) run with --runslow or LONGSHORT_SLOW=1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
# Tests compare exact outputs, which is promised in fp32 only: pin `precision: auto` to fp32 even
# on CPUs with bf16 units (tests of the bf16 choice unset it themselves).
os.environ.setdefault("LONGSHORT_PRECISION", "fp32")
# ... and on kernels whose floats do not depend on the batch: with AVX-512 kernels a row's fp32
# logits change in the last bits with the batch it is in (the shape picks the blocking), enough to
# flip a sampled token of the tiny random models' flat distributions, so "the same samples as
# encoding every prompt alone" fails there. Set before torch is imported.
os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("LONGSHORT_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or LONGSHORT_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.exists():
        pytest.skip("../shared not present")
    return SHARED


@pytest.fixture
def one_thread():
    """Tiny models: one torch thread is far faster than two fighting over a shared CPU
    (`pytestmark = pytest.mark.usefixtures("one_thread")` in a module)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
