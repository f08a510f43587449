"""Serving a run's model on a real Triton Inference Server.

``launch`` runs in porter's environment: it resolves the artifact from the run's manifest, finds
the serving interpreter and supervises it. ``server`` runs in that interpreter: PyTriton's
``Triton().bind(...)`` with ONNX Runtime inside the bound function. Neither module imports torch.
"""
