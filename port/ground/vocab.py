"""porter's vocabulary: the names and small fixed values several floors must agree on.

Each fact lives here once, so a reader on any floor (the CLI's flag checks, the model card's
schema, the runners' adapter, the ONNX signature reader, the stages) names the same values and a
new one is added in one place. Ground floor: plain constants and no imports, so anything
may read it without pulling in numpy, torch or rich (``porter --help`` and every refusal stay
light). ``tests/test_vocab.py`` fails when one of these tuples is written out again elsewhere
in ``port/``.
"""

# Image input layouts porter feeds, its canonical one first; read by limits.check_card (the
# card schema), importing.request (--layout), engines.adapter.GraphIO, models.onnx_signature.
LAYOUTS = ("NCHW", "NHWC")
# Channel orders of a colour input, porter's canonical one first; read by limits.check_card
# and importing.request (--color-order).
COLOR_ORDERS = ("RGB", "BGR")
# Channel counts porter feeds (grayscale, colour), also the number of mean/std values a card or
# --mean/--std may give; read by limits, importing.request, cli, data.pixels, engines.adapter,
# engines.base.shape_mismatch, models.onnx_signature.
CHANNELS = (1, 3)
# Input dtypes a graph may take (cast at the runner's boundary); read by limits.check_card,
# engines.adapter.GraphIO; models.onnx_signature maps ONNX element types onto them.
INPUT_DTYPES = ("float16", "float32", "float64")
# Logits layouts porter reads: [N, C], or [N, C, 1, 1] squeezed to it; read by limits.check_card
# and engines.adapter.GraphIO.
OUTPUT_LAYOUTS = ("NC", "NC11")
# Activations the ResNet-9 recipe builds; read by train.recipe (flag help and check, no torch)
# and models.layers.make_activation.
ACTIVATIONS = ("relu", "celu", "gelu")

# Manifest id of a run's reference model (trained or imported); read by the stages (common,
# train, importing, layerwise) and serve.launch.
REFERENCE_ID = "model"
# Manifest id of the evaluation report, and the run folder it is written to; read by
# stages.evaluate (writes it) and stages.gate (re-gates it).
REPORT_ID = "report"
REPORT_DIR = "report"

# porter evaluate's default latency batch sizes (--batch-sizes); read by cli, the
# EvaluateRequest, and engines.predictor (predicts in the largest, as evaluate does).
EVALUATE_BATCH_SIZES = (1, 32)
# Largest --workers (image decoding processes); read by stages.evaluate's flag check and
# data.stream.check_workers.
MAX_WORKERS = 64
