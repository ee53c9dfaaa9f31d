"""The outer training loop: estimate a gradient, take an optimizer step, log, evaluate, checkpoint.

One outer step is one compiled function

    (θ, opt_state, est_state, step) -> (θ', opt_state', est_state', info),
    ĝ, est_state', info = estimator.estimate(fold_in(k_train, step), θ, est_state),
    θ' = θ + optimizer(ĝ)        if ĝ and θ' are finite, else θ (the update is skipped and counted).

Every key is derived from the run key and the step number only (k_init, k_train, k_eval = split(key, 3)),
so a run resumed from a checkpoint retraces the uninterrupted run bit for bit. Evaluations all use the
same k_eval (common random numbers), so the evaluation curve shows θ's progress, not evaluation noise.

The estimator state advances even when an update is skipped: its particles have run their window, and
their inner steps are counted. Reporting both total and sequential inner steps follows Vicol et al. (2023)
and Li et al. (2023): the first is compute, the second latency.
"""
import functools
import json
import logging
import math
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unrolled_es import checkpoint as ckpt
from unrolled_es.system import check_int

log = logging.getLogger(__name__)


class TrainResult(NamedTuple):
  theta: Any
  opt_state: Any
  est_state: Any
  step: int              # outer steps done
  metrics: list          # the logged records (dicts), also in metrics.jsonl
  num_skipped: int       # updates skipped for a non-finite gradient or parameter


def _all_finite(tree):
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree_util.tree_leaves(tree)))


def make_outer_step(estimator, optimizer):
  """The jitted outer step `(theta, opt_state, est_state, key, step) -> (theta, opt_state, est_state, info)`.

  `info` is the estimator's info plus "skipped" (the update was not applied) and "grad_norm". The same
  (estimator, optimizer) pair gets the same jitted function, so a resumed or repeated run does not recompile.
  """
  try:
    return _cached_outer_step(estimator, optimizer)
  except TypeError:  # unhashable estimator or optimizer
    return _outer_step(estimator, optimizer)


def _outer_step(estimator, optimizer):
  def outer_step(theta, opt_state, est_state, key, step):
    grad, est_state, info = estimator.estimate(jax.random.fold_in(key, step), theta, est_state)
    updates, new_opt_state = optimizer.update(grad, opt_state, theta)
    new_theta = optax.apply_updates(theta, updates)
    ok = jnp.logical_and(_all_finite(grad), _all_finite(new_theta))
    keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new, old)
    info = dict(info, skipped=jnp.logical_not(ok), grad_norm=_norm(grad))
    return keep(new_theta, theta), keep(new_opt_state, opt_state), est_state, info

  return jax.jit(outer_step)


_cached_outer_step = functools.lru_cache(maxsize=8)(_outer_step)


def _scalar(value):
  a = np.asarray(value)
  if a.size != 1:
    return None
  a = a.reshape(())
  if a.dtype == bool:
    return bool(a)
  if np.issubdtype(a.dtype, np.integer):
    return int(a)
  x = float(a)
  return x if math.isfinite(x) else None  # strict JSON; num_nonfinite says what happened


def _scalars(d, prefix=""):
  out = {}
  for k, v in d.items():
    s = _scalar(v)
    if s is not None or np.asarray(v).size == 1:
      out[prefix + k] = s
  return out


def _key_fingerprint(key):
  typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
  data = jax.random.key_data(key) if typed else key
  return np.asarray(data).tolist()


class _Progress(NamedTuple):
  # Everything that must change together; rebinding one tuple keeps an interrupt from splitting an update.
  step: int
  theta: Any
  opt_state: Any
  est_state: Any
  total: int
  sequential: int
  num_skipped: int
  num_records: int
  wall: float


