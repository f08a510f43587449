"""Export stage: PyTorch -> ONNX (fp32 here; fp16/int8 in fp16.py/quantize.py) -> TensorRT.

Submodules are imported on demand (``from port.export.onnx import export_onnx``) so that reading
the format registry (``port.export.formats``) never pulls in torch or onnx.
"""
