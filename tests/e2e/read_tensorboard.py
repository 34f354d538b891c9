"""Reads a TensorBoard log directory with TensorBoard's own EventAccumulator and writes every
scalar and histogram event as JSON: read_tensorboard.py LOG_DIR OUT.json.

Run with the project venv's python (launch/setup.sh installs the `tensorboard` package)."""
import json
import sys

from tensorboard.backend.event_processing import event_accumulator as ea

acc = ea.EventAccumulator(
    sys.argv[1],
    size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.TENSORS: 0},  # 0: keep every event
    purge_orphaned_data=True,
)
acc.Reload()
tags = acc.Tags()
out = {
    "scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]},
    "histograms": {
        t: [
            {
                "step": e.step,
                "min": e.histogram_value.min,
                "max": e.histogram_value.max,
                "num": e.histogram_value.num,
                "sum": e.histogram_value.sum,
                "sum_squares": e.histogram_value.sum_squares,
                "bucket_limit": list(e.histogram_value.bucket_limit),
                "bucket": list(e.histogram_value.bucket),
            }
            for e in acc.Histograms(t)
        ]
        for t in tags["histograms"]
    },
}
with open(sys.argv[2], "w") as f:
    json.dump(out, f)
