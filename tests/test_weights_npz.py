"""Framework-neutral weights (issue 8, item 5): `porter weights export` and `porter import W.npz`.

A narrow resnet18_cifar is imported into a run through the real CLI (in-process), its weights
exported as ``porter-weights/1`` and read back into a new run: every tensor must come back bit
for bit and the logits must be identical. The C++17 reader of examples/cpp/weights is built with
CMake and run on the same file: its CRC-32 and sums must match NumPy's for every tensor.
Hostile and inconsistent files are refused with one line.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from port.models.checkpoint import load_model
from port.models.registry import create_model
from port.models.weights_npz import INDEX_KEY
from tests.e2e.helpers import REPO
from tests.inprocess import cli, refused

ARCH = ["--arch", "resnet18_cifar", "--width", "0.125", "--data", "synthetic"]
CPP_SOURCE = REPO / "examples" / "cpp" / "weights"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A run with a seeded narrow ResNet as reference, and its weights export: (run, npz, index)."""
    base = tmp_path_factory.mktemp("weights")
    torch.manual_seed(3)
    model = create_model("resnet18_cifar", 10, width=0.125)
    # Non-trivial BatchNorm statistics, so the buffers are checked too (not zeros and ones).
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if "running" in name:
                buf.uniform_(0.5, 1.5)
    torch.save(model.state_dict(), base / "sd.pt")
    run = base / "run"
    assert cli("import", base / "sd.pt", "--run", run, *ARCH).code == 0
    done = cli("weights", "export", "--run", run, "--json")
    assert done.code == 0, done.err
    return run, run / "model.weights.npz", json.loads(done.out)


def test_index_describes_every_tensor_in_execution_order(exported: tuple[Path, Path, dict]) -> None:
    run, npz, index = exported
    model, card, _ = load_model(run / "model.pt")
    state = model.state_dict()
    assert {t["name"] for t in index["tensors"]} == set(state)
    # Tensors follow the layer order (every module here runs, so each has a place).
    places = [t["layer_order"] for t in index["tensors"]]
    assert None not in places and places == sorted(places)
    by_name = {t["name"]: t for t in index["tensors"]}
    assert by_name["conv1.weight"]["layout"] == "OIHW"
    assert by_name["fc.weight"]["layout"].startswith("[out, in]")
    assert by_name["bn1.running_var"]["kind"] == "buffer"
    assert by_name["bn1.num_batches_tracked"]["dtype"] == "int64"
    assert by_name["bn1.num_batches_tracked"]["shape"] == []
    # The forward pass order: the stem first, the classifier last, blocks in between in order.
    order = [layer["module"] for layer in index["layers"]]
    assert order[0] == "conv1" and order[-1] == "fc"
    assert order.index("layer1.0.conv1") < order.index("layer1.0.bn1") < order.index(
        "layer1.0.conv2") < order.index("layer2.0.conv1")
    assert index["layers"][0]["config"]["stride"] == [1, 1]
    assert index["card"] == card.to_dict() and index["input_shape"] == [1, 3, 32, 32]
    # The index inside the file is the one printed, and the file's tensors are STORED.
    with np.load(npz, allow_pickle=False) as f:
        assert json.loads(f[INDEX_KEY].tobytes().decode()) == index
    with zipfile.ZipFile(npz) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    # Recorded, with the reference as its parent.
    records = {r["id"]: r for r in json.loads((run / "manifest.json").read_text())["artifacts"]}
    assert records["weights-npz"]["kind"] == "weights"
    assert [p["id"] for p in records["weights-npz"]["parents"]] == ["model"]
    assert cli("status", "--run", run).code == 0


def test_round_trip_is_bit_exact(exported: tuple[Path, Path, dict], tmp_path: Path) -> None:
    run, npz, _ = exported
    back = tmp_path / "back"
    done = cli("import", npz, "--run", back, "--arch", "resnet18_cifar")
    assert done.code == 0, done.err
    a, card_a, _ = load_model(run / "model.pt")
    b, card_b, _ = load_model(back / "model.pt")
    assert card_a.to_dict() == card_b.to_dict()
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_out_outside_the_run_is_a_recorded_copy(exported: tuple[Path, Path, dict],
                                                tmp_path: Path) -> None:
    run, npz, _ = exported
    copy = tmp_path / "elsewhere" / "w.npz"
    assert cli("weights", "export", "--run", run, "--out", copy).code == 0
    assert copy.read_bytes() == npz.read_bytes()
    status = json.loads(cli("status", "--run", run, "--json").out)
    assert {r["id"]: r["state"] for r in status}["weights-npz"] == "fresh"
    copy.write_bytes(copy.read_bytes()[:-10])  # an edited copy: the record says so
    status = json.loads(cli("status", "--run", run, "--json").out)
    assert {r["id"]: r["state"] for r in status}["weights-npz"] == "modified"
    refused(cli("weights", "export", "--run", run, "--format", "safetensors"), "--format")
    refused(cli("weights", "export", "--run", run, "--out", tmp_path / "w.bin"),
            "must end with .npz")
    # A run whose reference is an ONNX file has no PyTorch tensors to export.
    from port.manifest import Manifest

    onnx_run = tmp_path / "onnx-run"
    onnx_run.mkdir()
    (onnx_run / "model.onnx").write_bytes(b"an imported graph")
    Manifest(onnx_run).record("import", "onnx", onnx_run / "model.onnx", id="model")
    refused(cli("weights", "export", "--run", onnx_run), "is not a PyTorch model")


