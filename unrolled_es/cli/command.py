"""`unrolled-es`: train a task with an estimator from the command line, or list what is available.

    unrolled-es list
    unrolled-es train --task learned_optimizer --estimator es_single --particles 32 --steps 500 --out runs/lopt

Options left unset come from the task's published settings (`Task.settings`), the estimator too where the task
publishes one. A run folder holds config.json, metrics.jsonl, checkpoints/ and meta_loss.png; `--resume`
continues it exactly (options left unset come from its config.json), `--overwrite` replaces it. Bad input ends
with one line on stderr and exit code 2. After training, the task's `report(theta, out_dir)` is run if it has one.

The stages live in their own modules: parser (the options), run_folder (a run's identity and resume), assemble
and estimator_kwargs (task, estimator and optimizer from the options), reports (plot, tables, summary).
"""
import inspect
import os
import sys

from unrolled_es.cli import assemble, reports, run_folder
from unrolled_es.cli.parser import OPTIMIZERS, UsageError, make_parser


def _out_folder(args) -> str:
  """--out, or runs/<task>_<estimator> (the estimator the task publishes when --estimator is left out)."""
  if args.out is not None:
    return args.out
  if args.task is None:
    raise UsageError("pass --out (the run folder), or --task for the default runs/<task>_<estimator>")
  estimator = args.estimator
  if estimator is None:
    task = assemble.make_task(args.task, dict(args.task_args))
    estimator = (task.settings or {}).get("estimator")
    if estimator is None:
      raise UsageError(f"--estimator is required: task {args.task!r} publishes none; choose one of: "
                       f"{', '.join(assemble.estimator_constructors())}")
  return os.path.join("runs", f"{args.task}_{estimator}")


def _train(estimator, optimizer, task, cfg, out, resume, progress, tensorboard=False):
  """The training loop on the run folder; its errors as UsageErrors; None when interrupted."""
  import jax

  from unrolled_es.training.checkpoint import CheckpointError
  from unrolled_es.training.loop import train

  sequential = cfg["truncation"] if cfg["truncation"] is not None else task.system.horizon
  try:
    return train(estimator, optimizer, task.theta0, jax.random.key(cfg["seed"]), steps=cfg["steps"],
                 evaluate=task.evaluate, eval_every=cfg["eval_every"], log_every=cfg["log_every"],
                 checkpoint_dir=os.path.join(out, "checkpoints"), checkpoint_every=cfg["checkpoint_every"],
                 resume=resume, config={k: cfg.get(k) for k in run_folder.FINGERPRINTED},
                 metrics_path=os.path.join(out, "metrics.jsonl"), sequential_steps_per_update=sequential,
                 progress=progress, progress_desc=f"{cfg['task']}/{cfg['estimator']}",
                 after_update=getattr(task, "after_update", None),
                 tensorboard_dir=os.path.join(out, "tensorboard") if tensorboard else None,
                 counters=getattr(task, "counters", None))
  except CheckpointError as e:
    raise UsageError(f"{e}; pass --overwrite to start over") from None
  except ValueError as e:  # the library's argument checks, e.g. a theta the estimator cannot perturb
    raise UsageError(str(e)) from None
  except KeyboardInterrupt:
    print(f"unrolled-es: interrupted; progress is checkpointed in {out}, continue with --resume", file=sys.stderr)
    return None


def cmd_train(args) -> int:
  import warnings

  import jax
  import optax

  out = _out_folder(args)
  saved = run_folder.prepare(args, out)
  cfg, task, estimator, optimizer = assemble.configure(args, saved)
  os.makedirs(out, exist_ok=True)
  run_folder.write_json(os.path.join(out, "config.json"),
                        dict(cfg, versions={"jax": jax.__version__, "optax": optax.__version__}))
  with warnings.catch_warnings():
    # one line per warning (e.g. a damaged checkpoint skipped), printed when it happens
    warnings.showwarning = lambda message, *a, **k: print(f"unrolled-es: warning: {message}", file=sys.stderr)
    result = _train(estimator, optimizer, task, cfg, out, saved is not None, args.progress,
                    getattr(args, "tensorboard", False))
  if result is None:
    return 130
  reports.finish(cfg, task, result, out, args.report)
  return 0


def cmd_list() -> int:
  print("tasks:")
  for name in assemble.task_names():
    print(f"  {name}")
  print("estimators:")
  for name, ctor in assemble.estimator_constructors().items():
    doc = (inspect.getdoc(ctor) or inspect.getdoc(sys.modules.get(ctor.__module__)) or "").strip().splitlines()
    print(f"  {name:<16} {doc[0] if doc else ''}".rstrip())
  print("optimizers:\n  " + ", ".join(OPTIMIZERS))
  return 0


def main(argv=None) -> int:
  parser = make_parser()
  try:
    args = parser.parse_args(argv)
  except SystemExit as e:
    return e.code if isinstance(e.code, int) else 0
  try:
    return cmd_list() if args.command == "list" else cmd_train(args)
  except UsageError as e:
    print(f"unrolled-es: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
