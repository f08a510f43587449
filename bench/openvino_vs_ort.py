"""OpenVINO vs ONNX Runtime on the CPU, per precision of porter's ONNX exports, and NNCF's INT8.

What porter's ``openvino`` backend costs or gains next to ONNX Runtime on the same files, and
whether porter's own INT8 (a QDQ ONNX calibrated by ``porter export``) holds up on OpenVINO
against the quantizer made for it (NNCF). One process, one model (a CIFAR-10 ResNet-9 trained by
porter: ``--run``, trained once into ``.cache/`` when not given), real CIFAR-10 test images:

- ``fp32``, ``fp16``, ``int8``: porter's ``model.<p>.onnx`` (exported through ``porter export``
  when the run lacks them), each on
  - ``ort``: ONNX Runtime's CPU provider (for INT8 the graph porter's runner hands it: the CPU
    form of ``port.engines.int8_cpu_graph``, on the kernels ``port.engines.int8_cpu`` picks);
  - ``ov``: porter's ``openvino`` backend (``OpenVinoRunner``: inference precision pinned to f32);
  - ``ov-default*``: the same file compiled with OpenVINO's *default* settings (no inference
    precision hint). On a CPU with AVX512_BF16 or AMX that computes in bfloat16 without saying
    so: the trap porter's f32 pin avoids. Flagged with ``*``; the table says what precision it
    really ran in (``INFERENCE_PRECISION_HINT`` of the compiled model, and its convolutions'
    runtime precision).
- ``nncf-int8``: ``nncf.quantize`` (default preset, ``subset_size`` = all calibration images) of
  OpenVINO's model of porter's FP32 ONNX, calibrated on exactly the images porter's INT8 export
  used (redrawn from the manifest's calibration record and checked against its sha256),
  preprocessed by porter's data loading; run on ``ov`` (f32 pinned) and ``ov-default*``.
- ``int8-cpu`` (a diagnosis): porter's INT8 in the CPU form its ORT runner uses (uint8 Q/DQ for
  tensors >= 0), on ``ov``. porter hands OpenVINO the symmetric file as written, whose int8
  activations after the poolings OpenVINO keeps as separate FakeQuantize layers.

Latency: batch 1, one thread (ORT: ``intra_op_num_threads=1``, one inter-op thread, spinning
off; OpenVINO: ``INFERENCE_NUM_THREADS=1``, ``NUM_STREAMS=1``, ``PERFORMANCE_HINT=LATENCY``).
Every round times every (variant, engine) once for ``--seconds`` and keeps its p50, in an order
that reverses every other round, so load from other processes hits them alike; the table gives
the median over rounds of those p50s and of the per-round ratios. Accuracy: top-1 on the whole
test split (batch 100, all cores), agreement of the predictions with ``fp32`` on ``ort``, and the
largest logit difference from it.

    .venv/bin/python bench/openvino_vs_ort.py [--run RUN] [--data DIR] [--rounds 20]
        [--seconds 0.2] [--eval-batch 100]

``--data`` defaults to ``/tmp/c10``, unpacked from ``../shared/data/cifar10-jpeg.tar.gz`` when
absent. Without that archive, or without NNCF (``make bench`` installs it), the script prints one
line saying what is missing and ends "skipped" (exit 0). The last two lines: the target (porter's
INT8 on its faster runtime at least as fast as NNCF's INT8 on OpenVINO, with at least its top-1
within the paired sampling noise), then the verdict: porter's INT8 vs NNCF's on OpenVINO, speed
ratio and top-1 difference in percentage points.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
DEFAULT_DATA = Path("/tmp/c10")  # unpacked outside the repository (never commit the images)
DEFAULT_RUN = REPO / ".cache" / "bench-openvino-vs-ort-run"  # .cache/ is ignored by git
# The default model: a half-width ResNet-9, 3 epochs on 10,000 training images (~5 min on 2 CPU
# cores). Accuracy is not the point; a trained model is (random weights would make top-1 and
# INT8 calibration meaningless).
TRAIN_FLAGS = ("--recipe", "quick", "--limit", "10000", "--val-limit", "1000", "--epochs", "3",
               "--width", "0.5")
PRECISIONS = ("fp32", "fp16", "int8")
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16")

Infer = Callable[[np.ndarray], np.ndarray]  # float32 NCHW batch -> logits
# threads (None: every core) -> (the inference function, the precision it computes in)
Maker = Callable[[int | None], tuple[Infer, str]]


@dataclass
class Engine:
    """One (variant, engine) pair: how to open it, and what it was seen to compute in."""

    variant: str
    engine: str
    make: Maker
    computes: str = "?"
    notes: list[str] = field(default_factory=list)

    def open(self, threads: int | None) -> Infer:
        """A fresh session/compiled model with ``threads`` threads; records ``computes``."""
        infer, self.computes = self.make(threads)
        return infer


# -- prerequisites ---------------------------------------------------------------------------
def _missing(args: argparse.Namespace) -> str | None:
    """What the bench lacks on this machine (one line with the fix), or None."""
    for module, fix in (("openvino", "install porter's openvino extra (make setup)"),
                        ("nncf", "make bench installs it (uv sync --frozen --extra dev "
                                 "--extra openvino --extra bench)")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed: {fix}"
    if args.data is None and not _has_splits(DEFAULT_DATA) and not ARCHIVE.is_file():
        return (f"no CIFAR-10 data: neither {DEFAULT_DATA}/{{train,test}} nor {ARCHIVE} "
                "exists (pass --data DIR, an ImageFolder tree with train/ and test/)")
    return None


def _has_splits(root: Path) -> bool:
    return (root / "train").is_dir() and ((root / "test").is_dir() or (root / "val").is_dir())


def _data_dir(args: argparse.Namespace) -> Path:
    """The ImageFolder tree to use: ``--data``, else /tmp/c10 (unpacked once from the archive)."""
    if args.data is not None:
        return args.data
    if not _has_splits(DEFAULT_DATA):
        from port.data.archive import extract_imagefolder_archive

        print(f"unpacking {ARCHIVE} into {DEFAULT_DATA} ...", flush=True)
        extract_imagefolder_archive(ARCHIVE, DEFAULT_DATA)
    return DEFAULT_DATA


def _porter(*args: str) -> None:
    """Run porter's CLI (its output stays visible: training and exports take minutes)."""
    subprocess.run([str(REPO / ".venv" / "bin" / "porter"), *args], check=True, cwd=REPO)


