"""What every results file of ``benchmarks/`` records about the machine and the code that ran, and
the one writer of those files."""
from __future__ import annotations

import json
import platform
import re
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
# The CPU features that change which kernels run: AVX-512, 8-bit dot products (VNNI), AMX.
FLAG_PREFIXES = ("avx512", "amx", "avx_vnni")


def _cpuinfo() -> List[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_model() -> str:
    name = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "")
    return name or platform.processor() or "unknown CPU"


def cpu_file_name() -> str:
    """This CPU as a results file's name: its model in lower-case words joined by dashes, with
    ``-amx`` or ``-avx512`` where it has them (the same model name covers CPUs with and without),
    e.g. ``intel-xeon-processor-amx``."""
    words = re.sub(r"\((r|tm)\)|\bcpu\b|@.*$", " ", cpu_model().lower())
    name = "-".join(re.findall(r"[a-z0-9]+", words)) or "unknown-cpu"
    flags = cpu_flags()
    extra = next((kind for kind in ("amx", "avx512") if any(f.startswith(kind) for f in flags)), "")
    return f"{name}-{extra}" if extra and not name.endswith(extra) else name


def cpu_flags() -> List[str]:
    """The flags of :data:`FLAG_PREFIXES` this CPU has, sorted (knet's own reading of /proc/cpuinfo)."""
    from knet.utils.device import cpu_flags as all_flags

    return sorted(flag for flag in all_flags() if flag.startswith(FLAG_PREFIXES))


def _version(distribution: str) -> Optional[str]:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()


def machine_info(threads: Optional[int] = None) -> Dict[str, Any]:
    """The CPU (model, the flags that matter), the threads, the versions and the commit (with
    whether the working tree had uncommitted changes)."""
    import torch

    import knet

    info: Dict[str, Any] = {"cpu": cpu_model(), "cpu_flags": cpu_flags()}
    if threads is not None:
        info["threads"] = threads
    info.update({"python": platform.python_version(), "torch": torch.__version__, "knet": knet.__version__,
                 "onnxruntime": _version("onnxruntime"), "glibc": "-".join(platform.libc_ver()),
                 "commit": _git("rev-parse", "--short", "HEAD"),
                 "uncommitted_changes": bool(_git("status", "--porcelain", "--untracked-files=no"))})
    return info


def save_results(path: Path, record: Dict[str, Any]) -> None:
    """Write a benchmark's ``record`` (its ``benchmark`` name, ``machine_info()``, settings and
    rows) as JSON to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=float) + "\n")
    print(f"wrote {path}")
