"""The Keras-side jobs: prune, cluster, pq, lowrank, drop_blocks, distill, qat and binarize.

Each takes a model (a .keras/.h5 path or a keras.Model), training images in
any form `data.source.as_source` takes, the method's own options and shared
`TrainOptions`, and returns a `KerasResult` whose `model` is the compressed
keras.Model (uncompiled; save it with `io.atomic.save_keras`).  Training
distils from the original by default (Hinton et al., arXiv:1503.02531), with
hard labels mixed in when the images are labelled; `distill_from="none"`
trains on labels alone.

Imported before TensorFlow, these jobs start it with oneDNN's kernels off unless TF_ENABLE_ONEDNN_OPTS is
set: oneDNN's training kernels crash on some CPUs (`keras.kernels`).
"""

import dataclasses
import sys
from typing import Dict, List, Optional, Sequence, Union

from tfcompress.keras import kernels

kernels.prefer_tf_kernels()  # Before anything below imports TensorFlow.

from tfcompress.api.models import load_keras_model  # noqa: E402
from tfcompress.errors import TfcError  # noqa: E402
from tfcompress.keras.heads import class_head, heads  # noqa: E402

DISTILL_FROM = ("original", "none")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """How a job fine-tunes.

    Attributes:
      epochs: training epochs (None: the job's default, as on the command line).
      batch_size, learning_rate: Adam steps.
      temperature, alpha: distillation temperature, and the weight of hard labels when the images have them.
      seed: seeds shuffling, sampling and TF.
      input_mean, input_std, channel_order: how pixels become input.
      progress: Keras progress: bars on a terminal, one line per epoch otherwise (logs, pipes).
      distribute: none, mirrored or multi_worker: data-parallel training with tf.distribute (see
        `keras.distribute`); batch_size is the global batch.  multi_worker reads TF_CONFIG and must start
        before TensorFlow runs anything (`keras.distribute.strategy`).
      function_matching: when the original is the only teacher (no labels), distill on batches half of fresh
        shifted and mixed views, half of the images, that it labels as they are drawn (`keras.views`; Beyer
        et al., arXiv:2106.05237), with the learning rate on a cosine decay.  Give it many epochs: each is
        len(images) / batch_size steps.
    """
    epochs: Optional[int] = None
    batch_size: int = 32
    learning_rate: float = 1e-3
    temperature: float = 4.0
    alpha: float = 0.5
    seed: int = 0
    input_mean: Union[float, Sequence[float]] = 0.0
    input_std: Union[float, Sequence[float]] = 255.0
    channel_order: str = "rgb"
    progress: bool = False
    distribute: str = "none"
    function_matching: bool = False


@dataclasses.dataclass
class KerasResult:
    """A job's outcome.

    Attributes:
      model: the compressed keras.Model.
      original: the model it started from.
      summary: what was done, in a few words.
      training: how it was trained ("distilled from the original, 200 images").
      rows: the method's report table (first row: header).
      notes: further lines of the report.
      prep: the preprocessing the images went through.
      details: the method's own result object (e.g. `prune.blocks.DropResult`), or None.
    """
    model: object
    original: object
    summary: str
    training: str
    rows: List[list]
    notes: List[str]
    prep: object
    details: object = None