def _prepare_run(run: Path, data: Path, trainable: bool) -> dict[str, Path]:
    """The run's FP32/FP16/INT8 ONNX files, training (default run only) and exporting as needed."""
    from port.ground.vocab import REFERENCE_ID
    from port.manifest import Manifest

    manifest = Manifest(run)
    if manifest.get(REFERENCE_ID) is None:
        if not trainable:
            raise SystemExit(f"{run} has no trained model: pass a porter run (porter train "
                             "--run ...), or leave --run out to train the default one")
        print(f"training the default model into {run} (once; a few minutes) ...", flush=True)
        _porter("train", "--run", str(run), "--data", str(data), *TRAIN_FLAGS)
    paths = {}
    for precision in PRECISIONS:
        art = f"onnx-{precision}"
        record = manifest.get(art)
        if record is None or manifest.state(art).name != "fresh":
            extra = ["--calib-data", str(data)] if precision == "int8" else []
            _porter("export", "--run", str(run), "--to", "onnx", "--precision", precision,
                    "--data", str(data), *extra)
            record = manifest.get(art)
            assert record is not None, f"porter export recorded no {art}"
        paths[precision] = run / record.path
    return paths


def _ort_computes(run: Path, precision: str) -> str:
    """What ORT's CPU provider computes a porter ONNX in: FP16 as the export measured it."""
    from port.manifest import Manifest

    if precision == "int8":
        return "int8+fp32"
    record = Manifest(run).get(f"onnx-{precision}")
    ort_cpu = record.metrics.get("ort_cpu", {}) if record is not None else {}
    if precision == "fp16" and ort_cpu.get("fp16_compute_nodes") == 0:
        return "fp32 (fp16 weights)"  # no FP16 kernels on ORT's CPU provider for these ops
    return precision


