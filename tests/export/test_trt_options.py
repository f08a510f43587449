"""TensorRT build options and the build plan, decided on a CPU for TensorRT 10 and 11."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from port.export.trt_options import (
    TRT_OPTION_KEYS,
    TrtBuildOptions,
    check_build_gpu,
    format_size,
    options_from_flags,
    parse_size,
    plan_build,
    required_onnx_precision,
)
from port.ground.errors import BackendUnavailable, UsageError
from port.ground.vocab import EVALUATE_BATCH_SIZES


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4GiB", 4 * 1024**3),
        ("512MiB", 512 * 1024**2),
        ("1.5G", int(1.5 * 1024**3)),
        ("2GB", 2 * 1000**3),
        ("64 KiB", 64 * 1024),
        ("1048576", 1048576),
        (1024, 1024),
    ],
)
def test_parse_size_reads_binary_and_decimal_units(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "4 parsecs", "GiB", "-1GiB", "0", "0MiB", "1e3"])
def test_parse_size_refuses_nonsense_with_the_accepted_units(text: str) -> None:
    with pytest.raises(UsageError, match="--workspace"):
        parse_size(text)


def test_format_size_round_trips_binary_units() -> None:
    assert format_size(parse_size("4GiB")) == "4GiB"
    assert format_size(parse_size("512MiB")) == "512MiB"
    assert format_size(1000) == "1000B"


def test_defaults_are_valid_everywhere_and_cover_evaluates_batch_sizes() -> None:
    opts = TrtBuildOptions()
    for major in (10, 11):
        assert plan_build(opts, major).onnx_precision == opts.precision
    check_build_gpu(opts, (7, 5))
    assert (opts.min_batch <= min(EVALUATE_BATCH_SIZES)
            and opts.max_batch >= max(EVALUATE_BATCH_SIZES))


def test_options_from_flags_parses_the_cli_dict_and_leaves_other_keys_alone(tmp_path: Path) -> None:
    flags = {
        "min_batch": 2, "opt_batch": "8", "max_batch": 16, "workspace": "512MiB",
        "timing_cache": str(tmp_path / "t.cache"), "builder_opt_level": 5,
        "version_compatible": True, "hardware_compatibility": "Ampere+",
        "calib_images": 300, "data": "synthetic",  # ONNX/data flags: not the builder's business
    }
    opts = options_from_flags("int8", flags)
    assert (opts.min_batch, opts.opt_batch, opts.max_batch) == (2, 8, 16)
    assert opts.workspace_bytes == 512 * 1024**2
    assert opts.timing_cache == tmp_path / "t.cache"
    assert opts.hardware_compatibility == "ampere+"
    assert opts.version_compatible and opts.builder_opt_level == 5
    d = opts.to_dict()
    assert d["timing_cache"] == str(tmp_path / "t.cache") and d["precision"] == "int8"
    assert {"min_batch", "workspace", "calibrator"} <= TRT_OPTION_KEYS


def test_only_max_batch_given_keeps_opt_inside_the_range() -> None:
    assert options_from_flags("fp16", {"max_batch": 8}).opt_batch == 8
    assert options_from_flags("fp16", {"min_batch": 64, "max_batch": 128}).opt_batch == 64


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"precision": "bf16"}, "not a TensorRT precision"),
        ({"min_batch": 0}, "--min-batch must be a positive integer"),
        ({"min_batch": 8, "opt_batch": 4, "max_batch": 16}, "--min-batch <= --opt-batch"),
        ({"opt_batch": 64, "max_batch": 32}, "--opt-batch <= --max-batch"),
        ({"builder_opt_level": 6}, "--builder-opt-level must be 0-5"),
        ({"builder_opt_level": -1}, "--builder-opt-level must be 0-5"),
        ({"hardware_compatibility": "hopper+"}, "ampere\\+ or same-cc"),
        ({"calibrator": "percentile", "precision": "int8"}, "entropy or minmax"),
        ({"calibrator": "entropy", "precision": "fp16"}, "only applies to --precision int8"),
        ({"calib_cache": Path("c.cache")}, "pass --calibrator"),
        ({"workspace_bytes": 0}, "--workspace must be larger than 0"),
    ],
)
def test_options_refuse_conflicts_when_made_with_one_line_naming_the_flag(
    change: dict, message: str
) -> None:
    with pytest.raises(UsageError, match=message) as info:
        TrtBuildOptions(**change)
    assert "\n" not in str(info.value)
    # A valid instance cannot be turned into an invalid one either.
    with pytest.raises(UsageError, match=message):
        dataclasses.replace(TrtBuildOptions(), **change)


def test_flags_from_the_cli_are_checked_once_on_the_way_in() -> None:
    with pytest.raises(UsageError, match="--min-batch <= --opt-batch <= --max-batch"):
        options_from_flags("fp16", {"min_batch": 8, "opt_batch": 4, "max_batch": 16})
    with pytest.raises(UsageError, match="--min-batch needs an integer"):
        options_from_flags("fp16", {"min_batch": "eight"})


def test_calibrator_is_refused_on_tensorrt_11_with_the_reason() -> None:
    opts = TrtBuildOptions(precision="int8", calibrator="entropy")
    assert plan_build(opts, 10).needs_calibrator  # fine on TensorRT 10
    with pytest.raises(UsageError) as info:
        plan_build(opts, 11)
    assert str(info.value) == (
        "TensorRT 11 removed implicit INT8 calibration (IInt8*Calibrator): omit --calibrator to "
        "build from the QDQ ONNX"
    )


def test_old_tensorrt_is_refused() -> None:
    with pytest.raises(UsageError, match=r"TensorRT 8\.x is not supported: install TensorRT 10"):
        plan_build(TrtBuildOptions(), 8)


def test_ampere_plus_needs_an_ampere_build_gpu() -> None:
    opts = TrtBuildOptions(hardware_compatibility="ampere+")
    check_build_gpu(opts, (8, 6))
    with pytest.raises(UsageError, match=r"Ampere or newer GPU .* 7\.5"):
        check_build_gpu(opts, (7, 5))
    check_build_gpu(TrtBuildOptions(hardware_compatibility="same-cc"), (7, 5))


# -- plan_build ------------------------------------------------------------------------------
@pytest.mark.parametrize("major", [10, 11])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_matching_onnx_builds_strongly_typed_on_10_and_11(major: int, precision: str) -> None:
    plan = plan_build(TrtBuildOptions(precision=precision), major, precision)
    assert plan.path == "strongly-typed" and plan.strongly_typed
    assert plan.builder_flags == () and plan.calibrator is None and not plan.needs_calibrator
    assert plan.onnx_precision == precision


def test_only_tensorrt_10_needs_the_strongly_typed_network_flag() -> None:
    # TensorRT 11 networks are strongly typed whatever the flags (the flag is deprecated there).
    assert plan_build(TrtBuildOptions(), 10, "fp16").network_flags == ("STRONGLY_TYPED",)
    assert plan_build(TrtBuildOptions(), 11, "fp16").network_flags == ()
    assert plan_build(TrtBuildOptions(), 12, "fp16").network_flags == ()
    classic = plan_build(TrtBuildOptions(precision="fp16"), 10, "fp32")
    assert classic.network_flags == () and not classic.strongly_typed


def test_fp32_clears_tf32_so_fp32_means_ieee_fp32() -> None:
    assert plan_build(TrtBuildOptions(precision="fp32"), 11, "fp32").cleared_flags == ("TF32",)
    assert plan_build(TrtBuildOptions(precision="fp16"), 11, "fp16").cleared_flags == ()


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tensorrt_11_refuses_an_fp32_onnx_for_low_precision(precision: str) -> None:
    with pytest.raises(UsageError, match=f"strongly typed networks only.*--precision {precision}"):
        plan_build(TrtBuildOptions(precision=precision), 11, "fp32")


def test_tensorrt_10_classic_fp16_from_the_fp32_onnx() -> None:
    plan = plan_build(TrtBuildOptions(precision="fp16"), 10, "fp32")
    assert plan.path == "classic" and not plan.strongly_typed
    assert plan.builder_flags == ("FP16",)


@pytest.mark.parametrize("calibrator", ["entropy", "minmax"])
def test_tensorrt_10_classic_int8_with_a_calibrator(calibrator: str) -> None:
    opts = TrtBuildOptions(precision="int8", calibrator=calibrator)
    assert required_onnx_precision(opts, 10) == "fp32"
    plan = plan_build(opts, 10)  # onnx precision not chosen yet: the plan names it
    assert plan.onnx_precision == "fp32" and plan.needs_calibrator
    plan = plan_build(opts, 10, "fp32")
    assert plan.path == "classic" and plan.builder_flags == ("INT8",)
    assert plan.calibrator == calibrator and not plan.strongly_typed


def test_calibrator_on_an_already_quantized_onnx_is_refused() -> None:
    opts = TrtBuildOptions(precision="int8", calibrator="entropy")
    with pytest.raises(UsageError, match="already INT8 QDQ"):
        plan_build(opts, 10, "int8")


def test_int8_from_fp32_without_calibrator_on_10_says_both_ways_out() -> None:
    with pytest.raises(UsageError, match="--calibrator entropy\\|minmax, or build from the QDQ"):
        plan_build(TrtBuildOptions(precision="int8"), 10, "fp32")


def test_calibrator_on_11_is_refused_by_the_plan_too() -> None:
    with pytest.raises(UsageError, match="TensorRT 11 removed implicit INT8 calibration"):
        plan_build(TrtBuildOptions(precision="int8", calibrator="minmax"), 11)


def test_newer_majors_behave_like_11() -> None:
    assert plan_build(TrtBuildOptions(precision="fp16"), 12).onnx_precision == "fp16"
    with pytest.raises(UsageError, match="strongly typed networks only"):
        plan_build(TrtBuildOptions(precision="fp16"), 12, "fp32")


def test_mismatched_low_precision_onnx_is_refused_on_10() -> None:
    with pytest.raises(UsageError, match="cannot be built from the FP16 ONNX"):
        plan_build(TrtBuildOptions(precision="int8"), 10, "fp16")


def test_unset_onnx_precision_names_the_onnx_to_build_from() -> None:
    for major in (10, 11):
        for precision in ("fp32", "fp16", "int8"):
            plan = plan_build(TrtBuildOptions(precision=precision), major)
            assert plan.onnx_precision == precision


def test_plan_without_tensorrt_is_backend_unavailable() -> None:
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        plan_build(TrtBuildOptions(), None, "fp16")


def test_plan_to_dict_is_json_friendly() -> None:
    import json

    d = plan_build(TrtBuildOptions(precision="fp16"), 10, "fp32").to_dict()
    assert json.loads(json.dumps(d))["builder_flags"] == ["FP16"]
    assert d["network_flags"] == [] and d["reason"]