class _Training:
    """The model, images, teacher and TrainConfig a job starts from."""

    def __init__(self, model, train_images, labels, distill_from: Optional[str], options: TrainOptions,
                 default_epochs: int):
        import keras  # pylint: disable=import-outside-toplevel
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        from tfcompress.data.images import Preprocessing  # pylint: disable=import-outside-toplevel
        from tfcompress.data.source import as_source  # pylint: disable=import-outside-toplevel
        from tfcompress.io.keras_models import is_tf_keras_h5  # pylint: disable=import-outside-toplevel
        from tfcompress.keras.train import TrainConfig  # pylint: disable=import-outside-toplevel
        distill_from = distill_from or "original"
        if distill_from not in DISTILL_FROM:
            raise TfcError(f"distill_from must be one of {', '.join(DISTILL_FROM)}, got {distill_from!r}")
        if train_images is None:
            raise TfcError("training images are required (--train_images)")
        keras.utils.set_random_seed(options.seed)
        tf.config.experimental.enable_op_determinism()
        self.original, self.path = load_keras_model(model)  # NaN/Inf weights refused there
        # A tf_keras .h5 is read by Keras 3 above too; magnitude pruning sends it through tfmot instead.
        self.tf_keras = bool(self.path) and self.path.lower().endswith((".h5", ".hdf5")) and is_tf_keras_h5(self.path)
        _, h, w, c = self.original.input_shape
        self.prep = Preprocessing(height=int(h), width=int(w), channels=int(c), mean=options.input_mean,
                                  std=options.input_std, channel_order=options.channel_order)
        self.distill = distill_from == "original"
        source = as_source(train_images, labels=None if isinstance(labels, str) else labels,
                           labels_file=labels if isinstance(labels, str) else None, require_labels=not self.distill)
        head = class_head(self.original)
        if source.labelled and head is None:
            raise TfcError(f"{source.description} is labelled, but the model has no class output; "
                           "distill from the original instead")
        outputs = head.width if head is not None else 0
        if source.labelled and source.class_names is not None and len(source.class_names) != outputs:
            raise TfcError(f"{source.description} has {len(source.class_names)} classes but the model outputs "
                           f"{outputs}")
        if source.labelled and source.class_names is None and int(source.labels.max()) >= outputs:
            raise TfcError(f"{source.description}: label {int(source.labels.max())} but the model outputs {outputs}")
        self.x = source.array(self.prep)
        self.labels = source.labels
        self.teacher = self.original if self.distill else None
        epochs = default_epochs if options.epochs is None else options.epochs
        self.config = TrainConfig(epochs=epochs, batch_size=options.batch_size, learning_rate=options.learning_rate,
                                  temperature=options.temperature, alpha=options.alpha, seed=options.seed,
                                  verbose=(1 if sys.stdout.isatty() else 2) if options.progress else 0,
                                  distribute=options.distribute, function_matching=options.function_matching)

    @property
    def batches(self):
        from tfcompress.keras.train import batches  # pylint: disable=import-outside-toplevel
        return batches(self.x, self.config.batch_size)

    def note(self) -> str:
        how = "distilled from the original" if self.distill else "labels only"
        if self.distill and self.labels is not None:
            how += " and labels"
        elif self.distill and self.config.on_views(labelled=False):
            how += " by function matching on shifted, mixed views"
        return f"{how}, {len(self.x)} images"

    def result(self, model, summary: str, rows, notes=(), details=None) -> KerasResult:
        return KerasResult(model=model, original=self.original, summary=summary, training=self.note(),
                           rows=[list(r) for r in rows], notes=list(notes), prep=self.prep, details=details)


def _parse_map(items) -> Dict[str, float]:
    if isinstance(items, dict):
        return {str(k): float(v) for k, v in items.items()}
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            out[name] = float(value)
        except ValueError as e:
            raise TfcError(f"--sparsity_map entry {item!r} is not name=fraction") from e
    return out


def _parse_m_by_n(value):
    if not value:
        return None
    if isinstance(value, str):
        try:
            keep, group = (int(v) for v in value.split(":"))
        except ValueError as e:
            raise TfcError(f"--m_by_n must look like 2:4, got {value!r}") from e
    else:
        keep, group = value
    if not 0 < keep < group:
        raise TfcError(f"--m_by_n {keep}:{group}: need 0 < N < M")
    return keep, group


FILTER_METHODS = ("l1", "l2", "apoz", "thinet", "random")


