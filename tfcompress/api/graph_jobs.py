"""The graph-side jobs: calibrate, quantize_graph (eightbit TF graph) and convert (TFLite).

Each takes a model (a path in any supported format, or a keras.Model), images
in any form `data.source.as_source` takes (a folder, a pixel array, a
tf.data.Dataset), and keyword options with the command line's defaults; each
returns a typed result holding everything the command prints.  Outputs are
written atomically and never over an input (see `io.atomic`).
"""

import dataclasses
import os
from typing import List, Optional, Sequence, Tuple, Union

from tfcompress.api.models import LoadOptions, load_frozen_released, model_path
from tfcompress.errors import TfcError

CALIBRATORS = ("minmax", "percentile", "kl", "mse")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalibrationOptions:
    """How activation ranges are found.

    Attributes:
      calibrator: minmax, percentile, kl or mse (convert also takes auto).
      percentile: kept by the percentile calibrator.
      batch_size: images per calibration run (None: as many as keep the largest activation within 16 MiB,
        at most 32).
      input_mean, input_std: normalization (pixel - mean) / std, one value or one per channel.
      channel_order: "rgb", or "bgr" for Caffe-style 3-channel models.
      equalize: cross-layer equalization of consecutive layers (`graph.equalize`; Nagel et al.,
        arXiv:1906.04721) before calibrating.  The float function is unchanged, but the activations are
        not, so a cache made with it belongs to the equalized graph: calibrate, quantize_graph and
        convert take it alike.  On by default: on the zoo models that have pairs it lowers the TFLite
        int8 error on all three and the eightbit graph's on two (README, fidelity benchmark).
    """
    calibrator: str = "minmax"
    percentile: float = 99.99
    batch_size: Optional[int] = None
    input_mean: Union[float, Sequence[float]] = 0.0
    input_std: Union[float, Sequence[float]] = 255.0
    channel_order: str = "rgb"
    equalize: bool = True

    def float_model(self, model):
        """(the optimized float model that is calibrated and quantized, the rewrites that made it)."""
        from tfcompress.graph.passes import PassResult, optimize  # pylint: disable=import-outside-toplevel
        float_model, passes = optimize(model)
        if self.equalize:
            from tfcompress.graph.equalize import equalize  # pylint: disable=import-outside-toplevel
            float_model, pairs = equalize(float_model)
            passes = list(passes) + [PassResult(name="equalize", rewrites=pairs)]
        return float_model, passes

    def calibrator_config(self):
        from tfcompress.calibrate.calibrators import CalibratorConfig  # pylint: disable=import-outside-toplevel
        if self.calibrator == "auto":
            raise TfcError("--calibrator=auto is only for convert (it compares quantized TFLite outputs)")
        return CalibratorConfig(method=self.calibrator, percentile=self.percentile)

    def preprocessing(self, model):
        from tfcompress.data.images import Preprocessing  # pylint: disable=import-outside-toplevel
        return Preprocessing.for_input(model.image_input().shape, mean=self.input_mean, std=self.input_std,
                                       channel_order=self.channel_order)

    def calibration_feed(self, model, images, data):
        """(image preprocessing or None, tensor data bound to `model` or None): how `model` is fed.

        Tensor data replaces images.  With neither, a model with one image input keeps its preprocessing
        (an image cache is checked against it); any other model is fed tensor data only.
        """
        from tfcompress.data.tensors import as_tensor_data  # pylint: disable=import-outside-toplevel
        if data is not None:
            if images is not None:
                raise TfcError("give calibration images or calibration data, not both")
            return None, as_tensor_data(data).bind(model)
        if images is None:
            try:
                return self.preprocessing(model), None
            except TfcError:
                return None, None
        return self.preprocessing(model), None


def _cache_inputs(model, images, cache) -> None:
    """A cache path must not lie in or over the model or an image folder."""
    from tfcompress.io.atomic import check_no_overlap  # pylint: disable=import-outside-toplevel
    if cache:
        check_no_overlap(cache, [model_path(model), images if isinstance(images, str) else None],
                         what="--calibration_cache")


def _folder(images) -> Optional[str]:
    return images if isinstance(images, str) else None


@dataclasses.dataclass
class CalibrateResult:
    """Attributes:
      cache: the `CalibrationCache` (statistics, ranges by `cache.ranges()`).
      reused: True when an existing cache was valid and no image was read.
      images_read: how many images were run.
      cache_path: where it was read or written (None: kept in memory only).
    """
    cache: object
    reused: bool
    images_read: int
    cache_path: Optional[str]