# -- data ------------------------------------------------------------------------------------
def _calibration(run: Path, card: Any) -> tuple[np.ndarray, str]:
    """The exact images porter's INT8 export calibrated on, preprocessed as it did, and a line.

    Redrawn from the manifest's calibration record (spec, split, count, seed) the way
    ``ExportContext.calibration`` draws them, and refused unless the index list hashes to the
    recorded sha256.
    """
    from port.data.datasets import load_split, materialize, subset
    from port.data.spec import parse_data_spec
    from port.export.calibration import select_calibration
    from port.manifest import Manifest

    record = Manifest(run).get("onnx-int8")
    assert record is not None
    calib = record.params["calibration"]
    full = load_split(parse_data_spec(calib["spec"]), calib.get("split", "train"),
                      preprocess=card.preprocess)
    chosen = select_calibration(len(full), int(calib["count"]), int(calib["seed"]))
    if chosen.sha256 != calib["indices_sha256"]:
        raise SystemExit(f"the calibration images of {run / record.path} cannot be redrawn "
                         f"(index sha256 {chosen.sha256[:12]} != recorded "
                         f"{calib['indices_sha256'][:12]}): re-export the INT8 model")
    images, _ = materialize(subset(full, list(chosen.indices)))
    return images, (f"{len(images)} {calib.get('split', 'train')} images of {calib['spec']} "
                    f"(seed {calib['seed']}, index sha256 {chosen.sha256[:12]}, as recorded)")


def _test_set(data: Path, card: Any) -> tuple[np.ndarray, np.ndarray]:
    """The whole evaluation split, preprocessed with the model's card (float32 NCHW, labels)."""
    from port.data.datasets import load_split, materialize
    from port.data.spec import parse_data_spec
    from port.models.card import check_classes

    split = load_split(parse_data_spec(str(data)), "val", preprocess=card.preprocess)
    check_classes(card, split.classes, str(data))
    return materialize(split)


# -- engines ---------------------------------------------------------------------------------
def _ort_options(threads: int | None) -> Any:
    """Session options: ``threads`` intra-op threads (None: all cores), one inter-op thread,
    sequential, all graph optimisations, no spinning (it competes with the work on a shared CPU)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def _ort_engine(variant: str, path: Path, input_name: str, computes: str) -> Engine:
    """ONNX Runtime's CPU provider on the graph porter's runner would give it."""
    model: str | bytes = str(path)
    config: dict[str, str] = {}
    notes: list[str] = []
    if variant == "int8":
        from port.engines.int8_cpu import int8_weight_bits, ort_u8s8_saturates, resolve_int8_kernels
        from port.engines.int8_cpu_graph import cpu_form

        model, graph = cpu_form(str(path), f"porter's INT8 {path.name}")
        saturates = ort_u8s8_saturates()
        kernels = resolve_int8_kernels("auto", cpu_saturates=saturates,
                                       weight_bits=int8_weight_bits(path) if saturates else None)
        config = kernels.session_config()
        notes.append(f"int8 on ORT: the {graph.get('graph')} graph porter's runner gives the CPU "
                     f"provider, {kernels.kernels}")

    def make(threads: int | None) -> tuple[Infer, str]:
        import onnxruntime as ort

        opts = _ort_options(threads)
        for key, value in config.items():
            opts.add_session_config_entry(key, value)
        session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]

        def infer(x: np.ndarray) -> np.ndarray:
            # The plumbing OnnxRuntimeRunner._infer does, so both runtimes pay the same Python.
            return dict(zip(names, session.run(names, {input_name: x}), strict=True))[names[0]]

        return infer, computes

    return Engine(variant, "ort", make, notes=notes)


def _ov_engine(variant: str, path: Path) -> Engine:
    """porter's ``openvino`` backend (inference precision pinned to f32), through its runner."""

    def make(threads: int | None) -> tuple[Infer, str]:
        from port.engines import load

        runner = load(path, backend="openvino", threads=threads)
        runner.activate()
        feed_name, name = runner.input_metadata()[0].name, runner.logits_output()

        def infer(x: np.ndarray) -> np.ndarray:
            return runner.infer({feed_name: x}, check_inputs=False)[name]

        return infer, runner.details()["compute_precision"]

    return Engine(variant, "ov", make)