def prune(model, *, method: str = "magnitude", sparsity: float = 0.5, ratio: float = 0.5, train_images=None,
          labels=None, distill_from: Optional[str] = None, schedule: str = "polynomial", ramp: float = 0.6,
          frequency: int = 10, sparsity_map=(), exclude: Sequence[str] = (), m_by_n=None,
          layers: Sequence[str] = (), layer_epochs: int = 1, residual_groups: bool = True,
          allocation: str = "uniform", to_original: bool = True, options: TrainOptions = TrainOptions()
          ) -> KerasResult:
    """Magnitude pruning (Zhu & Gupta, arXiv:1710.01878) or filter pruning with physical thinning.

    Args:
      model: a .keras/.h5 path or a keras.Model (a tf_keras .h5 is magnitude-pruned through tfmot).
      method: magnitude, or a filter criterion: l1, l2 (Li et al., arXiv:1608.08710), apoz (Hu et al.,
        arXiv:1607.03250), thinet (Luo et al., arXiv:1707.06342) or random.
      sparsity: magnitude: the final fraction of zero weights per layer, in [0, 1).
      ratio: filter methods: the fraction removed, in (0, 1): of each channel group's channels (uniform
        allocation) or of the model's MACs (sensitivity allocation).
      train_images, labels: images (folder, pixel array or dataset) and, for an array, labels; for a folder,
        a labels file.
      distill_from: "original" (default) or "none".
      schedule, ramp, frequency: magnitude schedule (constant or polynomial), its ramp fraction, mask period.
      sparsity_map: per-layer final sparsity, {"name": 0.8} or ["name=0.8"].
      exclude: layers left unpruned (magnitude).
      m_by_n: structured N:M sparsity, "2:4" or (2, 4).
      layers: filter methods: only these layers.
      layer_epochs: filter methods: fine-tuning epochs after each layer (each channel group).
      residual_groups: filter methods: also thin channel groups tied by residual Adds and SE Multiplies (all
        their producers at once, after DepGraph, Fang et al., arXiv:2301.12900); False thins inside blocks only.
      allocation: filter methods: "uniform" (every group loses `ratio` of its channels, as ThiNet's paper does)
        or "sensitivity" (per-group ratios from each group's measured effect on the outputs, removing `ratio`
        of the model's MACs); see `filters.FilterConfig`.
      to_original: thinet: each thinned layer's consumers are refitted, by least squares over their whole
        kernels, to the original model's outputs (He et al., arXiv:1707.06168); False rescales them to the
        current model's outputs, ThiNet's way, and lets the errors of earlier layers compound.
      options: training options (default 10 epochs).

    Raises:
      TfcError: bad options, a model that is not Keras, bad images.
    """
    from tfcompress.keras.train import set_bn_statistics  # pylint: disable=import-outside-toplevel
    from tfcompress.prune import filters, magnitude  # pylint: disable=import-outside-toplevel
    if method != "magnitude" and method not in FILTER_METHODS:
        raise TfcError(f"method must be magnitude or one of {', '.join(FILTER_METHODS)}, got {method!r}")
    if method == "magnitude" and not 0.0 <= sparsity < 1.0:
        raise TfcError(f"--sparsity must be in [0, 1), got {sparsity}")
    if method != "magnitude" and not 0.0 < ratio < 1.0:
        raise TfcError(f"--ratio must be in (0, 1), got {ratio}")
    if method == "magnitude" and options.epochs is not None and options.epochs < 1:
        raise TfcError("magnitude pruning needs --epochs >= 1 (the masks are set while training)")
    job = _Training(model, train_images, labels, distill_from, options, default_epochs=10)
    if method == "magnitude":
        steps = job.config.steps(len(job.x))
        method_options = dict(sparsity_map=_parse_map(sparsity_map), exclude=list(exclude),
                              m_by_n=_parse_m_by_n(m_by_n))
        if job.tf_keras:
            from tfcompress.prune.tfmot_prune import prune_tf_keras  # pylint: disable=import-outside-toplevel
            result = prune_tf_keras(job.path, schedule=schedule, sparsity=sparsity, ramp=ramp, frequency=frequency,
                                    x=job.x, labels=job.labels, config=job.config, teacher=job.teacher,
                                    **method_options)
        else:
            plan = magnitude.schedule_for(schedule, sparsity, steps, ramp, frequency)
            result = magnitude.prune_and_train(job.original, plan, job.x, job.labels, job.config,
                                               teacher=job.teacher, **method_options)
        set_bn_statistics(result, job.batches)
        rows = [["layer", "zero weights", "kernel size", "sparsity"]]
        zeros = total = 0
        for name, (z, n) in magnitude.sparsity_of(result).items():
            rows.append([name, z, n, f"{z / n:.1%}"])
            zeros, total = zeros + z, total + n
        rows.append(["total (pruned kernels)", zeros, total, f"{zeros / total:.1%}"])
        zeros, total = magnitude.model_sparsity(result)
        rows.append(["whole model (every trainable weight)", zeros, total, f"{zeros / total:.1%}"])
        what = f"magnitude, {schedule} to {sparsity:g}, {steps} steps"
        if job.tf_keras:
            what += ", tf_keras model through tensorflow-model-optimization"
        return job.result(result, what, rows)
    config = filters.FilterConfig(criterion=method, ratio=ratio, allocation=allocation, layers=tuple(layers),
                                  seed=options.seed, residual_groups=residual_groups, to_original=to_original)
    thinned = filters.prune_and_finetune(job.original, config, job.x, job.labels, job.config, teacher=job.teacher,
                                         layer_epochs=layer_epochs)
    rows = [["layer", "channels before", "channels after"]]
    rows += [[name, a, b] for name, (a, b) in thinned.pruned.items()]
    rows += [[name, "-", f"left whole: {why}"] for name, why in thinned.skipped.items()]
    what = (f"{method} filters, ratio {ratio:g} of each group's channels" if allocation == "uniform" else
            f"{method} filters, {ratio:g} of the MACs spread over the groups by measured sensitivity")
    if method == "thinet":
        what += ", consumers refitted to the original's outputs" if to_original else ", ThiNet's rescaling"
    return job.result(thinned.model, what, rows, details=thinned)