def calibrate(model, images=None, *, data=None, cache: Optional[str] = None, recalibrate: bool = False,
              options: CalibrationOptions = CalibrationOptions(), load: LoadOptions = LoadOptions(),
              shard: Optional[Tuple[int, int]] = None, progress: bool = False) -> CalibrateResult:
    """Collects activation statistics of `model` on `images`, reusing or writing the cache at `cache`.

    Sharded over several workers, each calls this with its `shard` and its own cache, and `merge_caches`
    joins the caches into the one a single process makes from all the images.

    Args:
      model: a SavedModel directory, .keras, .h5 or frozen .pb path, or a keras.Model.
      images: a folder, image paths, an (N, H, W, C) pixel array or a tf.data.Dataset; not read when a valid
        cache exists.
      data: instead of images, one array per model input (first axis = samples): a .npz path, a dict of
        arrays or a tf.data.Dataset of dicts (see `data.tensors`).  Any inputs, of any rank and dtype.
      cache: the JSON cache to reuse or write; a stale one is an error unless `recalibrate`.
      recalibrate: ignore an existing cache and replace it (only a tfcompress cache is ever replaced).
      options: calibrator and preprocessing.
      load: how the model file is read.
      shard: (index, count): read only images (samples) index, index + count, … of the set.
      progress: show a progress bar.

    Returns:
      A CalibrateResult.

    Raises:
      TfcError: bad model, images or cache, or a cache path over an input.
    """
    from tfcompress.calibrate.run import calibrate as run_calibration  # pylint: disable=import-outside-toplevel
    _cache_inputs(model, images, cache)
    _cache_inputs(model, data, cache)
    float_model, _ = options.float_model(load_frozen_released(model, load))
    prep, bound = options.calibration_feed(float_model, images, data)
    result = run_calibration(float_model, prep=prep, calibrator=options.calibrator_config(), images=images,
                             data=bound, cache_path=cache, recalibrate=recalibrate,
                             batch_size=options.batch_size, shard=shard, progress=progress)
    return CalibrateResult(cache=result.cache, reused=result.reused, images_read=result.images_read,
                           cache_path=cache)


def merge_caches(caches: Sequence[str], cache: str):
    """Merges the calibration caches of shards of one calibration (`calibrate(..., shard=)`) into `cache`.

    The histograms, minima, maxima and counts equal a single process's over all the shards' images, bit for
    bit, so every calibrator gives the same ranges; per-channel sums agree to float64 rounding.  `cache` is
    written atomically, only over an earlier tfcompress cache, and never over one being merged.

    Returns:
      The merged `CalibrationCache`.

    Raises:
      TfcError: fewer than two caches, an unreadable one, caches of different models, preprocessing or
        tensors, the same shard twice, or `cache` one of the inputs; nothing is written.
    """
    from tfcompress.calibrate import cache as cache_lib  # pylint: disable=import-outside-toplevel
    from tfcompress.io.atomic import check_no_overlap  # pylint: disable=import-outside-toplevel
    if not cache:
        raise TfcError("--calibration_cache is required: the merged cache is written there")
    if any(os.path.realpath(cache) == os.path.realpath(path) for path in caches):
        raise TfcError(f"--calibration_cache {cache} is one of the caches being merged; name a new file")
    check_no_overlap(cache, list(caches), what="--calibration_cache")
    loaded = []
    for path in caches:
        if not os.path.isfile(path):
            raise TfcError(f"calibration cache {path} does not exist")
        loaded.append((path, cache_lib.load(path)))
    merged = cache_lib.merge(loaded)
    if os.path.isdir(cache):
        raise TfcError(f"--calibration_cache {cache} is a directory; name a .json file")
    cache_lib.save(merged, cache)
    return merged


def _pair(values: Optional[Sequence[float]], flag: str):
    if values is None:
        return None
    values = tuple(float(v) for v in values)
    if len(values) != 2:
        raise TfcError(f"{flag}: give a min and a max")
    return values


def _calibration_note(result, cache: Optional[str], mention_cache: bool) -> str:
    unit = "samples" if "calibration_data" in result.cache.preprocessing else "images"
    if result.reused:
        return f"reused cache, 0 {unit} read"
    return f"{result.images_read} {unit} read" + (f", cache written to {cache}" if cache and mention_cache else "")


