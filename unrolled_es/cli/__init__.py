"""The `unrolled-es` command line: parse a run's options (parser), decide the run folder's identity and resume
(run_folder), assemble the task, estimator and optimizer from the options (assemble, estimator_kwargs), train, and
report (reports). `main` is the console script's entry point.

    unrolled-es list
    unrolled-es train --task control --estimator es_single --out runs/cartpole
"""
from unrolled_es.cli.command import main

__all__ = ["main"]