def cluster(model, *, clusters: int = 16, init: str = "linear", iterations: int = 50, layers: Sequence[str] = (),
            exclude: Sequence[str] = (), train_images=None, labels=None, distill_from: Optional[str] = None,
            options: TrainOptions = TrainOptions()) -> KerasResult:
    """k-means weight sharing per kernel with codebook fine-tuning (Han et al., "Deep Compression",
    arXiv:1510.00149).  Options as for `prune`; default 5 epochs."""
    from tfcompress.cluster import kmeans  # pylint: disable=import-outside-toplevel
    config = kmeans.ClusterConfig(clusters=clusters, init=init, iterations=iterations, layers=tuple(layers),
                                  exclude=tuple(exclude), seed=options.seed)
    job = _Training(model, train_images, labels, distill_from, options, default_epochs=5)
    result, clustered = kmeans.cluster_and_finetune(job.original, config, job.x, job.labels, job.config,
                                                    teacher=job.teacher)
    rows = [["layer", "weights", "zeros kept", "codewords", "bits", "vs float32"]]
    for k in clustered:
        rows.append([f"{k.layer}/{k.variable}", k.size, k.zeros, k.codewords, k.bits, f"{k.bits / (32 * k.size):.3f}"])
    bits, size = sum(k.bits for k in clustered), sum(k.size for k in clustered)
    rows.append(["total", size, sum(k.zeros for k in clustered), "", bits, f"{bits / (32 * size):.3f}"])
    return job.result(result, f"{config.clusters} clusters, {config.init} init", rows, details=clustered)


