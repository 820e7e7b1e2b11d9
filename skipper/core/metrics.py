"""Prometheus buckets shared by every module, chosen for what Skipper measures.

Labels stay bounded: a model or workflow label takes only names the configuration or the
registry knows (anything else is counted as `_other`).
"""

from __future__ import annotations

# A predict through the api takes ~0.3-2 ms on one host: buckets from 100 us resolve it; up to 10 s for timeouts.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Rows per model call: powers of two up to a large serving.max_batch_size.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# A training: seconds for the bundled demos, up to limits.max_train_seconds' default and beyond.
TRAINING_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
