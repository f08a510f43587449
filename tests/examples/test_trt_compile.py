"""The TensorRT C++ example (examples/cpp/main.cpp) compiles against TensorRT 10.16 and 11.1.

TensorRT's libraries cannot be installed on these machines, so the check is ``-fsyntax-only``
with the vendored TensorRT headers (../shared/vendor) and the CUDA 13 runtime headers of the dev
dependencies (``nvidia-cuda-runtime`` + ``nvidia-cuda-crt``, both under ``nvidia/cu13/include``).
"""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from tests.e2e.helpers import REPO

VENDOR = REPO.parent / "shared" / "vendor"
EXAMPLE = REPO / "examples" / "cpp" / "main.cpp"


def cuda_include() -> Path:
    """The CUDA runtime headers the dev dependencies install (skip when they are absent)."""
    include = Path(sysconfig.get_paths()["purelib"]) / "nvidia" / "cu13" / "include"
    if not (include / "cuda_runtime_api.h").is_file() or not (
            include / "crt" / "host_defines.h").is_file():
        pytest.skip(f"CUDA runtime headers not found under {include}: `uv sync --extra dev` "
                    "installs nvidia-cuda-runtime and nvidia-cuda-crt")
    return include


@pytest.mark.parametrize("version", ["10.16", "11.1"])
def test_tensorrt_example_compiles(version: str) -> None:
    headers = VENDOR / f"tensorrt-{version}-include"
    if not (headers / "NvInferRuntime.h").is_file():
        pytest.skip(f"TensorRT {version} headers not found in {headers} (see ../shared/vendor)")
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler (g++) on this machine")
    # -isystem: the libraries' own headers warn (unused parameters, legacy plugin enums); the
    # app's warnings, deprecated TensorRT calls included, are errors.
    done = subprocess.run(
        [compiler, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
         "-isystem", str(headers), "-isystem", str(cuda_include()), str(EXAMPLE)],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