def pq(model, *, block_size: int = 4, centroids: int = 256, iterations: int = 20, layer_epochs: int = 1,
       max_rows: int = 8192, layers: Sequence[str] = (), exclude: Sequence[str] = (), train_images=None,
       labels=None, distill_from: Optional[str] = None, options: TrainOptions = TrainOptions(),
       progress=None) -> KerasResult:
    """Product quantization by activation reconstruction (Stock et al., "And the Bit Goes Down",
    arXiv:1907.05686).  `progress(layer)` is called after each layer.  Options as for `prune`; default 2 epochs."""
    from tfcompress.cluster import pq as pq_lib  # pylint: disable=import-outside-toplevel
    config = pq_lib.PQConfig(block_size=block_size, centroids=centroids, iterations=iterations, max_rows=max_rows,
                             layers=tuple(layers), exclude=tuple(exclude), seed=options.seed)
    job = _Training(model, train_images, labels, distill_from, options, default_epochs=2)
    result = pq_lib.product_quantize(job.original, config, job.x, job.labels, job.config, teacher=job.teacher,
                                     layer_epochs=layer_epochs, progress=progress)
    rows = [["layer", "subvector", "codewords", "indices", "index bits", "codebook bits", "output error (EM)"]]
    for q in result.layers:
        rows.append([q.name, q.d, len(q.codebook), q.assignment.size, q.index_bits, q.codebook_bits,
                     f"{q.error:.4f}"])
    rows += [[name, "-", f"left float: {why}", "", "", "", ""] for name, why in result.skipped.items()]
    notes = [f"storage: {result.float_bits // 8} bytes float32 -> {-(-result.compressed_bits // 8)} bytes "
             f"(indices + codebooks + every uncompressed parameter): "
             f"{result.float_bits / result.compressed_bits:.1f}x"]
    return job.result(result.model, "product quantization", rows, notes, details=result)


def lowrank(model, *, energy: float = 0.9, param_ratio: Optional[float] = None, rank: Optional[int] = None,
            conv_mode: str = "channel", layers: Sequence[str] = (), train_images=None, labels=None,
            distill_from: Optional[str] = None, options: TrainOptions = TrainOptions()) -> KerasResult:
    """Truncated-SVD factorization of dense and conv layers (Denton et al., arXiv:1404.0736; Jaderberg et
    al., arXiv:1405.3866 for the spatial form), optionally fine-tuned.  Default 0 epochs."""
    from tfcompress.keras.train import fit, set_bn_statistics  # pylint: disable=import-outside-toplevel
    from tfcompress.lowrank.svd import LowRankConfig, factorize  # pylint: disable=import-outside-toplevel
    config = LowRankConfig(energy=energy, param_ratio=param_ratio, rank=rank, conv_mode=conv_mode,
                           layers=tuple(layers))
    job = _Training(model, train_images, labels, distill_from, options, default_epochs=0)
    result = factorize(job.original, config)
    if job.config.epochs:
        fit(result.model, job.x, job.labels, job.config, teacher=job.teacher)
        set_bn_statistics(result.model, job.batches)
    rows = ([["layer", "rank", "full rank"]] + [[n, r, f] for n, (r, f) in result.ranks.items()]
            + [[n, "-", f"left whole: {why}"] for n, why in result.skipped.items()])
    summary = f"{config.conv_mode} SVD for convs" + ("" if job.config.epochs else ", not fine-tuned")
    return job.result(result.model, summary, rows, details=result)


# A folded model must reproduce the adapted one to this absolute error (float32 rounding only).
FOLD_TOLERANCE = 1e-4


