"""The `unrolled-es` command line: parse a run's options, assemble its estimator from them, train, and report.

    unrolled-es list
    unrolled-es train --task control --estimator es_single --out runs/cartpole
"""
from unrolled_es.cli.command import main

__all__ = ["main"]