@dataclasses.dataclass
class QuantizeResult:
    """Attributes:
      output: the written SavedModel directory or .pb.
      float_model, quantized: the optimized float graph and the quantized one (FrozenModels).
      passes: the rewrites run on the float graph, with their counts.
      report: the quantizer's report (ops kept float and why).
      calibration: how ranges were found.
      agreement: against the float graph on `eval_images` (None when not measured).
    """
    output: str
    mode: str
    kernels: str
    float_model: object
    quantized: object
    passes: list
    report: object
    calibration: str
    agreement: Optional[object] = None


GRAPH_BIAS_CORRECTIONS = ("empirical", "none")


def quantize_graph(model, output: str, *, images=None, data=None, cache: Optional[str] = None,
                   recalibrate: bool = False, mode: str = "eightbit", kernels: str = "reference", bitdepth: int = 8,
                   min_weight_size: int = 1024, quantized_input: Optional[Sequence[float]] = None,
                   fallback_range: Optional[Sequence[float]] = None,
                   output_format: str = "saved_model", eval_images=None,
                   class_outputs: Optional[Sequence[Union[int, str]]] = None, bias_correction: str = "empirical",
                   options: CalibrationOptions = CalibrationOptions(), load: LoadOptions = LoadOptions(),
                   overwrite: bool = False, progress: bool = False) -> QuantizeResult:
    """Writes the eightbit (or weights-only) TF graph of `model` to `output`.

    Args:
      model: a SavedModel directory, .keras, .h5 or frozen .pb path, or a keras.Model.
      output: a new SavedModel directory, or a .pb with output_format="frozen_pb".
      images: calibration images (eightbit only), as for `calibrate`.
      data: instead of images, calibration arrays per input, as for `calibrate`; agreement is then measured
        on them unless `eval_images` is given.
      cache: a calibration cache to reuse or write.
      recalibrate: replace an existing cache.
      mode: eightbit, weights or weights_rounded.
      kernels: reference (portable) or onednn (fused; needs oneDNN ops on).
      bitdepth, min_weight_size: for the weights modes.
      quantized_input: (min, max): the float inputs arrive as quint8 codes over this range (eightbit).
      fallback_range: (min, max) for every tensor without a calibrated range (eightbit); with it and no
        images, data or cache, nothing is calibrated.
      output_format: saved_model or frozen_pb.
      eval_images: images to measure agreement with the float graph on, output by output (None: not measured).
      class_outputs: the outputs (indices or signature keys) compared as class vectors, by top-1 (default:
        softmax outputs, or the output of a single-output model).
      bias_correction: eightbit with the reference kernels: empirical (each conv's and matmul's mean output
        error, measured on the calibration images against the float graph layer by layer, absorbed in its
        float bias; `quantize.empirical_bias`) or none.  Other kernels, and calibration from a cache or
        from tensor data, skip it with a note.
      options: calibrator and preprocessing.
      load: how the model file is read.
      overwrite: replace an earlier output of tfcompress's.
      progress: show a progress bar.

    Raises:
      TfcError: bad model, images or cache; an output over an input, or existing without `overwrite`.
    """
    from tfcompress.calibrate.run import calibrate as run_calibration  # pylint: disable=import-outside-toplevel
    from tfcompress.evaluate import measure  # pylint: disable=import-outside-toplevel
    from tfcompress.io.atomic import check_output  # pylint: disable=import-outside-toplevel
    from tfcompress.io.writers import write_model  # pylint: disable=import-outside-toplevel
    from tfcompress.quantize.config import QuantConfig  # pylint: disable=import-outside-toplevel
    from tfcompress.quantize.convert import quantize_model  # pylint: disable=import-outside-toplevel
    if output_format not in ("saved_model", "frozen_pb"):
        raise TfcError(f"output_format {output_format!r}: give saved_model or frozen_pb")
    if bias_correction not in GRAPH_BIAS_CORRECTIONS:
        raise TfcError(f"unknown --bias_correction {bias_correction!r} (choose from "
                       f"{', '.join(GRAPH_BIAS_CORRECTIONS)})")
    check_output(output, [model_path(model), _folder(images), _folder(data), cache, _folder(eval_images)],
                 overwrite=overwrite, directory=output_format == "saved_model")
    _cache_inputs(model, images, cache)
    _cache_inputs(model, data, cache)
    config = QuantConfig(mode=mode, bitdepth=bitdepth, min_weight_size=min_weight_size, kernels=kernels,
                         quantized_input=_pair(quantized_input, "--quantized_input_min/max"),
                         fallback_range=_pair(fallback_range, "--quantized_fallback_min/max"))
    calibrator = options.calibrator_config()
    float_model, passes = options.float_model(load_frozen_released(model, load))
    measure.class_outputs(float_model, class_outputs)  # A bad choice fails before any work.
    prep, bound = options.calibration_feed(float_model, images, data)
    ranges, note = None, "not needed"
    if config.mode == "eightbit":
        if config.fallback_range is not None and images is None and bound is None and not cache:
            note = "none (every range is the fallback range or a FakeQuant's)"
        else:
            result = run_calibration(float_model, prep=prep, calibrator=calibrator, images=images, data=bound,
                                     cache_path=cache, recalibrate=recalibrate, batch_size=options.batch_size,
                                     progress=progress)
            ranges = result.cache.ranges(calibrator)
            note = _calibration_note(result, cache, mention_cache=True)
    quantized, report = quantize_model(float_model, config, ranges)
    if config.mode == "eightbit" and bias_correction == "empirical":
        if config.kernels != "reference":
            note += f"; no bias correction (--kernels={config.kernels} has no float bias to correct)"
        elif images is None:
            note += "; no bias correction (it needs --calibration_images)"
        else:
            from tfcompress.quantize import empirical_bias  # pylint: disable=import-outside-toplevel
            pixels = _first_images(images, prep, empirical_bias.MAX_IMAGES)
            quantized, corrected = empirical_bias.correct(quantized, float_model, pixels)
            note += f"; empirical bias correction on {len(corrected)} layers (from {len(pixels)} images)"
    write_model(quantized, output, output_format, overwrite=overwrite)
    agreement = None
    if eval_images is not None:
        agreement = measure.agreement(float_model, quantized, eval_images, options.preprocessing(float_model),
                                      classes=class_outputs)
    elif bound is not None:
        agreement = measure.agreement(float_model, quantized, classes=class_outputs, data=bound)
    return QuantizeResult(output=output, mode=config.mode, kernels=config.kernels, float_model=float_model,
                          quantized=quantized, passes=passes, report=report, calibration=note, agreement=agreement)


