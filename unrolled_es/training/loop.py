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

from unrolled_es.training import checkpoint as ckpt
from unrolled_es.core.system import check_int

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


def make_outer_step(estimator, optimizer, after_update=None):
  """The jitted outer step `(theta, opt_state, est_state, key, step) -> (theta, opt_state, est_state, info)`.

  `info` is the estimator's info plus "skipped" (the update was not applied) and "grad_norm". `after_update(theta,
  est_state) -> theta`, if given, runs after the optimizer's update (e.g. merging observation statistics that the
  particles gathered into θ's masked part): outside the estimate, which stays pure. The same (estimator,
  optimizer, after_update) gets the same jitted function, so a resumed or repeated run does not recompile.
  """
  try:
    return _cached_outer_step(estimator, optimizer, after_update)
  except TypeError:  # unhashable estimator or optimizer
    return _outer_step(estimator, optimizer, after_update)


def _outer_step(estimator, optimizer, after_update=None):
  def outer_step(theta, opt_state, est_state, key, step):
    grad, est_state, info = estimator.estimate(jax.random.fold_in(key, step), theta, est_state)
    updates, new_opt_state = optimizer.update(grad, opt_state, theta)
    new_theta = optax.apply_updates(theta, updates)
    if after_update is not None:
      new_theta = after_update(new_theta, est_state)
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
          sequential_steps_per_update: int | None = None, callback: Callable | None = None,
          progress: bool = True, progress_desc: str = "train", after_update: Callable | None = None,
          tensorboard_dir: str | None = None, counters: Callable | None = None) -> TrainResult:
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
  after_update:  `after_update(theta, est_state) -> theta`, jit-able, applied after each optimizer update
                 (see make_outer_step).
  tensorboard_dir: also write every logged record's numbers as TensorBoard scalars (tag = the record's key,
                 step = the outer step) to an event file in this folder; needs tensorboardX (the `tensorboard`
                 extra). A resumed run appends a new event file, which TensorBoard reads together with the old one.

  Records hold: step, loss (the estimator's window loss), total_inner_steps and sequential_inner_steps
  (cumulative), num_nonfinite, skipped, num_skipped, grad_norm, wall_time (seconds, summed over resumes),
  the estimator's other info entries and any eval_* entries.
  """
  steps, eval_every, log_every, checkpoint_every = _check_loop_args(steps, eval_every, log_every, checkpoint_every,
                                                                    resume, checkpoint_dir)
  init_key, train_key, eval_key = jax.random.split(key, 3)
  fingerprint = ckpt.fingerprint({"config": config or {}, "key": _key_fingerprint(key)})
  run, metrics = _start(estimator, optimizer, theta, key, init_key, checkpoint_dir, resume, fingerprint)
  if metrics_path is not None:
    _write_jsonl(metrics_path, metrics)
  loop = _Loop(make_outer_step(estimator, optimizer, after_update), jax.jit(evaluate) if evaluate else None,
               train_key, eval_key, steps, eval_every, log_every, checkpoint_every, sequential_steps_per_update,
               callback, _Recorder(metrics, metrics_path, _tensorboard_writer(tensorboard_dir)),
               _Clock(run.wall, run.total, _counts(counters, run.theta)),
               functools.partial(_save, checkpoint_dir, fingerprint, key, keep_checkpoints, metrics),
               _progress_bar(progress, steps, run.step, progress_desc), counters)
  run = _run_and_close(loop, run)
  del metrics[run.num_records:]
  return TrainResult(run.theta, run.opt_state, run.est_state, run.step, metrics, run.num_skipped)


def _run_and_close(loop, run):
  """The evaluation of the start and the outer steps; the progress bar and TensorBoard file closed however it ends."""
  try:
    return _run_loop(loop, _evaluate_start(loop, run))
  finally:
    if loop.bar is not None:
      loop.bar.close()
    if loop.recorder.tensorboard is not None:
      loop.recorder.tensorboard.close()


def _check_loop_args(steps, eval_every, log_every, checkpoint_every, resume, checkpoint_dir):
  out = (check_int("steps", steps, 0), check_int("eval_every", eval_every, 0), check_int("log_every", log_every, 1),
         check_int("checkpoint_every", checkpoint_every, 0))
  if resume and checkpoint_dir is None:
    raise ValueError("resume=True needs a checkpoint_dir")
  return out


def burn_in_steps(est_state) -> int:
  """Inner steps an estimator's `init` spent staggering (summed over the members of a multi_task state)."""
  if isinstance(est_state, tuple) and not hasattr(est_state, "_fields"):
    return sum(burn_in_steps(s) for s in est_state)
  return int(getattr(est_state, "init_steps", 0))


def _start(estimator, optimizer, theta, key, init_key, checkpoint_dir, resume, fingerprint):
  """(progress, logged records): restored from the newest good checkpoint on resume, else a fresh start."""
  existing = checkpoint_dir is not None and os.path.isdir(checkpoint_dir) and ckpt.list_checkpoints(checkpoint_dir)
  restored = None
  if existing:
    if not resume:
      raise ValueError(f"checkpoint_dir {checkpoint_dir!r} already holds checkpoints; pass resume=True "
                       "to continue that run, or choose an empty folder")
    template = jax.eval_shape(lambda: {"theta": theta, "opt_state": optimizer.init(theta),
                                       "est_state": estimator.init(init_key, theta), "key": key})
    restored = ckpt.restore_latest(checkpoint_dir, template, config_fingerprint=fingerprint)
  if restored is None:
    est_state = estimator.init(init_key, theta)
    # inner steps `init` spent staggering count as compute
    return _Progress(0, theta, optimizer.init(theta), est_state, burn_in_steps(est_state), 0, 0, 0, 0.0), []
  tree, start, meta = restored
  c = meta["counters"]
  log.info("resumed from step %d of %s", start, checkpoint_dir)
  return (_Progress(start, tree["theta"], tree["opt_state"], tree["est_state"], c["total"], c["sequential"],
                    c["num_skipped"], len(meta["metrics"]), c["wall"]), list(meta["metrics"]))


class _Recorder(NamedTuple):
  """The logged records, in memory and appended to metrics.jsonl (and TensorBoard, if asked) as they come."""
  records: list
  path: str | None
  tensorboard: Any = None   # a tensorboardX SummaryWriter

  def emit(self, record):
    self.records.append(record)
    if self.path is not None:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if self.tensorboard is not None:
      for name, value in record.items():
        if name != "step" and isinstance(value, (int, float)):   # None (non-finite) is left out, as in the JSON
          self.tensorboard.add_scalar(name, float(value), record["step"])


def _tensorboard_writer(logdir):
  if logdir is None:
    return None
  try:
    from tensorboardX import SummaryWriter
  except ImportError:
    raise ValueError("tensorboard_dir needs tensorboardX: pip install 'unrolled_es[tensorboard]'") from None
  return SummaryWriter(logdir)


def _counts(counters, theta) -> dict:
  return {} if counters is None else _scalars(jax.device_get(counters(theta)))


class _Clock:
  """Wall time summed over resumes, and this session's inner steps (and counters) per second."""

  def __init__(self, wall0, inner0, counts0):
    self.wall0, self.inner0, self.counts0, self.start = wall0, inner0, counts0, time.perf_counter()

  def wall(self):
    return self.wall0 + time.perf_counter() - self.start

  def inner_per_second(self, total):
    return (total - self.inner0) / max(time.perf_counter() - self.start, 1e-9)

  def rates(self, record) -> dict:
    """Each counter's growth per second since this session started, from a record that holds its value."""
    elapsed = max(time.perf_counter() - self.start, 1e-9)
    return {f"{k}/s": (record[k] - v) / elapsed for k, v in self.counts0.items()
            if record.get(k) is not None and v is not None}


class _Loop(NamedTuple):
  """Everything the loop's stages share."""
  outer_step: Callable
  eval_fn: Callable | None
  train_key: Any
  eval_key: Any
  steps: int
  eval_every: int
  log_every: int
  checkpoint_every: int
  sequential_steps_per_update: int | None
  callback: Callable | None
  recorder: _Recorder
  clock: _Clock
  save: Callable
  bar: Any
  counters: Callable | None = None


def _save(checkpoint_dir, fingerprint, key, keep, metrics, p):
  if checkpoint_dir is None or p.step == 0:
    return
  meta = {"metrics": metrics[:p.num_records], "counters": {"total": p.total, "sequential": p.sequential,
          "num_skipped": p.num_skipped, "wall": p.wall}}
  bundle = {"theta": p.theta, "opt_state": p.opt_state, "est_state": p.est_state, "key": key}
  ckpt.save(checkpoint_dir, p.step, bundle, config_fingerprint=fingerprint, metadata=meta, keep=keep)


def _evaluate_start(loop: _Loop, run: _Progress) -> _Progress:
  """The evaluation of the starting θ, once per run (not again on resume)."""
  if loop.eval_fn is None or run.step != 0 or loop.recorder.records:
    return run
  record = {"step": 0, "total_inner_steps": run.total, "sequential_inner_steps": 0, "wall_time": 0.0,
            **_counts(loop.counters, run.theta)}
  record.update(_scalars(jax.device_get(loop.eval_fn(run.theta, loop.eval_key)), "eval_"))
  loop.recorder.emit(record)
  return run._replace(num_records=len(loop.recorder.records))


def _run_loop(loop: _Loop, run: _Progress) -> _Progress:
  """Outer steps until `steps` or an early stop; an interrupt checkpoints the last completed step first."""
  try:
    return _steps(loop, run)
  except _Interrupted as e:
    loop.save(e.run)
    raise KeyboardInterrupt from None


class _Interrupted(Exception):
  def __init__(self, run):
    self.run = run


def _steps(loop: _Loop, run: _Progress) -> _Progress:
  stop, last_eval = False, None
  while run.step < loop.steps and not stop:
    try:
      run, record, logged = _one_step(loop, run)
    except KeyboardInterrupt:
      raise _Interrupted(run) from None
    try:
      stop, last_eval = _after_step(loop, run, record, logged, last_eval)
    except KeyboardInterrupt:
      raise _Interrupted(run) from None
  return run


def _after_step(loop: _Loop, run: _Progress, record, logged, last_eval):
  """The callback, the progress bar and the checkpoint after a step. Returns (stop early, last meta-loss)."""
  stop = bool(loop.callback(run.step, run.theta, record)) if loop.callback is not None else False
  if loop.bar is not None:
    loop.bar.update(1)
    if logged:
      last_eval = record.get("eval_meta_loss", last_eval)
      _postfix(loop.bar, record, loop.clock.inner_per_second(run.total), last_eval, loop.clock.rates(record))
  if loop.checkpoint_every and run.step % loop.checkpoint_every == 0 or run.step == loop.steps or stop:
    loop.save(run)
  return stop, last_eval


def _one_step(loop: _Loop, run: _Progress):
  """One outer step, its record (evaluated when due), logged when due. Returns (progress, record, logged)."""
  n = run.step + 1
  new_theta, new_opt, new_est, info = loop.outer_step(run.theta, run.opt_state, run.est_state, loop.train_key,
                                                      jnp.asarray(run.step, jnp.int32))
  record = _record(n, jax.device_get(info), run, loop.sequential_steps_per_update)
  do_eval = loop.eval_fn is not None and (n == loop.steps or (loop.eval_every and n % loop.eval_every == 0))
  if do_eval:
    record.update(_scalars(jax.device_get(loop.eval_fn(new_theta, loop.eval_key)), "eval_"))
  record.update(_counts(loop.counters, new_theta))
  record["wall_time"] = loop.clock.wall()
  skipped, nonfinite = record["skipped"], record["num_nonfinite"]
  if skipped:
    log.warning("step %d: non-finite gradient or parameters; update skipped (%d so far)", n, record["num_skipped"])
  elif nonfinite:
    log.info("step %d: %d non-finite inner losses", n, nonfinite)
  logged = n % loop.log_every == 0 or n == loop.steps or do_eval or skipped or nonfinite > 0
  if logged:
    loop.recorder.emit(record)
  run = _Progress(n, new_theta, new_opt, new_est, record["total_inner_steps"], record["sequential_inner_steps"],
                  record["num_skipped"], len(loop.recorder.records), record["wall_time"])
  return run, record, logged


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
  try:
    from tqdm.auto import tqdm
  except ImportError:   # tqdm comes with the `cli` extra; the core library trains without a bar
    log.info("no progress bar: tqdm is not installed")
    return None
  return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)


def _postfix(bar, record, inner_per_s, meta_loss, rates=()):
  fmt = lambda x: "nan" if x is None else f"{x:.4g}"
  post = {"loss": fmt(record.get("loss")), "inner/s": f"{inner_per_s:.3g}"}
  post.update({name: f"{rate:.3g}" for name, rate in dict(rates).items()})
  if meta_loss is not None:
    post["meta_loss"] = fmt(meta_loss)
  if record.get("num_skipped"):
    post["skipped"] = record["num_skipped"]
  bar.set_postfix(post, refresh=False)


def load_metrics(path: str) -> list[dict]:
  """Reads a metrics.jsonl written by `train`."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