def _ov_default_engine(variant: str, path: Path) -> Engine:
    """The same file compiled with OpenVINO's defaults: no INFERENCE_PRECISION_HINT given."""

    def make(threads: int | None) -> tuple[Infer, str]:
        import openvino as ov

        # porter's runner has no "no hint" setting (that is its point), so compile here with
        # its other settings, and read what the compiled model really does as it does.
        from port.engines.openvino import _compute_layers, _type_name

        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        compiled = ov.Core().compile_model(str(path), "CPU", config)
        hint = _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        layers = _compute_layers(compiled)
        floats = [p for p in sorted(layers, key=lambda p: -layers[p]) if p != "int8"] or [hint]
        computes = "+".join((["int8"] if "int8" in layers else []) + floats)
        request = compiled.create_infer_request()
        names = [o.get_any_name() for o in compiled.outputs]

        def infer(x: np.ndarray) -> np.ndarray:
            result = request.infer({0: x}, share_inputs=True, share_outputs=False)
            return dict(zip(names, result.to_tuple(), strict=True))[names[0]]

        return infer, f"{computes} (hint {hint})"

    return Engine(variant, "ov-default*", make)


def _cpu_form_file(int8: Path, tmp: Path) -> Path:
    """porter's INT8 file in its CPU form (``int8_cpu_graph.cpu_form``), written to ``tmp``."""
    from port.engines.int8_cpu_graph import cpu_form

    form, record = cpu_form(str(int8), f"porter's INT8 {int8.name}")
    assert isinstance(form, bytes), record  # a symmetric QDQ graph always has pairs to rewrite
    out = tmp / "model.int8-cpu-form.onnx"
    out.write_bytes(form)
    return out


def _nncf_ir(fp32: Path, calib: np.ndarray, out: Path) -> tuple[Path, float]:
    """``nncf.quantize`` of OpenVINO's model of ``fp32`` on ``calib`` (one image per item),
    saved as an IR at ``out``; returns the path and the seconds it took."""
    import logging

    import nncf
    import openvino as ov

    logging.getLogger("nncf").setLevel(logging.WARNING)
    # NNCF imports torch's C++ extension helper, which warns about CUDA on a CPU-only machine.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    model = ov.Core().read_model(str(fp32))
    dataset = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))])
    start = time.perf_counter()
    quantized = nncf.quantize(model, dataset, subset_size=len(calib))
    seconds = time.perf_counter() - start
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return out, seconds


# -- measurement -----------------------------------------------------------------------------
def _p50_ms(infer: Infer, x: np.ndarray, seconds: float, min_runs: int) -> float:
    """p50 in ms of ``infer(x)`` over at least ``min_runs`` runs and ``seconds``."""
    clock = time.perf_counter_ns
    times: list[int] = []
    deadline = clock() + int(seconds * 1e9)
    while len(times) < min_runs or clock() < deadline:
        start = clock()
        infer(x)
        times.append(clock() - start)
    return float(np.percentile(np.asarray(times) / 1e6, 50))


def _latency(fns: dict[tuple[str, str], Infer], x: np.ndarray, args: argparse.Namespace
             ) -> dict[tuple[str, str], list[float]]:
    """Per-round p50 (ms) of each function, interleaved round by round."""
    for fn in fns.values():  # warm-up: first runs allocate and pack weights
        for _ in range(args.warmup):
            fn(x)
    p50s: dict[tuple[str, str], list[float]] = {k: [] for k in fns}
    order = list(fns)
    for r in range(args.rounds):
        for key in order if r % 2 == 0 else order[::-1]:
            p50s[key].append(_p50_ms(fns[key], x, args.seconds, args.min_runs))
    return p50s


