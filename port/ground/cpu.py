"""What the CPU offers for int8 arithmetic: model, instruction-set flags, and the int8 verdict.

Why porter cares: ONNX Runtime's x86 int8 kernels multiply unsigned by signed bytes (U8S8). With
VNNI (``vpdpbusd``) or AMX the products are summed in 32 bits, exactly. Without them (SSE4.1,
AVX2, AVX-512 without VNNI) the kernels use ``vpmaddubsw``, which adds *pairs* of u8*s8 products
into a saturating 16-bit lane: 255*127 + 255*127 = 64,770 does not fit in 32,767, so an int8
convolution with full-range weights can silently clip (OpenVINO calls it the "saturation issue";
ORT's ``MlasPlatformU8S8Overflow``). GPUs, VNNI CPUs and ARM (``sdot``/``udot`` or widening
multiplies) have no such limit. So on such a CPU an INT8 accuracy figure measures the CPU, not the
model, unless the run avoids those kernels (see ``port.engines.int8_cpu``).

The flags are read with the CPUID instruction itself where possible (the same source ONNX
Runtime's MLAS uses to pick its kernels, so an emulator or a VM that hides VNNI is seen exactly
as ORT sees it), else from ``/proc/cpuinfo``, else from ``sysctl`` on macOS. Nothing heavy is
imported: the manifest records this for every artifact.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import platform
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

# x86 flags worth recording, in /proc/cpuinfo spelling (what users grep for).
X86_FLAGS = ("sse4_1", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
             "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
# ARM: asimddp = dot product (sdot/udot), i8mm = int8 matrix multiply.
ARM_FLAGS = ("asimd", "asimddp", "i8mm", "sve", "bf16", "asimdhp")
_INT8_EXACT_X86 = ("amx_int8", "avx512_vnni", "avx_vnni")  # 32-bit int8 accumulation


def _x86_cpuid_reader() -> Any:
    """A callable ``(leaf, subleaf) -> (eax, ebx, ecx, edx)`` running CPUID, or None.

    Python cannot issue CPUID itself, so this maps a few bytes of x86-64 machine code into an
    executable page (System V calling convention: edi = leaf, esi = subleaf, rdx = out[4]).
    Where the OS refuses executable memory the caller falls back to /proc/cpuinfo.
    """
    if platform.machine().lower() not in ("x86_64", "amd64") or sys.platform == "win32":
        return None
    code = bytes([
        0x53,                          # push rbx (callee-saved, CPUID clobbers it)
        0x49, 0x89, 0xD0,              # mov r8, rdx (out pointer; CPUID clobbers edx)
        0x89, 0xF8,                    # mov eax, edi
        0x89, 0xF1,                    # mov ecx, esi
        0x0F, 0xA2,                    # cpuid
        0x41, 0x89, 0x00,              # mov [r8], eax
        0x41, 0x89, 0x58, 0x04,        # mov [r8+4], ebx
        0x41, 0x89, 0x48, 0x08,        # mov [r8+8], ecx
        0x41, 0x89, 0x50, 0x0C,        # mov [r8+12], edx
        0x5B,                          # pop rbx
        0xC3,                          # ret
    ])
    xgetbv = bytes([
        0x31, 0xC9,                    # xor ecx, ecx (XCR0)
        0x0F, 0x01, 0xD0,              # xgetbv -> edx:eax
        0x48, 0xC1, 0xE2, 0x20,        # shl rdx, 32
        0x48, 0x09, 0xD0,              # or rax, rdx
        0xC3,                          # ret
    ])
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE,
                         prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError, AttributeError):  # W^X policy, or no PROT_EXEC on this OS
        return None
    page.write(code + b"\x90" * (64 - len(code)) + xgetbv)
    base = ctypes.addressof(ctypes.c_char.from_buffer(page))
    out_t = ctypes.c_uint32 * 4
    run = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, out_t)(base)
    xcr0 = ctypes.CFUNCTYPE(ctypes.c_uint64)(base + 64)

    def cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        out = out_t()
        run(leaf, subleaf, out)
        return tuple(out)  # type: ignore[return-value]

    cpuid.page = page  # type: ignore[attr-defined]  # keep the code page alive with the reader
    cpuid.xcr0 = xcr0  # type: ignore[attr-defined]
    return cpuid


def _bit(value: int, bit: int) -> bool:
    return bool((value >> bit) & 1)


def _x86_flags_from_cpuid(cpuid: Any) -> tuple[set[str], str | None]:
    """The flags of :data:`X86_FLAGS` usable here (CPU *and* OS support) and the brand string."""
    max_leaf = cpuid(0)[0]
    _, _, ecx1, _ = cpuid(1)
    flags: set[str] = set()
    osxsave = _bit(ecx1, 27)
    xcr0 = cpuid.xcr0() if osxsave else 0
    avx_os = (xcr0 & 0x6) == 0x6  # XMM + YMM state saved by the OS
    avx512_os = avx_os and (xcr0 & 0xE0) == 0xE0  # opmask + ZMM state
    amx_os = (xcr0 & 0x60000) == 0x60000  # TILECFG + TILEDATA
    for name, bit in (("sse4_1", 19), ("fma", 12), ("f16c", 29)):
        if _bit(ecx1, bit):
            flags.add(name)
    if _bit(ecx1, 28) and avx_os:
        flags.add("avx")
    if max_leaf >= 7:
        _, ebx7, ecx7, edx7 = cpuid(7, 0)
        if _bit(ebx7, 5) and avx_os:
            flags.add("avx2")
        if avx512_os:
            for name, reg, bit in (("avx512f", ebx7, 16), ("avx512bw", ebx7, 30),
                                   ("avx512vl", ebx7, 31), ("avx512_vnni", ecx7, 11)):
                if _bit(reg, bit):
                    flags.add(name)
        if amx_os:
            for name, bit in (("amx_int8", 25), ("amx_bf16", 22)):
                if _bit(edx7, bit):
                    flags.add(name)
        eax71 = cpuid(7, 1)[0]
        if _bit(eax71, 4) and avx_os:
            flags.add("avx_vnni")
        if _bit(eax71, 5) and avx512_os:
            flags.add("avx512_bf16")
    brand = None
    if cpuid(0x80000000)[0] >= 0x80000004:
        raw = b"".join(v.to_bytes(4, "little") for leaf in (0x80000002, 0x80000003, 0x80000004)
                       for v in cpuid(leaf))
        brand = raw.split(b"\0", 1)[0].decode("ascii", "replace").strip() or None
    return flags, brand


def _proc_cpuinfo() -> tuple[set[str], str | None]:
    """Flags (x86 ``flags`` or ARM ``Features``) and model name from /proc/cpuinfo (Linux)."""
    flags: set[str] = set()
    model = None
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("flags", "features") and not flags:
                flags = set(value.split())
            elif key in ("model name", "cpu model", "hardware") and model is None:
                model = value.strip() or None
    return flags, model


def _macos_arm() -> tuple[set[str], str | None]:
    """Dot-product support and the chip name on Apple silicon (``sysctl``)."""
    def sysctl(name: str) -> str:
        try:
            return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True,
                                  timeout=5, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    flags = {"asimd"}
    for feat, name in (("FEAT_DotProd", "asimddp"), ("FEAT_I8MM", "i8mm"),
                       ("FEAT_BF16", "bf16"), ("FEAT_FP16", "asimdhp")):
        if sysctl(f"hw.optional.arm.{feat}") == "1":
            flags.add(name)
    return flags, sysctl("machdep.cpu.brand_string") or None


def int8_verdict(arch: str, flags: set[str] | frozenset[str]) -> tuple[str, bool | None]:
    """(how int8 dot products run, whether ONNX Runtime's U8S8 kernels can saturate).

    ``None`` when the architecture is one porter knows nothing about.
    """
    if arch == "x86":
        exact = [f for f in _INT8_EXACT_X86 if f in flags]
        if exact:
            return f"{exact[0]} (32-bit accumulation, exact)", False
        widest = next((f for f in ("avx512bw", "avx2", "sse4_1") if f in flags), "sse")
        return f"{widest} without VNNI (u8*s8 pairs summed in saturating 16 bits)", True
    if arch == "arm":
        if "i8mm" in flags or "asimddp" in flags:
            return "arm dot product (sdot/udot, 32-bit accumulation, exact)", False
        return "arm neon widening multiply (exact)", False
    return "unknown", None


@lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """The CPU as plain data: ``model``, ``arch``, ``flags`` (the int8/fp16-relevant ones),
    ``source`` (cpuid, /proc/cpuinfo or sysctl), ``int8`` (how int8 dot products run) and
    ``int8_u8s8_saturates`` (predicted from the flags; ``None`` when unknown). Cached.
    """
    machine = platform.machine().lower()
    arch = ("x86" if machine in ("x86_64", "amd64", "i386", "i686")
            else "arm" if machine.startswith(("arm", "aarch64")) else machine or "unknown")
    flags: set[str] = set()
    model: str | None = None
    source = "none"
    cpuid = _x86_cpuid_reader() if arch == "x86" else None
    if cpuid is not None:
        flags, model = _x86_flags_from_cpuid(cpuid)
        source = "cpuid"
    else:
        proc_flags, model = _proc_cpuinfo()
        if proc_flags:
            flags, source = proc_flags, "/proc/cpuinfo"
        elif sys.platform == "darwin" and arch == "arm":
            flags, model = _macos_arm()
            source = "sysctl"
    if model is None:
        model = _proc_cpuinfo()[1] or platform.processor() or machine or "unknown CPU"
    known = X86_FLAGS if arch == "x86" else ARM_FLAGS
    recorded = sorted(f for f in flags if f in known)
    how, saturates = int8_verdict(arch, set(recorded))
    return {"model": model, "arch": arch, "flags": recorded, "source": source, "int8": how,
            "int8_u8s8_saturates": saturates}


def describe(info: dict[str, Any] | None = None) -> str:
    """One line for people: model, the int8-relevant flags and the int8 verdict."""
    info = info or cpu_info()
    flags = " ".join(info["flags"]) or "none detected"
    return f"{info['model']} ({info['arch']}; {flags}): int8 {info['int8']}"