def drop_blocks(model, *, drop: int = 0, latency_target: float = 0.0, adapter_epochs: int = 10,
                feature_layer: Optional[str] = None, latency_runs: int = 60, threads: int = 1, train_images=None,
                labels=None, distill_from: Optional[str] = None, options: TrainOptions = TrainOptions(),
                progress=None) -> KerasResult:
    """Block dropping after PRACTISE (Wang & Wu, arXiv:2202.07861), timed in LiteRT.

    Args:
      drop: drop this many residual blocks, or
      latency_target: drop blocks until float32 LiteRT latency falls by at least this fraction.
      adapter_epochs: adapter-only training per candidate.
      feature_layer: the layer mimicked (default: the classifier's input).
      latency_runs, threads: LiteRT timing.
      progress: called as progress(block, recoverability) after each candidate is scored.
      Other arguments as for `prune`; default 20 epochs.

    Raises:
      TfcError: no droppable block, a target no set reaches, or an adapter fold that changes the outputs.
    """
    from tfcompress.evaluate.artifacts import KerasLatency  # pylint: disable=import-outside-toplevel
    from tfcompress.keras.train import set_bn_statistics  # pylint: disable=import-outside-toplevel
    from tfcompress.prune import blocks  # pylint: disable=import-outside-toplevel
    config = blocks.DropConfig(drop_blocks=drop, latency_target=latency_target, adapter_epochs=adapter_epochs)
    job = _Training(model, train_images, labels, distill_from, options, default_epochs=20)
    latency = KerasLatency(job.x, runs=latency_runs, threads=threads)
    result = blocks.drop_blocks(job.original, job.x, config, job.config, latency=latency, feature=feature_layer,
                                labels=None if job.distill else job.labels, progress=progress)
    if result.fold_error > FOLD_TOLERANCE:
        raise TfcError(f"folding the adapters changed the outputs by {result.fold_error:.2e} "
                       f"(> {FOLD_TOLERANCE:g}); nothing written")
    set_bn_statistics(result.model, job.batches)
    dropped = {b.add for b in result.dropped}
    rows = [["block (Add)", "layers", "recoverability", "LiteRT saving", "score", "dropped"]]
    before, after = result.latency
    for s in sorted(result.scores, key=lambda s: s.score):
        rows.append([s.block.add, len(s.block.layers), f"{s.recoverability:.4f}",
                     f"{s.saving * 1e6:.0f} us ({s.saving / before:.1%})", f"{s.score:.4g}",
                     "yes" if s.block.add in dropped else ""])
    notes = [f"LiteRT float32 latency per image: {before * 1e6:.0f} us -> {after * 1e6:.0f} us "
             f"({after / before:.2f}x, a {1 - after / before:.1%} cut); adapter fold max error "
             f"{result.fold_error:.1e}"]
    return job.result(result.model, f"{len(dropped)} of {len(result.scores)} blocks dropped", rows, notes,
                      details=result)


def distill(student, teacher, *, train_images=None, labels=None, features: Sequence = (),
            feature_weight: float = 1.0, options: TrainOptions = TrainOptions()) -> KerasResult:
    """Trains `student` on `teacher`'s soft targets at temperature T (Hinton et al., arXiv:1503.02531), mixed
    with hard labels by alpha when the images are labelled, optionally with feature distillation
    (Romero et al., "FitNets", arXiv:1412.6550) on `features`, pairs "student_layer:teacher_layer".

    Raises:
      TfcError: input or output shapes that differ, bad feature pairs, bad images.
    """
    from tfcompress.io.keras_models import copy_model  # pylint: disable=import-outside-toplevel
    from tfcompress.keras.train import FeaturePair, fit  # pylint: disable=import-outside-toplevel
    pairs = []
    for item in features:
        if isinstance(item, FeaturePair):
            pairs.append(item)
            continue
        student_layer, sep, teacher_layer = str(item).partition(":")
        if not sep or not student_layer or not teacher_layer:
            raise TfcError(f"--features entry {item!r} is not student_layer:teacher_layer")
        pairs.append(FeaturePair(student_layer, teacher_layer))
    job = _Training(student, train_images, labels, "original", options, default_epochs=20)
    teacher_model, _ = load_keras_model(teacher)
    if tuple(teacher_model.input_shape[1:]) != tuple(job.original.input_shape[1:]):
        raise TfcError(f"teacher input {tuple(teacher_model.input_shape[1:])} differs from the student's "
                       f"{tuple(job.original.input_shape[1:])}")
    teacher_shapes = [h.shape for h in heads(teacher_model)]
    student_shapes = [h.shape for h in heads(job.original)]
    if teacher_shapes != student_shapes:
        raise TfcError(f"teacher outputs {', '.join(map(str, teacher_shapes))}, the student "
                       f"{', '.join(map(str, student_shapes))}")
    result = copy_model(job.original)
    fit(result, job.x, job.labels, job.config, teacher=teacher_model, features=pairs, feature_weight=feature_weight)
    how = ("teacher's soft targets only (no labels)" if job.labels is None
           else f"labels and teacher, alpha {job.config.alpha:g}")
    if job.config.on_views(job.labels is not None, bool(pairs)):
        how += ", function matching on shifted, mixed views"
    summary = (f"{how}, T={job.config.temperature:g}, {len(job.x)} images"
               + (f", features {', '.join(f'{p.student}:{p.teacher}' for p in pairs)}" if pairs else ""))
    rows = [["model", "params"], ["teacher", teacher_model.count_params()], ["student", result.count_params()]]
    return job.result(result, summary, rows, details=teacher_model)


