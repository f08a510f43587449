"""TensorRT debug tensors: a TensorRT build of an ONNX graph that reports chosen intermediates.

GPU only, and only the GPU work lives here: which tensors to watch and how they map to modules
is decided on the CPU (:mod:`port.evaluate.module_map`), and the comparison is
:mod:`port.evaluate.layerwise`'s. TensorRT 10's debug-tensor API (TensorRT 10.0+):

- ``INetworkDefinition.mark_debug(tensor)`` marks a network tensor before the build; a marked
  tensor is kept (materialised) in the engine, which can stop a fusion around it;
- ``IExecutionContext.set_debug_listener(listener)`` and
  ``IExecutionContext.set_tensor_debug_state(name, True)`` turn the reports on at run time;
- ``IDebugListener.process_debug_tensor(addr, location, type, shape, name, stream)`` is called
  with the device address of each marked tensor as it is produced (valid during the call only).

Because the tensors must be marked at build time, the engine compared is a *rebuild* of the
deployed engine's ONNX with the same precision (its types come from the graph: a strongly typed
network), not the deployed plan byte for byte; a marked tensor can also keep TensorRT from fusing
across it. The deployed engine's logits are compared by ``porter evaluate --compare``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from port.ground.errors import BackendUnavailable, ModelError

# TensorRT DataType name -> numpy dtype of the debug tensor's buffer.
_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32,
           "BOOL": np.bool_, "UINT8": np.uint8, "BF16": None, "INT64": np.int64}


def _capsule_pointer(capsule: Any) -> int:
    """The address inside a PyCapsule (how the Python bindings hand out device pointers)."""
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype = ctypes.c_void_p
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return int(get(capsule, None))


def debug_tensors_supported() -> str | None:
    """None when the installed TensorRT offers debug tensors, else why not (for the skip)."""
    try:
        import tensorrt as trt
    except ImportError:
        return "TensorRT is not installed (pip install tensorrt)"
    if not hasattr(trt, "IDebugListener") or not hasattr(trt.INetworkDefinition, "mark_debug"):
        return f"TensorRT {trt.__version__} has no debug tensors (IDebugListener): TensorRT 10+"
    return None


def run_debug_tensors(onnx_path: Path, names: Sequence[str], images: np.ndarray, *,
                      device_index: int = 0) -> dict[str, np.ndarray]:
    """Build ``onnx_path`` with ``names`` marked as debug tensors and run ``images`` once.

    Returns ``{tensor name: float32 array}`` for every marked tensor TensorRT reported (a name
    the parser's network does not hold is left out: the caller lists it as unmatched).
    ``images`` is the graph-form input batch. Raises ``BackendUnavailable`` without TensorRT
    debug tensors, pycuda or a GPU; ``ModelError`` when TensorRT cannot parse or build it.
    """
    why = debug_tensors_supported()
    if why:
        raise BackendUnavailable(f"layerwise on a TensorRT engine: {why}")
    import tensorrt as trt

    from port.engines.cuda import CudaContext, checked, host_device_buffer, import_driver
    from port.engines.trt_loaders import make_logger

    cuda = import_driver()
    logger = make_logger()
    with CudaContext(device_index) as ctx, ctx.active():
        builder = trt.Builder(logger)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if hasattr(
            trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED") else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ModelError(f"TensorRT cannot parse {onnx_path}: {errors[:200]}")
        tensors = {}
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            for j in range(layer.num_outputs):
                tensors[layer.get_output(j).name] = layer.get_output(j)
        marked = [n for n in names if n in tensors]
        for name in marked:
            network.mark_debug(tensors[name])
        config = builder.create_builder_config()
        if hasattr(trt.BuilderFlag, "TF32"):  # FP32 layers compute in FP32, as ORT's do
            config.clear_flag(trt.BuilderFlag.TF32)
        inp = network.get_input(0)
        shape = tuple(images.shape)
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, shape, shape, shape)
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise ModelError(f"TensorRT could not build {onnx_path} with debug tensors: see "
                             "the TensorRT log (porter export --to trt shows it)")
        engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
        context = engine.create_execution_context()
        found: dict[str, np.ndarray] = {}

        class Listener(trt.IDebugListener):  # type: ignore[misc, name-defined]
            def process_debug_tensor(self, addr: Any, location: Any, dtype: Any, dims: Any,
                                     name: str, stream: int) -> bool:
                np_dtype = _DTYPES.get(dtype.name)
                if np_dtype is None:
                    return True  # a type numpy cannot hold: left out (listed as unmatched)
                host = np.empty(tuple(dims), dtype=np_dtype)
                # Valid during the callback only: copy now. A synchronous copy on the legacy
                # default stream waits for the (blocking) stream that produced the tensor.
                cuda.memcpy_dtoh(host, _capsule_pointer(addr))
                found[name] = host.astype(np.float32)
                return True

        listener = Listener()
        context.set_debug_listener(listener)
        for name in marked:
            context.set_tensor_debug_state(name, True)
        context.set_input_shape(inp.name, shape)
        buffers = []
        with checked("running the debug engine"):
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                dtype = trt.nptype(engine.get_tensor_dtype(name))
                tshape = tuple(context.get_tensor_shape(name))
                buf = host_device_buffer(int(np.prod(tshape)), dtype)
                buffers.append(buf)
                if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                    buf.view(tshape)[...] = images.astype(dtype)
                    cuda.memcpy_htod(buf.device, buf.host)
                context.set_tensor_address(name, buf.ptr)
            stream = cuda.Stream()
            if not context.execute_async_v3(stream.handle):
                raise ModelError(f"TensorRT failed to run the debug build of {onnx_path}")
            stream.synchronize()
            for buf in buffers:
                buf.free()
        return found