def train(estimator, optimizer: optax.GradientTransformation, theta, key, *, steps: int,
          evaluate: Callable | None = None, eval_every: int = 100, log_every: int = 1,
          checkpoint_dir: str | None = None, checkpoint_every: int = 100, keep_checkpoints: int = 2,
          resume: bool = False, config: dict | None = None, metrics_path: str | None = None,
          sequential_steps_per_update: int | None = None,
          callback: Callable | None = None, progress: bool = True, progress_desc: str = "train") -> TrainResult:
  """Runs `steps` outer steps of `optimizer` on the estimator's gradient, starting from `theta`.

  estimator:     a GradientEstimator (`init(key, theta)`, `estimate(key, theta, state)`).
  evaluate:      optional `evaluate(theta, key) -> dict of scalars`, jit-able; run at step 0, every
                 `eval_every` steps (0: only at the end) and at the end; logged as "eval_<name>".
  log_every:     a record is logged every `log_every` steps, and always at evaluations, at the last step,
                 and whenever a loss or gradient was non-finite.
  checkpoint_dir: where `ckpt_<step>.npz` files go, every `checkpoint_every` steps (0: only at the end), at
                 the end, at an early stop and on KeyboardInterrupt. The newest `keep_checkpoints` are kept.
  resume:        continue from the newest good checkpoint in `checkpoint_dir` (start afresh if none).
                 Without it, a `checkpoint_dir` that already holds checkpoints is refused.
  config:        JSON-serialisable settings of the run; with the key they form the fingerprint that a
                 checkpoint must match to be resumed from.
  metrics_path:  a JSONL file receiving each record as it is logged (rewritten from the checkpoint on resume).
  sequential_steps_per_update: inner steps one particle runs per update (e.g. K), used when the estimator's
                 info has no "sequential_inner_steps".
  callback:      `callback(step, theta, record)` after each step; a truthy return stops training early.

  Records hold: step, loss (the estimator's window loss), total_inner_steps and sequential_inner_steps
  (cumulative), num_nonfinite, skipped, num_skipped, grad_norm, wall_time (seconds, summed over resumes),
  the estimator's other info entries and any eval_* entries.
  """
  steps = check_int("steps", steps, 0)
  eval_every = check_int("eval_every", eval_every, 0)
  log_every = check_int("log_every", log_every, 1)
  checkpoint_every = check_int("checkpoint_every", checkpoint_every, 0)
  if resume and checkpoint_dir is None:
    raise ValueError("resume=True needs a checkpoint_dir")

  init_key, train_key, eval_key = jax.random.split(key, 3)
  fingerprint = ckpt.fingerprint({"config": config or {}, "key": _key_fingerprint(key)})
  bundle = lambda p: {"theta": p.theta, "opt_state": p.opt_state, "est_state": p.est_state, "key": key}

  restored = None
  existing = checkpoint_dir is not None and os.path.isdir(checkpoint_dir) and ckpt.list_checkpoints(checkpoint_dir)
  if existing:
    if not resume:
      raise ValueError(f"checkpoint_dir {checkpoint_dir!r} already holds checkpoints; pass resume=True "
                       "to continue that run, or choose an empty folder")
    template = jax.eval_shape(lambda: {"theta": theta, "opt_state": optimizer.init(theta),
                                       "est_state": estimator.init(init_key, theta), "key": key})
    restored = ckpt.restore_latest(checkpoint_dir, template, config_fingerprint=fingerprint)

  if restored is not None:
    tree, start, meta = restored
    metrics = list(meta["metrics"])
    c = meta["counters"]
    run = _Progress(start, tree["theta"], tree["opt_state"], tree["est_state"], c["total"], c["sequential"],
                    c["num_skipped"], len(metrics), c["wall"])
    log.info("resumed from step %d of %s", start, checkpoint_dir)
  else:
    metrics = []
    est_state = estimator.init(init_key, theta)
    burn_in = int(getattr(est_state, "init_steps", 0))  # inner steps `init` spent staggering, counted as compute
    run = _Progress(0, theta, optimizer.init(theta), est_state, burn_in, 0, 0, 0, 0.0)
  if metrics_path is not None:
    _write_jsonl(metrics_path, metrics)

  outer_step = make_outer_step(estimator, optimizer)
  eval_fn = jax.jit(evaluate) if evaluate is not None else None
  session_start, session_inner = time.perf_counter(), run.total
  wall0 = run.wall
  wall = lambda: wall0 + time.perf_counter() - session_start

  def save(p):
    if checkpoint_dir is None or p.step == 0:
      return
    meta = {"metrics": metrics[:p.num_records], "counters": {"total": p.total, "sequential": p.sequential,
            "num_skipped": p.num_skipped, "wall": p.wall}}
    ckpt.save(checkpoint_dir, p.step, bundle(p), config_fingerprint=fingerprint, metadata=meta,
              keep=keep_checkpoints)

  def emit(record):
    metrics.append(record)
    if metrics_path is not None:
      with open(metrics_path, "a") as f:
        f.write(json.dumps(record) + "\n")

  bar = _progress_bar(progress, steps, run.step, progress_desc)
  try:
    if eval_fn is not None and run.step == 0 and not metrics:
      record = {"step": 0, "total_inner_steps": run.total, "sequential_inner_steps": 0, "wall_time": 0.0}
      record.update(_scalars(jax.device_get(eval_fn(run.theta, eval_key)), "eval_"))
      emit(record)
      run = run._replace(num_records=len(metrics))

    stop, last_eval = False, None
    while run.step < steps and not stop:
      n = run.step + 1
      new_theta, new_opt, new_est, info = outer_step(run.theta, run.opt_state, run.est_state, train_key,
                                                     jnp.asarray(run.step, jnp.int32))
      record = _record(n, jax.device_get(info), run, sequential_steps_per_update)
      skipped, nonfinite, num_skipped = record["skipped"], record["num_nonfinite"], record["num_skipped"]
      do_eval = eval_fn is not None and (n == steps or (eval_every and n % eval_every == 0))
      if do_eval:
        record.update(_scalars(jax.device_get(eval_fn(new_theta, eval_key)), "eval_"))
      record["wall_time"] = wall()
      if skipped:
        log.warning("step %d: non-finite gradient or parameters; update skipped (%d so far)", n, num_skipped)
      elif nonfinite:
        log.info("step %d: %d non-finite inner losses", n, nonfinite)
      logged = n % log_every == 0 or n == steps or do_eval or skipped or nonfinite > 0
      if logged:
        emit(record)
      run = _Progress(n, new_theta, new_opt, new_est, record["total_inner_steps"], record["sequential_inner_steps"],
                      num_skipped, len(metrics), record["wall_time"])
      if callback is not None:
        stop = bool(callback(n, run.theta, record))
      if bar is not None:
        bar.update(1)
        if logged:
          last_eval = record.get("eval_meta_loss", last_eval)
          _postfix(bar, record, (run.total - session_inner) / max(time.perf_counter() - session_start, 1e-9), last_eval)
      if checkpoint_every and n % checkpoint_every == 0 or n == steps or stop:
        save(run)
  except KeyboardInterrupt:
    save(run)
    raise
  finally:
    if bar is not None:
      bar.close()
  del metrics[run.num_records:]
  return TrainResult(run.theta, run.opt_state, run.est_state, run.step, metrics, run.num_skipped)


