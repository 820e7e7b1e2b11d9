"""TensorFlow's thread pools for serving, sized before TensorFlow starts in this process.

TensorFlow reads `TF_NUM_INTEROP_THREADS` and `TF_NUM_INTRAOP_THREADS` when it creates its
runtime (the first op, not the import), so the serving module sets them when it is built, before
any model loads. They hold for the whole process: in the all-in-one process training runs with
the same pools, unless `training.tf_*_threads` are set (those are applied through
`tf.config.threading`, which takes precedence). A variable already in the environment wins.

Why one inter-op thread by default: a server runs one model call at a time per model, and the
inter-op pool only hands a small graph's ops to another thread, which costs more than the ops
(measured on the diabetes model: a call ~160 us with one inter-op thread against ~230 us with
TensorFlow's default of one per core, and a quarter of the server's CPU per request at 64
concurrent requests). Intra-op parallelism, which splits one large op over the cores, stays
TensorFlow's default.
"""

from __future__ import annotations

import os

from skipper.core.settings import ServingSettings


def size_tensorflow_pools(serving: ServingSettings) -> None:
    """Put the configured pool sizes in the environment for TensorFlow (0 leaves its default)."""
    for variable, threads in (("TF_NUM_INTEROP_THREADS", serving.tf_inter_op_threads),
                              ("TF_NUM_INTRAOP_THREADS", serving.tf_intra_op_threads)):
        if threads > 0:
            os.environ.setdefault(variable, str(threads))
