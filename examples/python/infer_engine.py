"""Classify images with a porter-built TensorRT engine, without porter.

Everything the app needs comes from the engine's JSON sidecar (``model.engine.json``): input and
output names, the optimisation profile, the preprocessing (resize, centre crop, scale, mean/std,
NCHW) and the class names. Needs: tensorrt (10 or 11), pycuda, numpy, pillow.

    python examples/python/infer_engine.py runs/r18/model.fp16.engine cat.jpg dog.jpg --top 3
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def load_sidecar(engine: Path) -> dict:
    """The sidecar written next to the engine by `porter export --to trt`."""
    path = engine.with_name(engine.name + ".json")
    if not path.is_file():
        sys.exit(f"error: {path} not found: it is written next to the engine by porter export")
    return json.loads(path.read_text())


def preprocess(path: Path, pre: dict) -> np.ndarray:
    """One image -> float32 CHW, exactly as porter evaluated the model."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    scale = pre["resize"] / min(w, h)  # shorter side -> resize
    img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    crop = pre["crop"]
    left, top = round((w - crop) / 2.0), round((h - crop) / 2.0)  # as torchvision CenterCrop
    img = img.crop((left, top, left + crop, top + crop))
    x = np.asarray(img, dtype=np.float32) * pre["scale"]
    if pre["color_order"] == "BGR":
        x = x[..., ::-1]
    x = (x - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # HWC -> CHW


def run(engine_path: Path, batch: np.ndarray, sidecar: dict) -> np.ndarray:
    """Deserialize, run one batch, return the first output (host float32)."""
    import pycuda.driver as cuda
    import tensorrt as trt

    cuda.init()
    ctx = cuda.Device(0).retain_primary_context()  # no pycuda.autoinit: we own push/pop
    ctx.push()
    try:
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        if sidecar.get("version_compatible"):
            runtime.engine_host_code_allowed = True  # only for engines you built and trust
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise RuntimeError("TensorRT could not load the engine (version or GPU mismatch?)")
        context = engine.create_execution_context()
        inp, out = sidecar["inputs"][0]["name"], sidecar["outputs"][0]["name"]
        if not context.set_input_shape(inp, batch.shape):
            raise RuntimeError(f"batch shape {batch.shape} is outside the engine's profile")
        out_shape = tuple(context.get_tensor_shape(out))
        out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(out)))
        host_in = cuda.pagelocked_empty(batch.shape, np.float32)
        host_out = cuda.pagelocked_empty(out_shape, out_dtype)
        host_in[...] = batch
        dev_in, dev_out = cuda.mem_alloc(host_in.nbytes), cuda.mem_alloc(host_out.nbytes)
        stream = cuda.Stream()
        cuda.memcpy_htod_async(dev_in, host_in, stream)
        context.set_tensor_address(inp, int(dev_in))
        context.set_tensor_address(out, int(dev_out))
        if not context.execute_async_v3(stream.handle):
            raise RuntimeError("execute_async_v3 failed")
        cuda.memcpy_dtoh_async(host_out, dev_out, stream)
        stream.synchronize()
        result = np.array(host_out, dtype=np.float32)
        del context, engine, runtime  # before the context is popped
        dev_in.free()
        dev_out.free()
        return result
    finally:
        ctx.pop()
        ctx.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", type=Path)
    parser.add_argument("images", type=Path, nargs="+")
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()

    sidecar = load_sidecar(args.engine)
    profile = sidecar["inputs"][0]["profile"]
    lo, hi = profile["min"][0], profile["max"][0]
    if not lo <= len(args.images) <= hi:
        sys.exit(f"error: this engine takes {lo}..{hi} images per batch, got {len(args.images)}")
    batch = np.stack([preprocess(p, sidecar["preprocess"]) for p in args.images])
    logits = run(args.engine, batch, sidecar)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    classes = sidecar["classes"]
    for path, p in zip(args.images, probs, strict=True):
        best = np.argsort(-p)[: args.top]
        shown = ", ".join(f"{classes[i]} {p[i]:.3f}" for i in best)
        print(f"{path}: {shown}")


if __name__ == "__main__":
    main()