def _record(n, info, run, sequential_steps_per_update):
  """The log record of outer step n from the step's info (on the host) and the counters before it."""
  seq = info.get("sequential_inner_steps", sequential_steps_per_update)
  skipped = bool(info["skipped"])
  record = {"step": n, "loss": _scalar(info.get("loss", np.nan)),
            "total_inner_steps": run.total + int(info.get("inner_steps", 0)),
            "sequential_inner_steps": run.sequential + int(seq or 0),
            "num_nonfinite": int(info.get("num_nonfinite", 0)), "skipped": skipped,
            "num_skipped": run.num_skipped + skipped, "wall_time": None}
  record.update({k: v for k, v in _scalars(info).items() if k not in record and k != "inner_steps"})
  return record


def _write_jsonl(path, records):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  os.replace(tmp, path)


def _progress_bar(enabled, total, initial, desc):
  if not enabled:
    return None
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)


def _postfix(bar, record, inner_per_s, meta_loss):
  fmt = lambda x: "nan" if x is None else f"{x:.4g}"
  post = {"loss": fmt(record.get("loss")), "inner/s": f"{inner_per_s:.3g}"}
  if meta_loss is not None:
    post["meta_loss"] = fmt(meta_loss)
  if record.get("num_skipped"):
    post["skipped"] = record["num_skipped"]
  bar.set_postfix(post, refresh=False)


def load_metrics(path: str) -> list[dict]:
  """Reads a metrics.jsonl written by `train`."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