@dataclasses.dataclass
class ConvertResult:
    """Attributes:
      output: the written .tflite.
      flatbuffer: its bytes.
      quantize, per_channel: the mode and weight granularity.
      io: the input and output type (float, uint8, int8 or int16).
      calibration: how ranges were found; ranges_applied: activation ranges set from the cache.
      calibrator: the calibrator whose ranges were used (None when no range was needed).
      auto: with calibrator="auto", every candidate tried (`export.autocal` results); auto_best: the chosen one.
      layer_errors: with layer_report, the per-layer error ranking shown.
      agreement_count: images in the agreement set (0: none was read).
      notes: float-fallback outcomes.
      preflight: the target check (`export.targets.Preflight`).
      mean, std, labels: what the metadata records.
    """
    output: str
    flatbuffer: bytes
    quantize: str
    per_channel: bool
    io: str
    calibration: str
    ranges_applied: int
    calibrator: Optional[str]
    auto: list
    auto_best: Optional[object]
    layer_errors: list
    agreement_count: int
    notes: List[str]
    preflight: object
    mean: List[float]
    std: List[float]
    labels: Optional[List[str]]


BIAS_CORRECTIONS = ("empirical", "analytic", "none")
ROUNDINGS = ("nearest", "adaround")
VECTOR_RANGES = ("leave_one_out", "calibrated")
RESIDUAL_RANGES = ("sum", "calibrated")


