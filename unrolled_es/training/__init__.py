"""Training: the outer loop (estimate → optimizer step → log → evaluate → checkpoint; `loop.train`), verified
checkpoints (`checkpoint`), and reading a run folder back (`runs.load_theta`, also `unrolled_es.load_theta`)."""