def qat(model, *, train_images=None, labels=None, distill_from: Optional[str] = None,
        options: TrainOptions = TrainOptions()) -> KerasResult:
    """Quantization-aware training (Jacob et al., arXiv:1712.05877): batch norm folded, per-channel
    fake-quantized weights, EMA activation ranges; `convert` reads the learned ranges.  Default 5 epochs."""
    from tfcompress.keras.train import fit  # pylint: disable=import-outside-toplevel
    from tfcompress.qat import qat as qat_lib  # pylint: disable=import-outside-toplevel
    job = _Training(model, train_images, labels, distill_from, options, default_epochs=5)
    prepared = qat_lib.prepare_qat(job.original)
    qat_lib.calibrate_ranges(prepared, job.x, job.config.batch_size)
    if job.config.epochs:
        fit(prepared, job.x, job.labels, job.config, teacher=job.teacher)
    result = qat_lib.finish(prepared)
    fq = [layer.name for layer in result.layers if type(layer).__name__ == "FakeQuant"]
    summary = (f"{len(qat_lib.quant_layers(result))} layers with per-channel fake-quantized weights, "
               f"{len(fq)} activation ranges")
    rows = [["activation range", "min", "max"]] + [
        [name, f"{float(result.get_layer(name).range_min.numpy()):.4g}",
         f"{float(result.get_layer(name).range_max.numpy()):.4g}"] for name in fq]
    return job.result(result, summary, rows)


def binarize(model, *, mode: str = "bwn", layers: Sequence[str] = (), binarize_first_last: bool = False,
             train_images=None, labels=None, distill_from: Optional[str] = None,
             options: TrainOptions = TrainOptions()) -> KerasResult:
    """Binary weights: BinaryConnect (Courbariaux et al., arXiv:1511.00363), BWN or XNOR-Net (Rastegari et
    al., arXiv:1603.05279), trained from the float weights.  Default 10 epochs."""
    from tfcompress.binary import binarize as binarize_lib  # pylint: disable=import-outside-toplevel
    from tfcompress.keras.train import fit, set_bn_statistics  # pylint: disable=import-outside-toplevel
    job = _Training(model, train_images, labels, distill_from, options, default_epochs=10)
    names = binarize_lib.choose_layers(job.original, list(layers), binarize_first_last)
    result = binarize_lib.binarize(job.original, mode, names, seed=options.seed)
    if job.config.epochs:
        fit(result, job.x, job.labels, job.config, teacher=job.teacher)
    set_bn_statistics(result, job.batches)
    before, after = binarize_lib.storage(job.original), binarize_lib.storage(result)
    rows = [["storage", "binary weights", "scales", "float params", "bits", "bytes"],
            ["float", 0, 0, before.float_params, before.bits, before.bits // 8],
            ["binary", after.binary_weights, after.scales, after.float_params, after.bits, -(-after.bits // 8)],
            ["ratio", "", "", "", f"{after.bits / before.bits:.3f}", ""]]
    return job.result(result, f"{mode}, {len(names)} layers: {', '.join(names)}", rows)


def cost(model) -> Dict[str, int]:
    """Parameters and multiply-accumulates per image of a Keras model's conv, depthwise and dense layers."""
    from tfcompress.keras.cost import count  # pylint: disable=import-outside-toplevel
    params, macs = count(load_keras_model(model)[0])
    return {"params": params, "macs": macs}
