"""``porter doctor``: what this machine offers, and which ``--to/--precision`` targets work here.

:func:`probe` never crashes and stays cheap: it is ``port.hostinfo.probe_machine`` (the one
module that probes the machine, shared with the manifest's environment record) plus ONNX
Runtime's int8 kernels measured on this CPU.

:func:`targets` derives the verdicts from a probe dict, so it is tested with hand-made probes.
The GPU rules follow TensorRT's support matrix and release notes: TensorRT 10.0-10.4 run on
compute capability 7.0 (Volta) and newer, 10.5 and later (and 11.x) on 7.5 (Turing) and newer;
every supported GPU has FP16 and INT8 (INT8 tensor cores from 7.5). TensorRT 11 builds
strongly typed networks only, so INT8 comes from a QDQ ONNX there (no ``--calibrator``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from port.formats import Backend, Format, export_formats
from port.ground.dists import has_module, parse_version
from port.hostinfo import probe_machine


@dataclass
class Target:
    """One ``porter export --to X --precision Y`` and whether it works on this machine."""

    to: str
    precision: str
    available: bool
    why: str


# --------------------------------------------------------------------------------------------
# probe
# --------------------------------------------------------------------------------------------
def _probe_cpu(ort_ok: bool) -> dict[str, Any]:
    """The CPU (model, int8 flags) and, with ONNX Runtime, whether its int8 kernels saturate."""
    from port.ground.cpu import cpu_info

    info: dict[str, Any] = dict(cpu_info())
    info["ort_int8_saturates"] = None
    if ort_ok:
        from port.engines.int8_cpu import ort_u8s8_saturates

        info["ort_int8_saturates"] = ort_u8s8_saturates()
    return info


def probe() -> dict[str, Any]:
    """What this machine offers (``hostinfo.probe_machine``) plus the CPU, with ONNX Runtime's
    int8 kernels measured on it; plain data (JSON-serialisable), never raises."""
    found = probe_machine()
    found["cpu"] = _probe_cpu(bool(found["onnxruntime"].get("version")))
    return found


# --------------------------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------------------------
def trt_min_cc(trt_version: str | None) -> tuple[int, int]:
    """Lowest compute capability a TensorRT version supports (Volta dropped in 10.5)."""
    return (7, 0) if parse_version(trt_version)[:2] < (10, 5) else (7, 5)


def _cc(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return (int(major), int(minor or 0))


def trt_missing(found: dict[str, Any]) -> list[str]:
    """What stops ``--to trt`` here, one short phrase each; empty when nothing does."""
    missing = []
    trt = found.get("tensorrt", {})
    if not trt.get("installed"):
        missing.append("TensorRT (not installed)")
    elif trt.get("error"):
        missing.append(f"a working TensorRT (import fails: {trt['error']})")
    elif parse_version(trt.get("version"))[:1] < (10,):
        missing.append(f"TensorRT 10 or 11 (found {trt.get('version')})")
    if not found.get("pycuda", {}).get("installed"):
        missing.append("pycuda (not installed)")
    devices = found.get("torch", {}).get("devices", [])
    if not devices:
        missing.append("a CUDA GPU (none found)")
    elif trt.get("installed") and not trt.get("error"):
        need = trt_min_cc(trt.get("version"))
        if not any(_cc(d["compute_capability"]) >= need for d in devices):
            best = max(d["compute_capability"] for d in devices)
            missing.append(
                f"a GPU with compute capability >= {need[0]}.{need[1]} for TensorRT "
                f"{trt.get('version')} (best here: {best})"
            )
    return missing


def _onnx_targets(found: dict[str, Any], fmt: Format) -> list[Target]:
    out: list[Target] = []
    ort_info = found.get("onnxruntime", {})
    providers = ort_info.get("providers", [])
    have_ort = bool(ort_info.get("installed"))
    gpu_ep = "CUDAExecutionProvider" in providers
    for precision in fmt.precisions:
        if not found.get("onnx", {}).get("installed", True):
            out.append(Target(fmt.name, precision, False,
                              "needs the onnx package (not installed)"))
            continue
        if not have_ort:
            why = "exported on the CPU; ONNX Runtime is missing, so it cannot be checked here"
        elif precision == "int8":
            why = "QDQ model from ONNX Runtime's static quantizer; checked on CPUExecutionProvider"
            if found.get("cpu", {}).get("ort_int8_saturates"):
                why += (" with its exact U8U8 kernels (this CPU has no VNNI: the default ones "
                        "saturate)")
        elif precision == "fp16":
            why = "FP16 graph with FP32 I/O, pre-flight on the CPU; " + (
                "runs on CUDAExecutionProvider" if gpu_ep
                else "`porter evaluate` says where it could run (no GPU provider here)"
            )
        else:
            why = "checked on " + ("CUDAExecutionProvider" if gpu_ep else "CPUExecutionProvider")
        out.append(Target(fmt.name, precision, True, why))
    return out


def _trt_targets(found: dict[str, Any], fmt: Format) -> list[Target]:
    out: list[Target] = []
    missing = trt_missing(found)
    trt_version = found.get("tensorrt", {}).get("version")
    major = (parse_version(trt_version) or (0,))[0]
    quantizer = "modelopt" if found.get("modelopt", {}).get("installed") else "onnxruntime"
    for precision in fmt.precisions:
        if missing:
            out.append(Target(fmt.name, precision, False, "needs " + ", ".join(missing)))
            continue
        if precision == "fp32":
            why = f"TensorRT {trt_version}, strongly typed FP32 (TF32 off)"
        elif precision == "fp16":
            why = (f"TensorRT {trt_version}: strongly typed from the FP16 ONNX"
                   + (", or classic BuilderFlag.FP16" if major == 10 else ""))
        else:
            why = (f"TensorRT {trt_version}: from the QDQ ONNX ({quantizer} quantizer)"
                   + (", or --calibrator entropy|minmax" if major == 10
                      else "; --calibrator was removed in TensorRT 11"))
        out.append(Target(fmt.name, precision, True, why))
    return out


def _generic_targets(found: dict[str, Any], fmt: Format) -> list[Target]:
    """A format without its own rules: available when the modules its runner needs import."""
    absent = [module for module, _ in fmt.needs if not has_module(module.split(".")[0])]
    why = ("needs " + ", ".join(absent)) if absent else f"{fmt.description}"
    return [Target(fmt.name, p, not absent, why) for p in fmt.precisions]


# How to judge each export format on this machine (what it needs beyond its Python modules:
# ONNX Runtime's providers, TensorRT's version and GPU rules). A format without an entry here
# is judged by the modules its registry entry needs.
_TARGET_RULES = {"onnx": _onnx_targets, "trt": _trt_targets}


def targets(found: dict[str, Any]) -> list[Target]:
    """Every ``--to``/``--precision`` pair of the format registry and whether it works here."""
    out: list[Target] = []
    for fmt in export_formats():
        out += _TARGET_RULES.get(fmt.name, _generic_targets)(found, fmt)
    return out


def _backend_why(found: dict[str, Any], entry: Backend) -> tuple[bool, str]:
    """Whether backend ``entry`` runs here and why (not), from the probe alone.

    Generic over the registry: its modules must be importable, a ``cuda-gpu`` backend needs a
    CUDA GPU, and an entry that exists to compute in one precision (``compute``) needs a device
    whose capabilities (its probe's ``devices``) list it.
    """
    probe = found.get(entry.name) or found.get(entry.distributions[0] if entry.distributions
                                                 else entry.name) or {}
    absent = [module for module, _ in entry.needs if not has_module(module.split(".")[0])]
    if absent:
        return False, "needs " + ", ".join(absent) + " (not installed)"
    if probe.get("error"):
        return False, f"cannot be imported: {probe['error']}"
    if entry.hardware == "cuda-gpu":
        missing = trt_missing(found) if entry.name == "tensorrt" else (
            [] if found.get("torch", {}).get("devices") else ["a CUDA GPU (none found)"])
        if missing:
            return False, "needs " + ", ".join(missing)
    devices = probe.get("devices")
    if entry.compute and isinstance(devices, dict):
        want = {"bf16": "BF16", "fp16": "FP16"}.get(entry.compute, entry.compute.upper())
        able = [d for d, caps in devices.items() if want in caps]
        if not able:
            seen = ", ".join(f"{d}: {'/'.join(c)}" for d, c in devices.items())
            return False, (f"no device here computes in {entry.compute} "
                           f"(OPTIMIZATION_CAPABILITIES: {seen})")
        return True, f"{entry.description}; {entry.compute} on {', '.join(able)}"
    where = probe.get("providers") or (list(devices) if isinstance(devices, dict) else None)
    return True, entry.description + (f"; {', '.join(where)}" if where else "")


def backend_rows(found: dict[str, Any]) -> list[Target]:
    """Every registered backend (``port.formats.BACKENDS``), its version and whether it runs
    here (a :class:`Target` with the backend in ``to`` and its version in ``precision``)."""
    from port.formats import BACKENDS
    from port.ground.dists import dist_version

    rows = []
    for entry in BACKENDS.values():
        ok, why = _backend_why(found, entry)
        version = dist_version(*entry.distributions) if entry.distributions else None
        rows.append(Target(entry.name, version or "", ok, why))
    return rows


# --------------------------------------------------------------------------------------------
# render
# --------------------------------------------------------------------------------------------
def _yes(value: Any) -> str:
    return str(value) if value else "-"


def render(found: dict[str, Any], usable: list[Target]) -> Group:
    """Two rich tables: the machine, then the targets."""
    machine = Table(title="This machine", show_header=False, title_justify="left")
    machine.add_column("what", style="bold")
    machine.add_column("found")
    torch_info = found.get("torch", {})
    devices = torch_info.get("devices", [])
    machine.add_row("python", f"{found.get('python')} ({found.get('platform')})")
    cpu = found.get("cpu") or {}
    if cpu:
        from port.ground.cpu import describe

        saturates = cpu.get("ort_int8_saturates")
        machine.add_row("CPU", describe(cpu) + (
            "" if saturates is None else "; ONNX Runtime int8 kernels measured: "
            + ("saturating (porter evaluates INT8 with the exact U8U8 kernels)" if saturates
               else "exact")))
    machine.add_row(
        "torch",
        f"{_yes(torch_info.get('version'))}, CUDA build {_yes(torch_info.get('cuda'))}, "
        f"CUDA available: {'yes' if torch_info.get('cuda_available') else 'no'}"
        + (f" ({torch_info['error']})" if torch_info.get("error") else ""),
    )
    if devices:
        for d in devices:
            gib = d["total_memory_bytes"] / 1024**3
            machine.add_row(f"cuda:{d['index']}",
                            f"{d['name']}, compute capability {d['compute_capability']}, "
                            f"{gib:.1f} GiB")
    else:
        machine.add_row("GPUs", "none")
    driver = found.get("driver", {})
    machine.add_row("NVIDIA driver", _yes(driver.get("version") or driver.get("cuda_driver_api")))
    for name in ("pycuda", "modelopt", "onnx"):
        entry = found.get(name, {})
        machine.add_row(name, _yes(entry.get("version")) if entry.get("installed")
                        else "not installed")

    runtimes = Table(title="Backends (porter evaluate --backends ...)", title_justify="left")
    runtimes.add_column("backend")
    runtimes.add_column("version")
    runtimes.add_column("works here")
    runtimes.add_column("how / why not")
    for b in backend_rows(found):
        verdict = Text("yes", style="green") if b.available else Text("no", style="red")
        runtimes.add_row(b.to, _yes(b.precision), verdict, b.why)

    table = Table(title="Export targets (porter export --to ... --precision ...)",
                  title_justify="left")
    table.add_column("--to")
    table.add_column("--precision")
    table.add_column("works here")
    table.add_column("how / why not")
    for t in usable:
        verdict = Text("yes", style="green") if t.available else Text("no", style="red")
        table.add_row(t.to, t.precision, verdict, t.why)
    return Group(machine, Text(""), runtimes, Text(""), table)
