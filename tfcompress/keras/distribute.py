"""Data-parallel fine-tuning with tf.distribute: one replica per local device, or one per worker process.

Kinds (`TrainConfig.distribute`, `--distribute`):

- ``none``: Keras `fit` on the default device, as every command trains alone.
- ``mirrored``: `tf.distribute.MirroredStrategy` over this machine's devices.
- ``multi_worker``: `tf.distribute.MultiWorkerMirroredStrategy`, one process per
  worker, each given its place in the cluster by the ``TF_CONFIG`` environment
  variable as TensorFlow reads it::

      {"cluster": {"worker": ["host1:port", "host2:port"]},
       "task": {"type": "worker", "index": 0}}

  Every worker runs the same command on the same images; each batch is split
  between the workers by `tf.data` (auto-shard policy DATA) and the gradients
  are summed across them after every step (collective all-reduce), so every
  replica holds the same weights.  The chief (task ``chief``, else worker 0)
  alone writes the output.

Keras 3's `Model.fit` does not run under MultiWorkerMirroredStrategy
(keras-team/keras#20585), so the distributed kinds train with a loop of their
own (`fit`): the model is cloned into the strategy's scope, trained with the
same losses, optimizer, callbacks, shuffle seed and batch size (the batch size
is the global one, over all replicas), and its weights are copied back.
"""

import json
import os
from typing import Callable, Optional, Sequence

import numpy as np

from tfcompress.errors import TfcError

KINDS = ("none", "mirrored", "multi_worker")

# A collective that waits longer than this for a peer (a dead or unreachable worker) fails the step.
COLLECTIVE_TIMEOUT_S = 120

_strategies = {}


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise TfcError(f"--distribute={kind}: give one of {', '.join(KINDS)}")
    return kind


def cluster_spec(environ=os.environ) -> dict:
    """The validated TF_CONFIG: {"cluster": {task type: [host:port, …]}, "task": {"type": …, "index": …}}.

    Raises:
      TfcError: TF_CONFIG missing, not JSON, or not a cluster this process has a place in.
    """
    text = environ.get("TF_CONFIG")
    if not text:
        raise TfcError("--distribute=multi_worker needs TF_CONFIG: {\"cluster\": {\"worker\": [\"host:port\", …]}, "
                       "\"task\": {\"type\": \"worker\", \"index\": N}}")
    try:
        config = json.loads(text)
    except ValueError as e:
        raise TfcError(f"TF_CONFIG is not JSON ({e})") from e
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise TfcError("TF_CONFIG: \"cluster\" must map task types to lists of host:port addresses")
    for kind, addresses in cluster.items():
        if kind not in ("chief", "worker", "evaluator"):
            raise TfcError(f"TF_CONFIG: task type {kind!r} in the cluster; multi_worker takes chief and worker")
        if (not isinstance(addresses, list) or not addresses
                or not all(isinstance(a, str) and a.rpartition(":")[2].isdigit() and a.rpartition(":")[0]
                           for a in addresses)):
            raise TfcError(f"TF_CONFIG: cluster {kind!r} must be a non-empty list of host:port addresses")
    if len(cluster.get("chief", [])) > 1:
        raise TfcError("TF_CONFIG: a cluster has at most one chief")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise TfcError(f"TF_CONFIG: \"task\" must name a type of the cluster ({', '.join(cluster)}) and an index")
    index = task.get("index", 0)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise TfcError(f"TF_CONFIG: task index {index!r} is not in the cluster's {len(cluster[task['type']])} "
                       f"{task['type']} address(es)")
    if task["type"] == "evaluator":
        raise TfcError("TF_CONFIG: this process is an evaluator; multi_worker training runs on chief and workers")
    return {"cluster": cluster, "task": {"type": task["type"], "index": index}}


def is_chief(kind: str, environ=os.environ) -> bool:
    """Whether this process writes the output: always, except a multi_worker process that is not the chief
    (task chief, or worker 0 in a cluster without one)."""
    if kind != "multi_worker":
        return True
    spec = cluster_spec(environ)
    task = spec["task"]
    if "chief" in spec["cluster"]:
        return task["type"] == "chief"
    return task["type"] == "worker" and task["index"] == 0


def strategy(kind: str):
    """The process's strategy of this kind (made once), or None for ``none``.

    A multi_worker strategy must be made before TensorFlow runs anything in the process (the command-line
    tools make it first thing); from Python, call this at program start.

    Raises:
      TfcError: a bad kind or TF_CONFIG, or a multi_worker strategy asked for after TensorFlow started.
    """
    check_kind(kind)
    if kind == "none":
        return None
    if kind not in _strategies:
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        if kind == "mirrored":
            _strategies[kind] = tf.distribute.MirroredStrategy()
        else:
            cluster_spec()
            options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=COLLECTIVE_TIMEOUT_S)
            try:
                _strategies[kind] = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
            except RuntimeError as e:
                raise TfcError("--distribute=multi_worker: the strategy must be made before TensorFlow runs "
                               "anything in this process (from Python, call "
                               "tfcompress.keras.distribute.strategy('multi_worker') first)") from e
            except (ValueError, tf.errors.OpError) as e:
                raise TfcError(f"--distribute=multi_worker: cannot join the cluster ({str(e).splitlines()[0]})") from e
    return _strategies[kind]


