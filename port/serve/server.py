"""The Triton server process of ``porter serve`` (runs in the serving environment).

PyTriton starts the ``tritonserver`` binary its wheel bundles, with a Python-backend model whose
requests it forwards to :func:`make_infer`'s function in this process; that function runs the
artifact with porter's runner for the backend asked for (``port.load``, the settings ``porter
evaluate`` uses): an ONNX file on ONNX Runtime or OpenVINO, an OpenVINO IR on OpenVINO (f32
inference hint pinned for the ``openvino`` backend). The model has the I/O of the exported
model, so a client written for ``porter export --to triton`` works unchanged: ``input`` float32
[-1, 3, H, W] preprocessed as the model card says, ``logits`` float32 [-1, classes].

Imports only numpy, the backend's runtime (onnxruntime or openvino), Pillow, PyTriton and
porter's light modules. Stops cleanly on SIGINT and SIGTERM (in-flight requests get
``EXIT_TIMEOUT_S`` to finish).

    python -m port.serve.server --model runs/r/model.fp32.xml --name openvino-fp32 \
        --backend openvino --http-port 8000
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import sysconfig
import threading
from typing import Any

import numpy as np

EXIT_TIMEOUT_S = 5  # after a stop signal, how long in-flight requests may take


def _use_this_libpython() -> None:
    """Make the Python-backend stub load this interpreter's libpython.

    The stub links ``libpython3.X.so.1.0`` by name; without this it may pick the system's copy
    (e.g. Debian's 3.11.2) while importing this interpreter's standard library (e.g. pyenv's
    3.11.7), which fails inside ``multiprocessing``. tritonserver and the stub inherit the
    environment of this process.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir:
        old = os.environ.get("LD_LIBRARY_PATH", "")
        os.environ["LD_LIBRARY_PATH"] = libdir + (":" + old if old else "")


def make_infer(predictor: Any) -> Any:
    """The batched inference function bound to Triton: ``{input}`` -> ``{logits}``."""
    from pytriton.decorators import batch

    name, logits = predictor.input_name, predictor.logits_name

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(inputs[name], dtype=np.float32)
        return {logits: predictor.logits(x, batch_size=max(len(x), 1))}

    return infer


def describe(predictor: Any) -> str:
    """Which backend serves the model, where, and (when the backend says) in what precision:
    ``openvino (CPU, computing in f32)``; the serve log is the record of what ran."""
    details = predictor.runner.details()
    compute = details.get("compute_precision")
    where = predictor.device + (f", computing in {compute}" if compute else "")
    return f"{predictor.backend} ({where})"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The launcher's flags (``port.serve.launch`` builds them)."""
    p = argparse.ArgumentParser(prog="python -m port.serve.server")
    p.add_argument("--model", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--backend", default=None, help="registry backend name (default: the "
                   "format's first, e.g. onnxruntime for .onnx)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--dynamic-batching", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--queue-delay-us", type=int, default=500)
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; 0 after a clean stop, 2 when the model cannot be served."""
    args = parse_args(argv)
    _use_this_libpython()
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    from port.engines.predictor import load
    from port.ground.errors import PorterError

    try:
        predictor = load(args.model, backend=args.backend, threads=args.threads)
    except PorterError as exc:
        sys.stderr.write(f"porter: error: {exc}\n")
        return 2
    except ImportError as exc:  # a serving environment older than requirements.txt
        sys.stderr.write(f"porter: error: the serving environment {sys.executable} cannot "
                         f"import {exc.name or exc}: run `make serve-env` again\n")
        return 2
    c, h, w = predictor.card.input_shape
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # batcher=None: no dynamic_batching section, so Triton runs each request on its own.
    batcher = (DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us)
               if args.dynamic_batching else None)
    model_config = ModelConfig(max_batch_size=args.max_batch, batcher=batcher)
    config = TritonConfig(http_address=args.host, http_port=args.http_port,
                          grpc_address=args.host, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port, exit_timeout_secs=EXIT_TIMEOUT_S,
                          log_verbose=0)
    triton = Triton(config=config)
    try:
        triton.bind(model_name=args.name, infer_func=make_infer(predictor),
                    inputs=[Tensor(name=predictor.input_name, dtype=np.float32, shape=(c, h, w))],
                    outputs=[Tensor(name=predictor.logits_name, dtype=np.float32,
                                    shape=(len(predictor.classes),))],
                    config=model_config, strict=True)
        triton.run()
        base = f"{args.host}"
        print(f"serving {args.model} as model '{args.name}' on {describe(predictor)}, "
              f"dynamic batching {'on' if args.dynamic_batching else 'off'}, max batch "
              f"{args.max_batch}", flush=True)
        print(f"  HTTP    http://{base}:{args.http_port}/v2/models/{args.name}/infer", flush=True)
        print(f"  gRPC    {base}:{args.grpc_port}", flush=True)
        print(f"  metrics http://{base}:{args.metrics_port}/metrics", flush=True)
        print("ready (Ctrl-C stops)", flush=True)
        while not stop.wait(timeout=1.0):
            if not triton.is_alive():
                sys.stderr.write("porter: error: the Triton server stopped unexpectedly: see its "
                                 "log above\n")
                return 1
    finally:
        triton.stop()
        predictor.close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
