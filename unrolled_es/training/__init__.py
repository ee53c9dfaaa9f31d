"""Training: the outer loop (estimate → optimizer step → log → evaluate → checkpoint), verified checkpoints, and
run folders."""
