"""Training: the `Trainer` and what a run keeps (checkpoints, metrics,
data-stream positions, the topology a resumed run must agree on, the
workdir's lock)."""
