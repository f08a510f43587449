"""`porter serve` throughput and latency: 1, 4 and 16 concurrent gRPC clients, with and without
Triton's dynamic batching, on a real tritonserver (PyTriton, ONNX Runtime on the CPU).

Needs a run with an FP32 ONNX (default: trains and exports a tiny CIFAR-size one on the
synthetic data into .cache/bench-serve) and the serving environment (`make serve-env`).
Prints requests/s and p50/p99 per setting; the last line is the ratio dynamic/no batching at 16
clients, side by side in one run.

    .venv/bin/python bench/serve_triton.py [--run RUN] [--seconds 5]
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import port  # noqa: E402

CLIENTS = (1, 4, 16)


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    out = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return out


def _ensure_run(run: Path) -> None:
    if (run / "model.fp32.onnx").is_file():
        return
    porter = [sys.executable, "-m", "port"]
    subprocess.run([*porter, "train", "--run", str(run), "--recipe", "quick", "--epochs", "1",
                    "--warmup-epochs", "0"], cwd=REPO, check=True)
    subprocess.run([*porter, "export", "--run", str(run), "--to", "onnx"], cwd=REPO, check=True)


def _measure(grpc: int, x: np.ndarray, name: str, out: str, clients: int,
             seconds: float) -> tuple[float, float, float]:
    import tritonclient.grpc as grpcclient

    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker() -> None:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}")
        request = grpcclient.InferInput(name, list(x.shape), "FP32")
        request.set_data_from_numpy(x)
        mine = []
        client.infer("onnx-fp32", [request]).as_numpy(out)  # warm-up
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            client.infer("onnx-fp32", [request]).as_numpy(out)
            mine.append(time.perf_counter() - t0)
        client.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1e3
    return len(ms) / wall, float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _serve(run: Path, dynamic: bool, x: np.ndarray, name: str, out: str,
           seconds: float) -> dict[int, tuple[float, float, float]]:
    http, grpc, metrics = _ports(3)
    flag = "--dynamic-batching" if dynamic else "--no-dynamic-batching"
    proc = subprocess.Popen([sys.executable, "-m", "port", "serve", "--run", str(run),
                             "--http-port", str(http), "--grpc-port", str(grpc),
                             "--metrics-port", str(metrics), flag, "--max-batch", "16"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("ready"):
            break
    else:
        raise SystemExit("porter serve did not start")
    try:
        return {c: _measure(grpc, x, name, out, c, seconds) for c in CLIENTS}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def main() -> None:
    """Run both settings and print the table and the ratios."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, default=REPO / ".cache" / "bench-serve")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    _ensure_run(args.run)
    from port.ground.cpu import describe

    with port.load(args.run / "model.fp32.onnx") as predictor:
        x = predictor.preprocess(np.zeros((1, 32, 32, 3), np.uint8))
        name, out = predictor.input_name, predictor.logits_name
    results = {dyn: _serve(args.run, dyn, x, name, out, args.seconds) for dyn in (False, True)}
    print(f"porter serve, gRPC, 1 image per request, {describe()}")
    print(f"{'clients':>7} | {'no batching req/s':>17} {'p50 ms':>7} {'p99 ms':>7} | "
          f"{'dynamic req/s':>13} {'p50 ms':>7} {'p99 ms':>7} | ratio req/s")
    for c in CLIENTS:
        a, b = results[False][c], results[True][c]
        print(f"{c:>7} | {a[0]:>17.1f} {a[1]:>7.2f} {a[2]:>7.2f} | {b[0]:>13.1f} {b[1]:>7.2f} "
              f"{b[2]:>7.2f} | {b[0] / a[0]:.2f}x")
    a, b = results[False][16], results[True][16]
    print(f"dynamic batching vs none at 16 clients: {b[0] / a[0]:.2f}x requests/s, "
          f"p99 {b[2]:.2f} ms vs {a[2]:.2f} ms")


if __name__ == "__main__":
    main()
