"""The compress job: a recipe's steps run in this process through the API, each artifact measured.

A recipe step names a job and its options (see `tfcompress.recipe`).  The
option names are the job function's keyword arguments and the fields of its
options dataclass (`TrainOptions` for the Keras jobs, `CalibrationOptions` for
convert), plus the command line's names where those differ (`per_tensor`,
`calibration_images`, `drop_blocks`, `runs`).  A recipe is checked against
those signatures before any step runs.
"""

import dataclasses
import inspect
import json
import os
from typing import Callable, Dict, List, Optional, Tuple

from tfcompress import recipe as recipe_lib
from tfcompress.errors import TfcError

# Names a recipe may not set: the runner sets them (or they are not options).
_RUNNER = {"model", "student", "output", "options", "load", "overwrite", "progress"}

# Command-line names that differ from the API's: recipe name -> (keyword argument, value map).
_ALIASES: Dict[str, Dict[str, Tuple[str, Callable]]] = {
    "convert": {"per_tensor": ("per_channel", lambda v: not v), "calibration_images": ("images", lambda v: v),
                "calibration_cache": ("cache", lambda v: v)},
    "drop_blocks": {"drop_blocks": ("drop", lambda v: v), "runs": ("latency_runs", lambda v: v)},
}


def _job(command: str):
    """(the API function, its options dataclass or None) for a recipe command."""
    from tfcompress.api import graph_jobs, keras_jobs  # pylint: disable=import-outside-toplevel
    if command == "convert":
        return graph_jobs.convert, graph_jobs.CalibrationOptions
    if command == "pack":
        return None, None
    return getattr(keras_jobs, command), keras_jobs.TrainOptions


def known_options(command: str) -> List[str]:
    """Every option name a recipe step of `command` may set, read from the API's signatures."""
    function, options = _job(command)
    if function is None:
        return []
    names = {p.name for p in inspect.signature(function).parameters.values()
             if p.kind == inspect.Parameter.KEYWORD_ONLY}
    if options is not None:
        names |= {f.name for f in dataclasses.fields(options)}
    names |= set(_ALIASES.get(command, {}))
    return sorted(names - _RUNNER - {"teacher"} | ({"teacher"} if command == "distill" else set()))


