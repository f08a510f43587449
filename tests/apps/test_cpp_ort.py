"""The C++ ONNX Runtime app (examples/cpp/ort) built with CMake and run on real CIFAR-10 images:
its logits and top-5 match port.load(...).predict on the same JPEGs.

ONNX Runtime's C API headers come from ../shared/vendor, the library from the `onnxruntime`
wheel in this environment. The build is cached in .cache/ under a hash of the sources, the
headers and the library, so a second session (or `make test` after a test run) reuses it.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from PIL import Image

import port
from tests.apps.conftest import AppRun
from tests.e2e.helpers import REPO

pytestmark = pytest.mark.slow
SOURCE = REPO / "examples" / "cpp" / "ort"
HEADERS = REPO.parent / "shared" / "vendor" / "onnxruntime-1.29-c-api"


def _ort_library() -> Path:
    found = sorted((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so.*"))
    if not found:
        pytest.skip("the onnxruntime wheel has no libonnxruntime.so.* (not a Linux wheel?)")
    return found[-1]


@pytest.fixture(scope="session")
def porter_ort() -> Path:
    """The app, configured and built by CMake as the README says (cached)."""
    if not (HEADERS / "onnxruntime_c_api.h").is_file():
        pytest.skip(f"ONNX Runtime C API headers not found in {HEADERS}")
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("cmake and a C++ compiler are needed to build examples/cpp/ort")
    library = _ort_library()
    digest = hashlib.sha256()
    for part in (*sorted(SOURCE.iterdir()), *sorted(HEADERS.iterdir())):
        digest.update(part.name.encode() + part.read_bytes())
    digest.update(str(library).encode())
    cache = REPO / ".cache" / f"cpp-ort-{digest.hexdigest()[:16]}"
    binary = cache / "build" / "porter_ort"
    if binary.is_file():
        return binary
    lib = cache / "lib"  # the SONAME and the link name, as the README's commands make them
    lib.mkdir(parents=True, exist_ok=True)
    for name in ("libonnxruntime.so", "libonnxruntime.so.1"):
        (lib / name).unlink(missing_ok=True)
        (lib / name).symlink_to(library)
    for step in (["cmake", "-S", str(SOURCE), "-B", str(cache / "build"),
                  "-DCMAKE_BUILD_TYPE=Release", f"-DORT_INCLUDE_DIR={HEADERS}",
                  f"-DORT_LIB_DIR={lib}", "-DCMAKE_CXX_FLAGS=-Werror"],
                 ["cmake", "--build", str(cache / "build")]):
        done = subprocess.run(step, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return binary


def test_cpp_logits_match_port_load(porter_ort: Path, app_run: AppRun, tmp_path: Path) -> None:
    # The app reads binary PPM: the same pixels Pillow decodes from the JPEGs (docs: README).
    ppms = []
    for i, jpeg in enumerate(app_run.images):
        ppm = tmp_path / f"{i:02d}-{jpeg.parent.name}.ppm"
        Image.open(jpeg).convert("RGB").save(ppm)
        ppms.append(ppm)
    done = subprocess.run([str(porter_ort), str(app_run.onnx), *map(str, ppms), "--logits"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("logits ")]
    assert [r[1] for r in rows] == [str(p) for p in ppms]
    cpp = np.array([[float(v) for v in r[2:]] for r in rows], dtype=np.float32)
    with port.load(app_run.onnx) as predictor:
        python = predictor.logits(app_run.images)
        predictions = predictor.predict(app_run.images, top_k=5)
    # Same pixels, same graph, same ONNX Runtime: only batch-1 vs batched kernels may differ.
    np.testing.assert_allclose(cpp, python, rtol=1e-5, atol=1e-5)
    blocks = done.stdout.split("logits ")
    for block, prediction in zip(blocks, predictions, strict=False):
        names = [line.split(None, 1)[1] for line in block.splitlines() if line.startswith("  ")]
        assert names == list(prediction.classes)


# (width, height) of the test images: down- and upscaled, both orientations, and the shapes
# where Pillow runs the vertical pass first (40x90, 33x129 -> shorter side 32) or the horizontal
# one first (64x48, 129x33, 17x20 upscaled, 224x298 shrunk 7x): the two orders round
# differently, so a wrong order shows up as different pixels.
SIZES = ((64, 48), (40, 90), (17, 20), (129, 33), (33, 129), (224, 298), (32, 32))


def test_cpp_resize_matches_pillow_for_any_size(porter_ort: Path, app_run: AppRun,
                                                tmp_path: Path) -> None:
    # Real CIFAR-10 JPEGs brought to odd sizes (bicubic, so the pixels are not a plain
    # repetition), written as PPM: the app resizes them to the model's 32 px like Pillow does.
    ppms = []
    for i, (width, height) in enumerate(SIZES):
        source = Image.open(app_run.images[(3 * i) % len(app_run.images)]).convert("RGB")
        ppm = tmp_path / f"{width}x{height}.ppm"
        source.resize((width, height), Image.Resampling.BICUBIC).save(ppm)
        ppms.append(ppm)
    done = subprocess.run([str(porter_ort), str(app_run.onnx), *map(str, ppms), "--logits"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("logits ")]
    assert [r[1] for r in rows] == [str(p) for p in ppms]
    cpp = np.array([[float(v) for v in r[2:]] for r in rows], dtype=np.float32)
    with port.load(app_run.onnx) as predictor:
        python = predictor.logits(ppms)
    np.testing.assert_allclose(cpp, python, rtol=1e-5, atol=1e-5)


def test_cpp_app_refuses_what_it_cannot_preprocess(porter_ort: Path, app_run: AppRun,
                                                   tmp_path: Path) -> None:
    not_ppm = tmp_path / "x.ppm"
    not_ppm.write_text("P3\n1 1\n255\n0 0 0\n")
    done = subprocess.run([str(porter_ort), str(app_run.onnx), str(not_ppm)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "not a binary PPM" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