def _logits(infer: Infer, images: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([np.asarray(infer(images[i:i + batch]), dtype=np.float32)
                           for i in range(0, len(images), batch)])


def _ratio(p50s: dict[tuple[str, str], list[float]], num: tuple[str, str],
           den: tuple[str, str]) -> float | None:
    """Median over rounds of p50[num] / p50[den] (None when either was not timed)."""
    if num not in p50s or den not in p50s:
        return None
    return statistics.median(a / b for a, b in zip(p50s[num], p50s[den], strict=True))


def _cpu_line() -> str:
    from port.ground.cpu import cpu_info

    info = cpu_info()
    have = set(info["flags"])
    flags = " ".join(f"{f}{'+' if f in have else '-'}" for f in CPU_FLAGS)
    return f"CPU: {info['model']} ({info['arch']}, {os.cpu_count()} cores); {flags}"


def _versions() -> str:
    from port.hostinfo import dist_version

    return "; ".join(f"{d} {dist_version(d)}" for d in ("onnxruntime", "openvino", "nncf"))


def _fmt(value: float | None, spec: str, width: int) -> str:
    """``value`` formatted, or a dash where there is none."""
    return f"{'-':>{width}s}" if value is None else f"{value:{width}{spec}}"


def main() -> None:
    """Check prerequisites, prepare the run, quantize with NNCF, time, score, print, verdict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None,
                        help=f"porter run with a trained model (default: {DEFAULT_RUN}, "
                             "trained once)")
    parser.add_argument("--data", type=Path, default=None,
                        help=f"CIFAR-10 ImageFolder tree (train/, test/); default {DEFAULT_DATA}")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds")
    parser.add_argument("--seconds", type=float, default=0.2,
                        help="min timed seconds per (variant, engine) per round")
    parser.add_argument("--min-runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--eval-batch", type=int, default=100, help="batch of the accuracy pass")
    args = parser.parse_args()
    if args.data is not None and not _has_splits(args.data):
        parser.error(f"--data {args.data} is not an ImageFolder tree with train/ and test/")

    missing = _missing(args)
    if missing is not None:
        print(f"openvino_vs_ort: {missing}; skipped")
        return
    started = time.perf_counter()
    print(_cpu_line())
    print(_versions())

    data = _data_dir(args)
    run = args.run or DEFAULT_RUN
    paths = _prepare_run(run, data, trainable=args.run is None)

    import torch

    from port.models.card_codec import read_card

    torch.set_num_threads(os.cpu_count() or 1)  # preprocessing only; timing never runs torch
    card = read_card(paths["fp32"])
    assert card is not None, "porter's FP32 ONNX carries its ModelCard"
    calib, calib_line = _calibration(run, card)
    images, labels = _test_set(data, card)

    with tempfile.TemporaryDirectory(prefix="porter-bench-ov-") as tmp:
        nncf_path, nncf_seconds = _nncf_ir(paths["fp32"], calib, Path(tmp) / "nncf-int8.xml")
        engines: list[Engine] = []
        for precision in PRECISIONS:
            engines += [_ort_engine(precision, paths[precision], card.input_name,
                                    _ort_computes(run, precision)),
                        _ov_engine(precision, paths[precision]),
                        _ov_default_engine(precision, paths[precision])]
        # porter's INT8 file is the symmetric graph TensorRT builds; the CPU form porter hands
        # ORT (uint8 for non-negative tensors) is measured on OpenVINO too, as a diagnosis.
        engines.append(_ov_engine("int8-cpu", _cpu_form_file(paths["int8"], Path(tmp))))
        engines += [_ov_engine("nncf-int8", nncf_path),
                    _ov_default_engine("nncf-int8", nncf_path)]

        # Accuracy first (all cores, batched), then the one-thread latency functions.
        logits = {(e.variant, e.engine): _logits(e.open(None), images, args.eval_batch)
                  for e in engines}
        fns = {(e.variant, e.engine): e.open(1) for e in engines}
        p50s = _latency(fns, np.ascontiguousarray(images[:1]), args)

    print(f"\nmodel: {card.arch} from {run}; top-1 on {len(labels)} test images of {data} "
          f"(batch {args.eval_batch}, all cores)")
    print(f"INT8 calibration (porter and NNCF alike): {calib_line}; nncf.quantize took "
          f"{nncf_seconds:.1f} s")
    print(f"latency: batch 1, 1 thread, {args.rounds} interleaved rounds of >= {args.seconds} s "
          "per engine (p50 ms: median of per-round p50s; /ORT: median of per-round ratios)")
    top1 = _report(engines, logits, labels, p50s)
    speed = _ratio(p50s, ("int8", "ov"), ("nncf-int8", "ov"))
    form = _ratio(p50s, ("int8-cpu", "ov"), ("nncf-int8", "ov"))
    on_ort = _ratio(p50s, ("int8", "ov"), ("int8", "ort"))
    assert speed is not None and form is not None and on_ort is not None
    gap = (top1["int8", "ov"] - top1["nncf-int8", "ov"]) * 100
    # The target: porter's INT8 on whichever runtime runs it faster is at least as fast
    # as NNCF's INT8 on OpenVINO and keeps at least its top-1.
    best = "ort" if on_ort > 1 else "ov"
    best_speed = _ratio(p50s, ("int8", best), ("nncf-int8", "ov"))
    assert best_speed is not None
    best_gap = (top1["int8", best] - top1["nncf-int8", "ov"]) * 100
    # "At least its top-1" within sampling noise: only images one model gets right and the other
    # wrong move the difference; 3 standard deviations of the net change of d such images among
    # n is 3 * sqrt(d) / n (McNemar).
    right = {k: logits[k].argmax(1) == labels for k in (("int8", best), ("nncf-int8", "ov"))}
    discordant = int(np.sum(right["int8", best] != right["nncf-int8", "ov"]))
    noise_pp = 300 * discordant ** 0.5 / len(labels)
    met = best_speed <= 1.0 and best_gap >= -noise_pp
    print(f"\nran in {time.perf_counter() - started:.0f} s")
    print(f"target (porter INT8 on its faster runtime at least as fast as NNCF's and at least its "
          f"top-1): {'met' if met else 'NOT met'}: on {best.upper()} it takes {best_speed:.2f}x "
          f"NNCF INT8's time, top-1 {best_gap:+.2f} pp (noise: +-{noise_pp:.2f} pp, {discordant} "
          "images right in one and wrong in the other)")
    print(f"verdict: porter INT8 on OpenVINO (f32 pin) takes {speed:.2f}x NNCF INT8's time at "
          f"batch 1 ({_speed_word(speed)}; its CPU form {form:.2f}x), top-1 "
          f"{top1['int8', 'ov']:.2%} vs NNCF {top1['nncf-int8', 'ov']:.2%} ({gap:+.2f} pp); "
          f"porter INT8 on OpenVINO takes {on_ort:.2f}x its time on ORT")


def _speed_word(ratio: float) -> str:
    """A time ratio in words (within 5% is on par)."""
    return "slower" if ratio > 1.05 else "faster" if ratio < 0.95 else "on par"

def _report(engines: list[Engine], logits: dict[tuple[str, str], np.ndarray],
            labels: np.ndarray, p50s: dict[tuple[str, str], list[float]]
            ) -> dict[tuple[str, str], float]:
    """Print one row per (variant, engine); return top-1 per (variant, engine)."""
    ref = logits["fp32", "ort"]
    ref_pred = ref.argmax(1)
    top1 = {k: float(np.mean(v.argmax(1) == labels)) for k, v in logits.items()}
    print(f"\n  {'variant':10s} {'engine':12s} {'computes':20s} {'p50 ms':>7s} {'/ORT':>6s} "
          f"{'top-1':>7s} {'agree':>8s} {'max|d|':>8s} {'mean|d|':>8s}")
    for e in engines:
        key = (e.variant, e.engine)
        # NNCF's model has no ONNX: its ratio is to porter's INT8 on ORT.
        ort_key = ("int8" if "int8" in e.variant else e.variant, "ort")
        ratio = _ratio(p50s, key, ort_key)
        agree = float(np.mean(logits[key].argmax(1) == ref_pred))
        diff = np.abs(logits[key] - ref)
        flag = ("  <- not f32: OpenVINO's own choice" if e.engine == "ov-default*"
                and "hint f32" not in e.computes else "")
        print(f"  {e.variant:10s} {e.engine:12s} {e.computes:20s} "
              f"{statistics.median(p50s[key]):7.3f} {_fmt(ratio, '.2f', 6)} {top1[key]:7.2%} "
              f"{agree:8.2%} {diff.max():8.1e} {diff.mean():8.1e}{flag}")
    print("  * OpenVINO's default compile (no inference precision hint), never what porter runs:"
          " on a CPU with avx512_bf16/AMX it computes in bf16.\n"
          "  computes: what ran (OV: the compiled model's hint and its convolutions' runtime "
          "precision); agree and max|d|: predictions and logits vs fp32 on ORT; /ORT: vs the "
          "same file on ORT (int8-cpu, nncf-int8: vs porter's int8 on ORT); int8-cpu: porter's "
          "INT8 in the CPU form its ORT runner uses (uint8 for tensors >= 0), on OpenVINO")
    for e in engines:
        for note in e.notes:
            print(f"  note: {note}")
    return top1

if __name__ == "__main__":
    main()