def check_recipe(steps) -> None:
    """Raises TfcError for a step option its job does not take (before anything runs)."""
    for step in steps:
        known = set(known_options(step.command))
        for name in step.flags:
            if name not in known:
                raise TfcError(f"step {step.index} ({step.command}): unknown flag {name!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompressData:
    """The data every step shares.

    Attributes:
      train_images, labels: for the training steps (required when the recipe trains).
      calibration_images: for an integer convert step; the training images when None.
      eval_images: every artifact is measured on these (labelled: accuracy too); required.
      input_mean, input_std, channel_order: preprocessing for every step.
      seed: for every step.
    """
    train_images: object = None
    calibration_images: object = None
    eval_images: object = None
    labels: Optional[str] = None
    input_mean: object = 0.0
    input_std: object = 255.0
    channel_order: str = "rgb"
    seed: int = 0


def _complete(data: CompressData, steps) -> CompressData:
    """`data` with calibration images defaulted to the training images, checked to hold what the steps need.

    Raises:
      TfcError: no eval images; a training step and no training images; an integer convert step and neither
        calibration nor training images.
    """
    if data.eval_images is None:
        raise TfcError("eval images are required (--eval_images): every artifact is measured on them")
    trains = [s for s in steps if s.command not in ("convert", "pack")]
    if trains and data.train_images is None:
        raise TfcError(f"step {trains[0].index} ({trains[0].command}) trains: training images are required "
                       "(--train_images)")
    integer = [s for s in steps if s.command == "convert" and str(s.flags.get("quantize", "int8")) in
               ("int8", "uint8", "int16x8")]
    if data.calibration_images is None:
        if integer and data.train_images is None:
            raise TfcError(f"step {integer[0].index} (convert) calibrates: calibration images are required "
                           "(--calibration_images, or --train_images)")
        data = dataclasses.replace(data, calibration_images=data.train_images)
    return data


def _split(step, options_cls) -> Tuple[dict, dict]:
    """(keyword arguments, options fields) from a step's flags."""
    aliases = _ALIASES.get(step.command, {})
    fields = {f.name for f in dataclasses.fields(options_cls)} if options_cls else set()
    kwargs, options = {}, {}
    for name, value in step.flags.items():
        if name in aliases:
            target, convert = aliases[name]
            kwargs[target] = convert(value)
        elif name in fields:
            options[name] = value
        else:
            kwargs[name] = value
    for name in ("layers", "exclude", "float_layers", "features", "sparsity_map"):
        if isinstance(kwargs.get(name), str):
            kwargs[name] = [v for v in kwargs[name].split(",") if v]
    return kwargs, options


def _run_step(step, current: str, output: str, data: CompressData, teacher: str, progress: bool) -> None:
    from tfcompress.io.atomic import save_keras, write_bytes  # pylint: disable=import-outside-toplevel
    function, options_cls = _job(step.command)
    if function is None:  # pack
        from tfcompress.export.tfc import pack  # pylint: disable=import-outside-toplevel
        with open(current, "rb") as f:
            write_bytes(output, pack(f.read(), current).data)
        return
    kwargs, fields = _split(step, options_cls)
    common = dict(input_mean=data.input_mean, input_std=data.input_std, channel_order=data.channel_order)
    if step.command == "convert":
        kwargs.setdefault("images", data.calibration_images)
        function(current, output, options=options_cls(**{**common, **fields}), progress=progress, **kwargs)
        return
    kwargs.setdefault("train_images", data.train_images)
    kwargs.setdefault("labels", data.labels)
    options = options_cls(**{**common, "seed": data.seed, "progress": progress, **fields})
    if step.command == "distill":
        result = function(current, kwargs.pop("teacher", teacher), options=options, **kwargs)
    else:
        result = function(current, options=options, **kwargs)
    save_keras(result.model, output)


def compress(model: str, recipe: str, output: str, *, data: CompressData, latency_runs: int = 100,
             overwrite: bool = False, progress: bool = False) -> dict:
    """Runs `recipe` on `model`, writing every artifact and manifest.json into the folder `output`.

    Each step reads the previous step's artifact; the folder appears only when
    every step has succeeded.  Every artifact is measured on `data.eval_images`
    (accuracy when labelled, top-1 agreement with the input, .tflite sizes raw
    and gzip -9, packed size, LiteRT latency in one interleaved run).

    Args:
      model: the .keras/.h5 (or .tflite, for a recipe that only packs) to start from.
      recipe: the recipe YAML file.
      output: the folder to write (a new one, or with `overwrite` one compress wrote before).
      data: images and preprocessing shared by the steps.
      latency_runs: timed LiteRT runs per artifact (0: no latency).
      overwrite: replace an earlier output of tfcompress's.
      progress: the steps' progress bars.

    Returns:
      The manifest (as written to manifest.json).

    Raises:
      TfcError: a bad recipe (checked before any step runs), a step that fails
        (naming it), or an output over an input.
    """
    from tfcompress.data.source import as_source  # pylint: disable=import-outside-toplevel
    from tfcompress.evaluate.compare import measure  # pylint: disable=import-outside-toplevel
    from tfcompress.io.atomic import atomic_dir, check_output  # pylint: disable=import-outside-toplevel
    if not os.path.exists(model):
        raise TfcError(f"model {model} does not exist")
    folders = [v for v in (data.train_images, data.calibration_images, data.eval_images, data.labels)
               if isinstance(v, str)]
    check_output(output, [model, recipe, *folders], overwrite=overwrite, directory=True)
    try:
        with open(recipe, encoding="utf-8") as f:
            recipe_text = f.read()
    except OSError as e:
        raise TfcError(f"cannot read recipe {recipe}: {e.strerror}") from e
    steps = recipe_lib.parse_recipe(recipe_text, recipe, recipe_lib.kind_of(model))
    try:
        check_recipe(steps)
    except TfcError as e:
        raise TfcError(f"{recipe}: {e}") from e
    data = _complete(data, steps)
    images = as_source(data.eval_images)

    with atomic_dir(output, overwrite=overwrite) as staging:
        current, outputs = os.path.abspath(model), []
        for step in steps:
            path = os.path.join(staging, step.output_name)
            try:
                _run_step(step, current, path, data, os.path.abspath(model), progress)
            except TfcError as e:
                raise TfcError(f"recipe step {step.index} ({step.command}) failed: {e}") from e
            outputs.append(path)
            current = path
        rows = measure([model] + outputs, images, mean=data.input_mean, std=data.input_std,
                       latency_runs=latency_runs)
        float_raw = rows[0].tflite_bytes
        manifest = {
            "format": "tfcompress.manifest", "version": 1,
            "recipe": {"path": recipe, "sha256": recipe_lib.file_sha256(recipe)},
            "input": {"path": model, "sha256": recipe_lib.file_sha256(model)},
            "data": {"train_images": _fingerprint(data.train_images),
                     "calibration_images": _fingerprint(data.calibration_images),
                     "eval_images": _fingerprint(images if not isinstance(data.eval_images, str)
                                                 else data.eval_images),
                     "input_mean": data.input_mean, "input_std": data.input_std},
            "seed": data.seed,
            "versions": recipe_lib.versions(),
            "steps": [],
        }
        for i, row in enumerate(rows):
            step = steps[i - 1] if i else None
            entry = {"index": i, "command": step.command if step else "input",
                     "flags": step.flags if step else {}, "output": os.path.basename(row.path) if step else model,
                     "sha256": recipe_lib.file_sha256(row.path), **row.as_dict(),
                     "ratio_vs_float_tflite": float_raw / (row.packed_bytes if row.path.endswith(".tfc")
                                                           else row.tflite_bytes)}
            entry["latency_ratio"] = (row.latency_ms / rows[0].latency_ms) if row.latency_ms else None
            del entry["path"]
            manifest["steps"].append(entry)
        with open(os.path.join(staging, "manifest.json"), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.write("\n")
    return manifest


def _fingerprint(images):
    """A folder's file fingerprint, or the digest of in-memory images (an ImageSource is used as it is)."""
    if images is None or isinstance(images, str):
        return recipe_lib.folder_fingerprint(images)
    from tfcompress.data.source import as_source  # pylint: disable=import-outside-toplevel
    source = as_source(images)
    return {"path": source.description, "files": len(source), "sha256": source.fingerprint()}
