"""Run directories: the one environment manifest, config fingerprints and the run-directory guard.

Every command that writes a run directory (`eval`, `sft`, `rl`, `pipeline`) records the same
environment manifest (DESIGN §8), built here and nowhere else. Its schema (version 1):

    schema        1
    seed          the run's seed
    python        interpreter version, e.g. "3.11.9"
    platform      `platform.platform()`
    cpu_count     logical CPUs
    device        "cpu", or "cuda: N x NAME"
    packages      {distribution: version} for the packages that shape results (missing ones omitted)
    git           {"revision": sha, "dirty": bool} of the source tree ({} outside a checkout)
    argv          the command line
    started       UTC time, ISO 8601

Where it is written: `eval` in `OUT/metrics.json` under `environment`; `pipeline` as
`OUT/manifest.json` (the manifest's keys at the top, plus `stages` timings, `peak_rss_mb` and
`resumed`); `sft` and `rl` in `OUT/longshort_run.json` (and each RL iteration's) under `manifest`.
Readers take the keys they need and ignore the others, so a key added later (with `SCHEMA` raised)
leaves older readers working. (Before issue 13 the training marker held an older, flat manifest:
`python, platform, seed, torch, transformers, trl, accelerate, git_revision, cuda`; nothing reads it.)

`fingerprint(obj)` is the short hash that ties a stage's output to the config it was made with;
`guard_run_dir(out, resume=..., marker=...)` refuses to write into a directory that holds
something else (checked before any work starts, so nothing written is damaged).

This module sits beside `io` at the bottom of the package: it imports nothing from longshort
but `errors`.

>>> fingerprint({"a": 1, "b": [2, 3]}) == fingerprint({"b": [2, 3], "a": 1})
True
>>> len(fingerprint("x"))
16
>>> sorted(environment_manifest(3, argv=["x"])) == sorted(MANIFEST_KEYS)
True
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from longshort.errors import LongshortError

SCHEMA = 1
MANIFEST_KEYS = ("schema", "seed", "python", "platform", "cpu_count", "device", "packages", "git", "argv",
                 "started")
#: The distributions whose versions can change results.
PACKAGES = ("longshort", "torch", "transformers", "trl", "datasets", "accelerate", "peft", "math-verify",
            "latex2sympy2_extended", "sympy", "pydantic", "typer", "fastapi", "uvicorn", "vllm", "numpy",
            "matplotlib")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of `names` (missing distributions are left out)."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def git_state(repo: Path | None = None) -> dict[str, Any]:
    """{"revision", "dirty"} of the checkout holding this source file ({} when there is none)."""
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return {}
        st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                            capture_output=True, text=True, timeout=10)
        return {"revision": rev.stdout.strip(), "dirty": bool(st.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {}


def device_name() -> str:
    """"cpu" or "cuda: N x NAME" (never fails: torch may be absent or broken)."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except Exception:  # noqa: BLE001 - the manifest never fails a run
        pass
    return "cpu"


def environment_manifest(seed: int, *, argv: list[str] | None = None) -> dict[str, Any]:
    """The environment manifest of a run (schema in the module docstring)."""
    return {"schema": SCHEMA, "seed": seed, "python": sys.version.split()[0], "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "device": device_name(), "packages": package_versions(),
            "git": git_state(), "argv": list(sys.argv if argv is None else argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def fingerprint(obj: Any) -> str:
    """A 16-hex-digit hash of `obj`'s canonical JSON (key order does not matter)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} when it is missing or unreadable (markers, manifests)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def guard_run_dir(out: Path, *, resume: bool, marker: str, what: str = "run") -> None:
    """Refuse `out` when it is a file, when it holds a run (its `marker` file exists) and `resume`
    is off, or when it is a non-empty directory holding something other than a run."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LongshortError(f"{out} exists and is not a directory")
    if (out / marker).exists():
        if not resume:
            raise LongshortError(f"{out} already holds a {what}; pass --resume to continue it or choose another --out")
    elif out.exists() and any(out.iterdir()):
        raise LongshortError(f"{out} exists, is not empty and holds no {what}; choose another --out")