def _savez(path: Path, **arrays: np.ndarray) -> Path:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def test_hostile_and_inconsistent_files_are_refused(exported: tuple[Path, Path, dict],
                                                    tmp_path: Path) -> None:
    _, npz, _ = exported
    with np.load(npz, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    run = tmp_path / "r"
    imp = ("--run", run, "--arch", "resnet18_cifar")
    # Object arrays need pickle: refused before anything runs.
    bad = _savez(tmp_path / "obj.npz", **{**arrays, "conv1.weight": np.array([{"x": 1}], object)})
    refused(cli("import", bad, *imp), "object arrays", "pickle")
    # A string array is no weight.
    bad = _savez(tmp_path / "str.npz", **{**arrays, "conv1.weight": np.array(["a", "b"])})
    refused(cli("import", bad, *imp), "'conv1.weight'", "dtype <U1")
    # The index says one shape, the array has another.
    shaped = {**arrays, "fc.bias": arrays["fc.bias"][:5]}
    refused(cli("import", _savez(tmp_path / "shape.npz", **shaped), *imp),
            "disagrees with its index", "'fc.bias' is [5]")
    # An array the index does not list.
    extra = {**arrays, "head.weight": np.zeros(3, np.float32)}
    refused(cli("import", _savez(tmp_path / "extra.npz", **extra), *imp),
            "1 present but unlisted", "head.weight")
    # A plain np.savez of a state_dict (no index) with a renamed layer: the state_dict check's
    # missing/unexpected keys with the closest names and shapes, and the --key-map hint.
    plain = {("head." + k[3:] if k.startswith("fc.") else k): v for k, v in arrays.items()
             if k != INDEX_KEY}
    line = refused(cli("import", _savez(tmp_path / "plain.npz", **plain), *imp, "--width",
                       "0.125", "--data", "synthetic"),
                   "missing fc.weight [10, 64]", "closest in the file: head.weight [10, 64]")
    assert "--key-map head.=fc." in line
    # ... and with the rename it imports (no index: the card comes from the flags).
    assert cli("import", tmp_path / "plain.npz", *imp, "--width", "0.125", "--data",
               "synthetic", "--key-map", "head.=fc.").code == 0
    # Flags that contradict the file's own card, and flags that do not apply.
    refused(cli("import", npz, "--run", tmp_path / "r2", "--arch", "resnet50"),
            "--arch resnet50 contradicts")
    refused(cli("import", npz, "--run", tmp_path / "r4", "--weights-key", "model"),
            "--weights-key")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04" + bytes(100))
    refused(cli("import", tmp_path / "junk.npz", "--run", tmp_path / "r3", "--arch",
                "resnet18_cifar"), "junk.npz")
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()


@pytest.fixture(scope="module")
def porter_weights() -> Path:
    """examples/cpp/weights built by CMake as its README says (cached by source hash)."""
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("cmake and a C++ compiler are needed to build examples/cpp/weights")
    digest = hashlib.sha256()
    for part in sorted(CPP_SOURCE.iterdir()):
        digest.update(part.name.encode() + part.read_bytes())
    build = REPO / ".cache" / f"cpp-weights-{digest.hexdigest()[:16]}"
    binary = build / "porter_weights"
    if binary.is_file():
        return binary
    for step in (["cmake", "-S", str(CPP_SOURCE), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                  "-DCMAKE_CXX_FLAGS=-Werror"], ["cmake", "--build", str(build)]):
        done = subprocess.run(step, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return binary


def test_cpp_reader_lists_every_tensor_with_numpy_checksums(
        exported: tuple[Path, Path, dict], porter_weights: Path, tmp_path: Path) -> None:
    _, npz, index = exported
    done = subprocess.run([str(porter_weights), str(npz)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    rows = {}
    for line in done.stdout.splitlines():
        if line.startswith("tensor "):
            _, name, dtype, shape, crc, total = line.split()
            rows[name] = (dtype, shape, crc.removeprefix("crc32="), float(total[4:]))
    with np.load(npz, allow_pickle=False) as f:
        assert set(rows) == set(f.files) - {INDEX_KEY}
        for name, (dtype, shape, crc, total) in rows.items():
            array = f[name]
            assert dtype == array.dtype.name
            assert shape == "[" + ",".join(map(str, array.shape)) + "]"
            assert crc == f"{zlib.crc32(array.tobytes()):08x}", name
            assert total == pytest.approx(float(array.astype(np.float64).sum()), rel=1e-9,
                                          abs=1e-9), name
    text = subprocess.run([str(porter_weights), str(npz), "--index"], capture_output=True,
                          text=True, timeout=60, check=True).stdout
    assert json.loads(text) == index
    # A damaged byte inside a tensor: the zip's CRC-32 check refuses it.
    damaged = tmp_path / "damaged.npz"
    data = bytearray(npz.read_bytes())
    data[len(data) // 3] ^= 0xFF
    damaged.write_bytes(bytes(data))
    done = subprocess.run([str(porter_weights), str(damaged)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "porter_weights: error:" in done.stderr
