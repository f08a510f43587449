"""ONNX -> OpenVINO IR (``.xml`` graph + ``.bin`` weights), with porter's card in the IR.

Pure: takes paths, writes the pair, returns metrics; the manifest is the caller's business.

- ``openvino.save_model`` compresses weights to FP16 unless told not to
  (``compress_to_fp16=True`` is its default): an FP32 export would silently become FP16
  weights. porter always passes ``compress_to_fp16=False``, so the IR carries exactly the
  precision of the ONNX it came from (:func:`ir_precision` reads it back).
- porter's ``porter.*`` strings (the ONNX file's metadata_props) go into the IR's rt_info under
  ``porter`` (``model.get_rt_info(["porter", "porter.card"])``), where
  :meth:`port.engines.openvino.OpenVinoRunner.model_card` reads them. OpenVINO's ONNX frontend
  also copies every metadata_prop into rt_info ``framework``; that copy is OpenVINO's record of
  the source and is left as it is.
- The pair is written atomically: both files into a scratch folder beside the target, each
  fsynced, then ``os.replace``d, the ``.bin`` first and the ``.xml`` last (the ``.xml`` is what
  a reader opens and what the manifest records), then the folder is fsynced.
"""

from __future__ import annotations

import re
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from port.ground.atomic import replace_in_order
from port.ground.errors import ModelError

RT_INFO_SECTION = "porter"  # the rt_info section porter's strings live in (the runner reads it)
SCRATCH_PREFIX = ".porter-openvino-"  # a killed convert leaves this folder beside the target
# Const element types that mean integer-quantized weights, and low-precision float ones.
_INT_TYPES = frozenset({"i8", "u8"})
_HALF_TYPES = frozenset({"f16"})
_IR_PRECISION_KEY = "porter.precision"


def ir_files(xml_path: str | Path) -> tuple[Path, Path]:
    """The IR's two files: the ``.xml`` graph and the ``.bin`` weights OpenVINO reads with it
    (same name, ``.bin`` suffix: the IR does not name its weights file)."""
    xml = Path(xml_path)
    if xml.suffix.lower() != ".xml":
        raise ModelError(f"{xml.name} is not an OpenVINO IR .xml file: pass the IR's .xml")
    return xml, xml.with_suffix(".bin")


def ir_precision(xml_path: str | Path) -> str:
    """The precision an IR really carries, read from its ``.xml`` (no openvino import).

    ``int8``: FakeQuantize layers or i8/u8 constants (quantized weights); ``fp16``: f16
    constants (FP16 weights, decompressed to f32 at load); else ``fp32``. Only ``<layer>``
    elements are read, so a class name in the rt_info card cannot fool it.
    """
    xml, _ = ir_files(xml_path)
    if not xml.is_file():
        raise ModelError(f"OpenVINO IR {xml} not found: convert the ONNX first")
    half = False
    try:
        for _, element in ET.iterparse(xml, events=("end",)):
            if element.tag != "layer":
                continue
            kind = element.get("type", "")
            data = element.find("data")
            element_type = data.get("element_type", "") if data is not None else ""
            if kind == "FakeQuantize" or (kind == "Const" and element_type in _INT_TYPES):
                return "int8"
            half = half or (kind == "Const" and element_type in _HALF_TYPES)
            element.clear()  # constant memory on a large graph
    except ET.ParseError as exc:
        raise ModelError(f"{xml} is not a readable OpenVINO IR ({exc}): convert the ONNX "
                         "again") from None
    return "fp16" if half else "fp32"


def convert_to_ir(onnx_path: Path, out_xml: Path, *,
                  card_metadata: dict[str, str] | None) -> dict[str, Any]:
    """Convert ``onnx_path`` to an OpenVINO IR at ``out_xml`` (+ ``.bin``), weights unchanged.

    ``card_metadata``: the ``porter.*`` strings to store in the IR's rt_info (the ONNX file's
    porter metadata_props); ``None`` stores none. When they name a ``porter.precision``, the
    IR must carry it (a ``ModelError`` otherwise, nothing written). Returns metrics:
    ``openvino`` (version), ``convert_seconds``, ``save_seconds``, ``xml_bytes``,
    ``bin_bytes``, ``bytes``, ``precision`` (:func:`ir_precision`), ``compress_to_fp16``
    (always False), ``rt_info_keys`` (how many porter strings were stored).
    """
    from port.engines.openvino import openvino_module, ov_error

    onnx_path, (xml, weights) = Path(onnx_path), ir_files(out_xml)
    if not onnx_path.is_file():
        raise ModelError(f"ONNX model {onnx_path} not found: export it first "
                         "(porter export --to onnx)")
    meta = _checked_metadata(card_metadata)
    ov = openvino_module()
    start = time.perf_counter()
    try:
        model = ov.convert_model(str(onnx_path))
    except (RuntimeError, ValueError) as exc:  # ovc raises both for a graph it cannot take
        raise ModelError(f"OpenVINO cannot convert {onnx_path} ({ov_error(exc)}): check it "
                         "loads in ONNX Runtime, or re-export it") from None
    convert_seconds = time.perf_counter() - start
    for key, value in meta.items():
        model.set_rt_info(value, [RT_INFO_SECTION, key])
    xml.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=xml.parent) as scratch:
        tmp_xml = Path(scratch) / xml.name
        tmp_bin = tmp_xml.with_suffix(".bin")
        # compress_to_fp16 defaults to True: without False an FP32 export gets FP16 weights.
        ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
        precision = ir_precision(tmp_xml)
        wanted = meta.get(_IR_PRECISION_KEY)
        if wanted and wanted != precision:
            raise ModelError(f"the IR of {onnx_path.name} carries {precision} weights, its card "
                             f"says {wanted}: re-export the ONNX (porter export --to onnx)")
        # The .bin first: the .xml is the one a reader opens (and the manifest records).
        replace_in_order([(tmp_bin, weights), (tmp_xml, xml)])
    xml_bytes, bin_bytes = xml.stat().st_size, weights.stat().st_size
    return {
        "openvino": ov.__version__,
        "convert_seconds": round(convert_seconds, 3),
        "save_seconds": round(time.perf_counter() - start, 3),
        "xml_bytes": xml_bytes,
        "bin_bytes": bin_bytes,
        "bytes": xml_bytes + bin_bytes,
        "precision": precision,
        "compress_to_fp16": False,
        "rt_info_keys": len(meta),
    }


_KEY = re.compile(r"^porter\.[A-Za-z0-9_.\-]+$")


def _checked_metadata(meta: dict[str, str] | None) -> dict[str, str]:
    """``meta`` if every key is a ``porter.*`` name and every value a string (ONNX's rule)."""
    if meta is None:
        return {}
    bad = [k for k, v in meta.items() if not isinstance(k, str) or not _KEY.match(k)
           or not isinstance(v, str)]
    if bad:  # a caller's bug, not a user's: porter's own keys always fit
        raise ValueError(f"card_metadata must map porter.* names to strings; bad keys: {bad}")
    return dict(sorted(meta.items()))