def _first_images(images, prep, count: int):
    """The first `count` images of anything `data.source.as_source` takes, as one float NHWC array."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from tfcompress.data.source import as_source  # pylint: disable=import-outside-toplevel
    parts, seen = [], 0
    for batch in as_source(images).batches(prep, 32):
        parts.append(batch[:count - seen])
        seen += len(parts[-1])
        if seen >= count:
            break
    return np.concatenate(parts)


def _labels(labels, labels_from, output_size: int) -> Optional[List[str]]:
    from tfcompress.data.folders import check_output_size, read_image_set, read_labels_file  # pylint: disable=import-outside-toplevel
    if labels is not None and labels_from is not None:
        raise TfcError("give --labels or --labels_from, not both")
    if isinstance(labels, str):
        names = read_labels_file(labels)
        if len(names) != output_size:
            raise TfcError(f"labels file {labels} names {len(names)} classes but the model outputs "
                           f"{output_size} values")
        return names
    if labels is not None:
        names = [str(n) for n in labels]
        if len(names) != output_size or len(set(names)) != len(names) or not all(n.strip() for n in names):
            raise TfcError(f"labels must be {output_size} distinct non-empty names, got {len(names)}")
        return names
    if labels_from is not None:
        images = read_image_set(labels_from, require_labels=True)
        check_output_size(images, output_size, f"labelled folder {labels_from}")
        return images.class_names
    return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelCard:
    """What the TFLite Metadata says of the model (None: from the model's file name, and the mode)."""
    name: Optional[str] = None
    description: Optional[str] = None
    version: str = "1"


_MODE_TEXT = {"none": "Float32", "float16": "Float16-weight", "dynamic": "Dynamic-range quantized",
              "int8": "Int8 quantized", "uint8": "8-bit quantized", "int16x8": "16x8-bit quantized"}


def _model_name(model) -> str:
    if isinstance(model, (str, os.PathLike)):
        return os.path.splitext(os.path.basename(os.path.normpath(os.fspath(model))))[0]
    return str(getattr(model, "name", "") or "model")


def _pixel_input_range(ranges, float_model, prep, notes: List[str]):
    """`ranges` with the image input's range set to that of normalized pixels 0..255, where that is exact.

    A client of an integer-input model (the Task Library, MediaPipe) feeds
    raw uint8 pixels, so the input's quantization should map pixel p to
    (p - mean) / std: a scale of 1/std and a zero point of the mean.  With an
    integer mean that is exact, and lossless (one step per pixel level).  With
    a mean such as 127.5 no integer zero point exists: every pixel would be
    shifted by half a step, the same way, which costs more fidelity than the
    calibrated range's rounding (measured on the shipped patches VGG: output
    MSE +20%), so the calibrated range is kept and a note says so.
    """
    import numpy as np  # pylint: disable=import-outside-toplevel
    name = float_model.inputs[0].tensor
    if name not in ranges or len(float_model.inputs) != 1:
        return ranges
    mean, std = np.asarray(prep.means, np.float64), np.asarray(prep.stds, np.float64)
    if np.any(mean != np.round(mean)) or len(set(std.tolist())) != 1:
        notes.append(f"input quantization from the calibration images: with mean {prep.means} and std "
                     f"{prep.stds} no integer input maps raw pixels exactly (a client feeding uint8 pixels "
                     "sees its scale and zero point)")
        return ranges
    lo, hi = float(np.min((0.0 - mean) / std)), float(np.max((255.0 - mean) / std))
    return {**ranges, name: (lo, hi)}


def convert(model, output: str, *, quantize: str = "int8", images=None, cache: Optional[str] = None,
            recalibrate: bool = False, per_channel: bool = True, bias_correction: str = "empirical",
            rounding: str = "nearest", vector_ranges: str = "leave_one_out", residual_ranges: str = "sum",
            labels: Union[str, Sequence[str], None] = None,
            labels_from: Optional[str] = None,
            target: str = "generic", strict: bool = False, float_layers: Sequence[str] = (),
            min_agreement: Optional[float] = None, agreement_images=None, layer_report: int = 0,
            io: Optional[str] = None, card: ModelCard = ModelCard(),
            options: CalibrationOptions = CalibrationOptions(), load: LoadOptions = LoadOptions(),
            overwrite: bool = False, progress: bool = False) -> ConvertResult:
    """Converts `model` to a TFLite flatbuffer at `output`, int8/uint8 ranges from our calibration.

    Args:
      model: a SavedModel directory, .keras, .h5 or frozen .pb path, or a keras.Model.
      output: the .tflite to write.
      quantize: none, float16, dynamic, int8, uint8 or int16x8.
      images: calibration images, as for `calibrate` (int8/uint8/int16x8).
      cache: a calibration cache to reuse or write.
      recalibrate: replace an existing cache.
      per_channel: per-channel weights (False: per-tensor).
      bias_correction: int8/uint8: empirical (measure each layer's mean output error on the calibration
        images, layer by layer, and absorb it in the int32 bias; `export.empirical_bias`), analytic (subtract
        the expected weight-rounding shift from the cache's channel means, no image read) or none.  Without
        images (a reused cache only) empirical is skipped, with a note.
      rounding: int8/uint8 weights: nearest, or adaround (each layer's up-or-down rounding learned from the
        calibration images, before bias correction; `export.adaround`).  Needs calibration images.
      vector_ranges: int8/uint8 with min/max ranges: leave_one_out (each per-image vector tensor's range,
        a pool's or dense layer's output, widened by the factor with the least leave-one-image-out error on
        the calibration images; `calibrate.vectors`) or calibrated (as calibrated).  Without images (a reused
        cache only) leave_one_out is skipped, with a note.
      residual_ranges: int8/uint8 with min/max ranges: sum (a residual Add's operand that nothing else reads
        takes the union of its range and the sum's; `calibrate.sums`) or calibrated (as calibrated).
      labels: a labels file path, or the names in output order, for the metadata.
      labels_from: a labelled folder DIR/<label>/ whose class names become the labels.
      target: arm-cpu, hexagon-dsp, edgetpu, gpu or generic: the preflight to run.
      strict: write nothing if the preflight finds a problem.
      float_layers: layers kept float (int8/uint8).
      min_agreement: keep the worst layers float until top-1 agreement reaches this fraction.
      agreement_images: images for min_agreement, layer_report and calibrator="auto" (default: `images`).
      layer_report: how many per-layer error rows to return (-1: all).
      io: input and output type, float, uint8 or int8 (None: the mode's default, uint8 for int8 and uint8,
        which the Task Library and MediaPipe accept).  With integer I/O and an integer mean the image
        input's range is the whole pixel range, so a client feeds raw uint8 pixels (`_pixel_input_range`).
      card: the name, description and version the standard TFLite Metadata records.
      options: calibrator (minmax, percentile, kl, mse or auto) and preprocessing.
      load: how the model file is read.
      overwrite: replace an earlier output of tfcompress's.
      progress: show a progress bar.

    Raises:
      TfcError: bad model, images, labels or cache; an impossible option combination; a strict preflight
        failure; an output over an input, or existing without `overwrite`.
    """
    import numpy as np  # pylint: disable=import-outside-toplevel
    from tfcompress.calibrate.calibrators import CalibratorConfig  # pylint: disable=import-outside-toplevel
    from tfcompress.calibrate import sums, vectors  # pylint: disable=import-outside-toplevel
    from tfcompress.calibrate.run import calibrate as run_calibration  # pylint: disable=import-outside-toplevel
    from tfcompress.data.source import as_source  # pylint: disable=import-outside-toplevel
    from tfcompress.export import adaround, autocal, empirical_bias, fallback  # pylint: disable=import-outside-toplevel
    from tfcompress.export.metadata import ModelInfo, attach  # pylint: disable=import-outside-toplevel
    from tfcompress.export.targets import get_target, preflight  # pylint: disable=import-outside-toplevel
    from tfcompress.export.tflite import (TfliteConfig, calibrated_flatbuffer, convert_qat,  # pylint: disable=import-outside-toplevel
                                          convert_tflite, is_qat, quantize_calibrated, set_io)
    from tfcompress.graph.runner import run_model  # pylint: disable=import-outside-toplevel
    from tfcompress.io.atomic import check_output, write_bytes  # pylint: disable=import-outside-toplevel
    from tfcompress.quantize.bias_correction import correct_biases  # pylint: disable=import-outside-toplevel

    check_output(output, [model_path(model), _folder(images), cache, labels if isinstance(labels, str) else None,
                          labels_from, _folder(agreement_images)], overwrite=overwrite, directory=False)
    _cache_inputs(model, images, cache)
    config = TfliteConfig(quantize=quantize, per_channel=per_channel, io=io)
    if bias_correction not in BIAS_CORRECTIONS:
        raise TfcError(f"unknown --bias_correction {bias_correction!r} (choose from {', '.join(BIAS_CORRECTIONS)})")
    if rounding not in ROUNDINGS:
        raise TfcError(f"unknown --rounding {rounding!r} (choose from {', '.join(ROUNDINGS)})")
    if vector_ranges not in VECTOR_RANGES:
        raise TfcError(f"unknown --vector_ranges {vector_ranges!r} (choose from {', '.join(VECTOR_RANGES)})")
    if residual_ranges not in RESIDUAL_RANGES:
        raise TfcError(f"unknown --residual_ranges {residual_ranges!r} (choose from {', '.join(RESIDUAL_RANGES)})")
    if rounding == "adaround" and (not config.needs_ranges or images is None):
        raise TfcError("--rounding=adaround needs --quantize=int8 or uint8 and --calibration_images (it learns "
                       "from the images' layer outputs)")
    auto = options.calibrator == "auto"
    calibrator = CalibratorConfig() if auto else options.calibrator_config()
    get_target(target)
    wants_layers = bool(float_layers or min_agreement is not None or layer_report)
    if wants_layers and not config.needs_ranges:
        raise TfcError("--float_layers, --min_agreement and --layer_report apply to --quantize=int8 and uint8 only")
    if min_agreement is not None and not 0.0 < min_agreement <= 1.0:
        raise TfcError(f"--min_agreement must be in (0, 1], got {min_agreement}")

    float_model, _ = options.float_model(load_frozen_released(model, load))
    qat = is_qat(float_model)
    if qat and (config.quantize != "int8" or wants_layers or auto or rounding != "nearest"):
        raise TfcError("a quantization-aware-trained model converts with --quantize=int8 only, without "
                       "--calibrator=auto, float layers or AdaRound: its ranges and weights come from training")
    prep = options.preprocessing(float_model)
    memo = []

    def agreement_set():
        """(float NHWC images, float-graph outputs) for calibrator=auto, the fallback search and the report."""
        if not memo:
            source = agreement_images if agreement_images is not None else images
            if source is None:
                raise TfcError("--calibrator=auto, --min_agreement and --layer_report need --agreement_images or "
                               "--calibration_images")
            x = np.concatenate(list(as_source(source).batches(prep, 32)))
            memo.append((x, run_model(float_model, x)))
        return memo[0]

    names = _labels(labels, labels_from,
                    int(float_model.outputs[0].shape[-1]) if float_model.outputs[0].shape else -1)
    # What is converted: the float model, or (int8/uint8) the float model with corrected biases.
    # Agreement is always measured against the float model itself.
    export_model = float_model
    ranges, dataset, note, tried, best, ebc_images = None, None, "not needed", [], None, None
    pixel_notes: List[str] = []
    if qat:
        note = "quantization-aware model: ranges learned in training, no image read"
    elif config.needs_ranges:
        result = run_calibration(float_model, prep=prep, calibrator=calibrator, images=images, cache_path=cache,
                                 recalibrate=recalibrate, batch_size=options.batch_size, progress=progress)
        note = _calibration_note(result, cache, mention_cache=False)
        if bias_correction == "analytic":
            export_model, corrected = correct_biases(float_model, result.cache.stats, config.per_channel)
            note += f"; analytic bias correction on {corrected} layers"
        if bias_correction == "empirical" and images is not None:
            # Read when used, after the conversion: not held through the converter's peak.
            ebc_images = lambda: _first_images(images, prep, empirical_bias.MAX_IMAGES)  # noqa: E731
        if auto:
            x, reference = agreement_set()
            ebc = None if ebc_images is None else ebc_images()  # Read once for every candidate.
            finish = None if ebc is None else (
                lambda quantized, calibrated: empirical_bias.correct(quantized, calibrated, ebc)[0])
            best, tried = autocal.choose_calibrator(export_model, result.cache.ranges, config, x, reference,
                                                    autocal.candidates(options.percentile), finish)
            calibrator = best.calibrator
        ranges = result.cache.ranges(calibrator)
        # Both widen min/max ranges only: a clipping calibrator's (or auto's choice) is left as chosen.
        widens = calibrator.method == "minmax" and not auto
        if vector_ranges == "leave_one_out" and widens:
            if images is None:
                note += "; vector ranges as calibrated (no calibration images: the cache holds no pixels)"
            else:
                ranges, widened = vectors.widen(float_model, ranges, as_source(images).batches(prep, 32))
                note += f"; {len(widened)} vector range(s) widened by leave-one-image-out error"
        if residual_ranges == "sum" and widens:
            ranges, grown = sums.widen(float_model, ranges)
            note += f"; {len(grown)} residual branch range(s) given their sum's"
        if config.io != "float":
            ranges = _pixel_input_range(ranges, float_model, prep, pixel_notes)
    elif config.quantize == "int16x8":
        if images is None:
            raise TfcError("--quantize=int16x8 needs --calibration_images (its quantizer runs the images itself)")
        source = as_source(images)
        note = f"{len(source)} images run by the converter's int16x8 quantizer"
        dataset = lambda: ([b] for b in source.batches(prep, 1))  # noqa: E731

    notes, ranking = list(pixel_notes), []
    calibrated = None
    if config.needs_ranges and not qat:
        calibrated, applied = calibrated_flatbuffer(export_model, ranges, config.per_channel)
    if wants_layers:
        flatbuffer = quantize_calibrated(calibrated, config.quantize, config.per_channel)
        all_int8_size = len(flatbuffer)
        requested = fallback.resolve_float_layers(list(float_layers), flatbuffer)
        if layer_report or min_agreement is not None:
            x, reference = agreement_set()
            float_fb = convert_tflite(float_model, TfliteConfig(quantize="none")).flatbuffer
            ranking = fallback.layer_errors(float_fb, flatbuffer, x)
        if min_agreement is not None:
            x, reference = agreement_set()
            found = fallback.search_min_agreement(calibrated, config.quantize, config.per_channel, ranking, x,
                                                  reference, min_agreement, start=requested)
            flatbuffer = found.flatbuffer
            notes.append(f"min_agreement {min_agreement:g}: top-1 agreement {100 * found.agreement:.2f}% on "
                         f"{len(x)} images with {len(found.float_layers)} layer(s) float"
                         + ("" if found.reached else " (target NOT reached: every ranked layer tried)"))
        elif requested:
            flatbuffer = quantize_calibrated(calibrated, config.quantize, config.per_channel, requested)
        kept = fallback.float_outputs(flatbuffer)
        if kept:
            notes.append(f"float layers: {', '.join(fallback.layer_label(k) for k in kept)}; size cost "
                         f"{len(flatbuffer) - all_int8_size:+d} bytes over all-int8 ({all_int8_size} bytes)")
        missing = [r for r in requested if r not in kept]
        if missing:
            notes.append("kept int8 by the quantizer (a neighbouring op requires a quantized tensor): "
                         + ", ".join(fallback.layer_label(r) for r in missing))
    elif qat:
        flatbuffer, applied = convert_qat(export_model), []
    elif calibrated is not None:
        flatbuffer = quantize_calibrated(calibrated, config.quantize, config.per_channel)
    else:
        converted = convert_tflite(export_model, config, ranges, dataset)
        flatbuffer, applied = converted.flatbuffer, converted.ranges_applied
    if calibrated is not None and rounding == "adaround":
        flatbuffer, learned, skipped = adaround.adaround(flatbuffer, calibrated,
                                                         _first_images(images, prep, adaround.MAX_IMAGES))
        note += (f"; AdaRound on {sum(r.kept for r in learned)} of {len(learned) + len(skipped)} layers"
                 + (f" (nearest kept where learned rounding did not lower the error: "
                    f"{sum(not r.kept for r in learned)})" if any(not r.kept for r in learned) else ""))
        if skipped:
            notes.append("AdaRound skipped: " + "; ".join(f"{fallback.layer_label(s.tensor)} ({s.reason})"
                                                           for s in skipped))
    if calibrated is not None and bias_correction == "empirical":
        if ebc_images is None:
            note += "; empirical bias correction skipped (no calibration images: the cache holds no pixels)"
        else:
            flatbuffer, corrected_layers = empirical_bias.correct(flatbuffer, calibrated, ebc_images())
            note += f"; empirical bias correction on {len(corrected_layers)} layers"
    if config.needs_ranges or qat:
        flatbuffer = set_io(flatbuffer, config.io)
    flatbuffer = attach(flatbuffer, ModelInfo(
        name=card.name or _model_name(model), version=card.version, mean=prep.means, std=prep.stds,
        labels=names, channel_order=prep.channel_order,
        description=card.description or f"{_MODE_TEXT[config.quantize]} image model, {config.io} input and "
        f"output, converted by tfcompress; input normalized as (pixel - mean) / std"))

    check = preflight(flatbuffer, target)
    if strict and not check.ok:
        raise TfcError(f"--strict: the {target} preflight found problems; {output} not written")
    write_bytes(output, flatbuffer, overwrite=overwrite)
    shown = ranking if layer_report < 0 else ranking[:layer_report]
    return ConvertResult(output=output, flatbuffer=flatbuffer, quantize=config.quantize,
                         per_channel=config.per_channel, io=config.io, calibration=note, ranges_applied=len(applied),
                         calibrator=calibrator.method if config.needs_ranges and not qat else None, auto=tried,
                         auto_best=best, layer_errors=shown, agreement_count=len(memo[0][0]) if memo else 0,
                         notes=notes, preflight=check, mean=prep.means, std=prep.stds,
                         labels=names)