def _per_example(values):
    """A loss's per-element values reduced to one per example (the mean over every other axis)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    values = tf.convert_to_tensor(values)
    if values.shape.rank is not None and values.shape.rank > 1:
        values = tf.reduce_mean(tf.reshape(values, [tf.shape(values)[0], -1]), axis=1)
    return values


def _synchronized(layer):
    """A layer's copy for the replicas; batch normalization normalizes by the statistics of the whole global
    batch (all-reduced), as one process does, not of each replica's share."""
    import keras  # pylint: disable=import-outside-toplevel
    config = layer.get_config()
    if isinstance(layer, keras.layers.BatchNormalization):
        config["synchronized"] = True
    return layer.__class__.from_config(config)


class _History:
    """What callers read of Keras' History: `history`, per-epoch mean loss."""

    def __init__(self):
        self.history = {"loss": []}


def fit(model, x: np.ndarray, targets: Sequence[np.ndarray], losses: Sequence, make_optimizer: Callable, *,
        kind: str, epochs: int, batch_size: int, seed: int, verbose: int = 0,
        loss_weights: Optional[Sequence[float]] = None, callbacks: Sequence = ()):
    """Trains `model` in place under the `kind` strategy, as `model.compile(make_optimizer(), losses,
    loss_weights); model.fit(x, targets, batch_size, epochs, shuffle=True)` would on one device.

    Each loss is a Keras loss whose `call` gives per-example values; the step's loss is the weighted sum of
    their means over the global batch (the same normalization as Keras' default reduction), plus the
    model's own regularization losses.

    Returns:
      An object with `history["loss"]`, the mean loss per epoch over every replica.

    Raises:
      TfcError: a tf_keras model, or a collective that failed (a worker died or cannot be reached).
    """
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    if not type(model).__module__.startswith("keras"):
        raise TfcError("--distribute trains Keras 3 models; this tf_keras model trains with --distribute=none")
    strat = strategy(kind)
    weights = list(loss_weights) if loss_weights is not None else [1.0] * len(losses)
    keras.utils.set_random_seed(seed)
    with strat.scope():
        replica = keras.models.clone_model(model, clone_function=_synchronized)
        replica.set_weights(model.get_weights())
        optimizer = make_optimizer()
    data = tf.data.Dataset.from_tensor_slices((x, tuple(np.asarray(t, np.float32) for t in targets)))
    data = data.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    data = strat.experimental_distribute_dataset(data.with_options(options))

    def replica_step(xb, yb):
        context = tf.distribute.get_replica_context()
        count = tf.cast(tf.shape(xb)[0], tf.float32)
        total = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
        with tf.GradientTape() as tape:
            out = replica(xb, training=True)
            out = out if isinstance(out, (list, tuple)) else [out]
            local = tf.add_n([w * tf.reduce_sum(_per_example(loss.call(y, o)))
                              for w, loss, y, o in zip(weights, losses, yb, out)])
            step_loss = local / tf.maximum(total, 1.0)
            if replica.losses:
                step_loss += tf.add_n(replica.losses) / strat.num_replicas_in_sync
        grads = tape.gradient(step_loss, replica.trainable_variables)
        optimizer.apply_gradients(zip(grads, replica.trainable_variables))
        return local, count

    @tf.function
    def step(xb, yb):
        local, count = strat.run(replica_step, args=(xb, yb))
        return (strat.reduce(tf.distribute.ReduceOp.SUM, local, axis=None),
                strat.reduce(tf.distribute.ReduceOp.SUM, count, axis=None))

    hooks = keras.callbacks.CallbackList(list(callbacks), model=replica)
    history = _History()
    try:
        hooks.on_train_begin()
        for epoch in range(epochs):
            hooks.on_epoch_begin(epoch)
            loss_sum, seen = 0.0, 0.0
            for batch, (xb, yb) in enumerate(data):
                hooks.on_train_batch_begin(batch)
                local, count = step(xb, yb)
                loss_sum, seen = loss_sum + float(local), seen + float(count)
                hooks.on_train_batch_end(batch, {"loss": float(local) / max(float(count), 1.0)})
            history.history["loss"].append(loss_sum / max(seen, 1.0))
            hooks.on_epoch_end(epoch, {"loss": history.history["loss"][-1]})
            if verbose:
                print(f"epoch {epoch + 1}/{epochs}: loss {history.history['loss'][-1]:.4f} "
                      f"({strat.num_replicas_in_sync} replicas)", flush=True)
        hooks.on_train_end()
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
            tf.errors.AbortedError, tf.errors.InternalError) as e:
        raise TfcError(f"distributed training failed: a worker stopped or cannot be reached "
                       f"({type(e).__name__}); nothing was written, start every worker again") from e
    model.set_weights(replica.get_weights())
    return history
