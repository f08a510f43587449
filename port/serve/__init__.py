"""Serving a run's model on a real Triton Inference Server.

``launch`` runs in porter's environment: it resolves the artifact and its backend from the run's
manifest and the backend registry, finds the serving interpreter and supervises it. ``server``
runs in that interpreter: PyTriton's ``Triton().bind(...)`` with the artifact's runner (ONNX
Runtime or OpenVINO) inside the bound function. Neither module imports torch.
"""
