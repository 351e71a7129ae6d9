"""The shared training core: mesh + sharding, Orbax checkpointing, grain pipelines, metrics, loop.

See docs/training.md for the contracts (loss_fn, extra_args_fn, data iterators, resume) and
docs/scaling.md for launching on GPU boxes and TPU pod slices.
"""

from logitlab.training import mixing, optimizers
from logitlab.training.checkpoint import Checkpointer, Restored
from logitlab.training.data import (ArraySource, ResumableBatches, eval_batches, image_transform,
                                    tfds_image_data)
from logitlab.training.faults import (EXIT_PREEMPTED, CheckpointCorruptError,
                                     CheckpointStorageError, ConfigMismatchError, Diverged,
                                     Preempted)
from logitlab.training.loop import TrainResult, evaluate, train
from logitlab.training.mesh import (LOGICAL_AXIS_RULES, MESH_AXES, batch_sharding,
                                    constrain_batch, make_mesh, put_batch, replicated)
from logitlab.training.metrics import MetricsWriter, batch_checksum, optimizer_scalars, read_jsonl
from logitlab.training.state import (TrainState, abstract_train_state, create_train_state,
                                     num_params, state_shardings)
from logitlab.training.step import (ON_NONFINITE, StepContext, make_eval_step, make_train_step,
                                    radius_guard_args)

__all__ = [
    "ArraySource", "CheckpointCorruptError", "CheckpointStorageError", "Checkpointer",
    "ConfigMismatchError", "Diverged", "EXIT_PREEMPTED", "LOGICAL_AXIS_RULES", "MESH_AXES",
    "MetricsWriter", "ON_NONFINITE", "Preempted", "Restored",
    "ResumableBatches", "StepContext", "TrainResult", "TrainState", "abstract_train_state",
    "batch_checksum", "batch_sharding", "constrain_batch", "create_train_state", "eval_batches",
    "evaluate",
    "image_transform", "make_eval_step", "make_mesh", "make_train_step", "mixing", "num_params",
    "optimizer_scalars", "optimizers", "put_batch", "radius_guard_args", "read_jsonl",
    "replicated", "state_shardings",
    "tfds_image_data", "train",
]
