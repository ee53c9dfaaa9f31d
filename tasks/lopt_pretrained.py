"""The pretrained learned optimizer shipped as package data, and the export that refreshes it.

    import optax
    from unrolled_es_tasks.learned_optimizer import pretrained
    opt = pretrained()                       # a run of unknown length
    opt = pretrained(num_steps=5000)         # a known length: the nominal step follows its cosine schedule
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    params = optax.apply_updates(params, updates)

θ lives in tasks/data/lopt_pretrained.npz (about 300 numbers); tasks/data/lopt_pretrained.json holds its
architecture (`LoptSpec`), the SHA-256 of the .npz (checked at every load: a damaged file is refused with a
clear error rather than used), the outer step it was taken at, the exact meta-training command
(`benchmarks.lopt_pretrain`, as its run recorded it) with the detached form used for the long run, and its
settings; tasks/data/lopt_pretrained_log.jsonl is the meta-training
log (the evaluation records). `export(run_dir)` writes all three from a run's newest valid checkpoint.
"""
import functools
import hashlib
import json
import os
import shlex

import jax
import numpy as np

from unrolled_es_tasks import lopt_network
from unrolled_es_tasks.lopt_network import LoptSpec

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
NAME = "lopt_pretrained"
COMMAND = ("cd /work/main && setsid nohup nice -n 19 python -m benchmarks.lopt_pretrain --out /work/lopt_pretrain_run "
           "--no-progress > /work/lopt_pretrain_run.log 2>&1 &")


def _sha256(path):
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _flat(theta):
  return {f"{m}/{k}": np.asarray(v, np.float32) for m, d in theta.items() for k, v in d.items()}


def _unflat(arrays):
  theta = {}
  for name, value in arrays.items():
    module, leaf = name.rsplit("/", 1)
    theta.setdefault(module, {})[leaf] = np.asarray(value, np.float32)
  return theta


@functools.lru_cache(maxsize=4)
def load(data_dir: str = DATA_DIR):
  """(θ, spec, metadata) of the shipped optimizer; the .npz must match the checksum in the .json."""
  meta_path, npz_path = os.path.join(data_dir, NAME + ".json"), os.path.join(data_dir, NAME + ".npz")
  if not (os.path.isfile(meta_path) and os.path.isfile(npz_path)):
    raise ValueError(f"data_dir {data_dir!r} holds no {NAME}.json and {NAME}.npz (export a run with "
                     "`python -m benchmarks.lopt_pretrain --out RUN --export`)")
  with open(meta_path) as f:
    meta = json.load(f)
  digest = _sha256(npz_path)
  if digest != meta["sha256"]:
    raise ValueError(f"{npz_path} is damaged or was replaced: its SHA-256 is {digest}, the metadata says "
                     f"{meta['sha256']}; re-export it with `python -m benchmarks.lopt_pretrain --export`")
  with np.load(npz_path) as f:
    theta = _unflat({k: f[k] for k in f.files})
  return jax.tree_util.tree_map(np.asarray, theta), _spec(meta["spec"]), meta


def _spec(recorded: dict) -> LoptSpec:
  """A LoptSpec from its JSON form; fields added since it was written take their defaults."""
  return lopt_network.check_spec(**{k: tuple(v) if k == "hidden" else v for k, v in recorded.items()})


def pretrained(num_steps: int | None = None, kinds=None, data_dir: str = DATA_DIR):
  """The shipped meta-trained optimizer as an optax.GradientTransformation (see the module docstring).

  num_steps: the run's length, or None when it is unknown (the optimizer then uses its length-free time
  features and a constant nominal step). A run longer than num_steps goes on at the floor step size.
  kinds: which leaves are linear maps, embeddings, stacked or convolution kernels (`lopt_leaves`).
  """
  from unrolled_es_tasks.lopt_optax import as_optax
  theta, spec, _ = load(data_dir)
  return as_optax(theta, num_steps, spec, kinds)


def _log_records(run_dir):
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [r for r in records if any(k.startswith("eval_") for k in r)]


def _regressed(log):
  """The run's newest evaluation scores worse than its first (θ0): exporting would ship a worse optimizer."""
  scores = [r["eval_valid_mean"] for r in log if "eval_valid_mean" in r]
  return len(scores) >= 2 and scores[-1] > scores[0]


def export(run_dir: str, data_dir: str | None = None, force: bool = False) -> int:
  """Writes θ of `run_dir`'s newest valid checkpoint, its metadata and the evaluation log into `data_dir`.
  Refused (return 1) when the run's newest evaluation is worse than its first, unless `force`."""
  if _regressed(_log_records(run_dir)) and not force:
    scores = [r["eval_valid_mean"] for r in _log_records(run_dir) if "eval_valid_mean" in r]
    print(f"not exported: the run's newest evaluation ({scores[-1]:.4f}) is worse than at step 0 "
          f"({scores[0]:.4f}); pass --force to export it anyway")
    return 1
  from unrolled_es.training.checkpoint import restore_latest
  data_dir = DATA_DIR if data_dir is None else data_dir
  with open(os.path.join(run_dir, "command.json")) as f:
    command = json.load(f)
  spec = _spec(command["spec"])
  template = jax.eval_shape(lambda: lopt_network.init_theta(spec))
  restored = restore_latest(os.path.join(run_dir, "checkpoints"), template, part="theta")
  if restored is None:
    raise ValueError(f"run_dir {run_dir!r} holds no checkpoint yet")
  theta, step, _ = restored
  os.makedirs(data_dir, exist_ok=True)
  npz = os.path.join(data_dir, NAME + ".npz")
  np.savez(npz, **_flat(jax.device_get(theta)))
  log = _log_records(run_dir)
  with open(os.path.join(data_dir, NAME + "_log.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in log)
  argv = ["python", "-m", "benchmarks.lopt_pretrain"] + list(command["argv"][1:])
  meta = {"sha256": _sha256(npz), "outer_step": int(step), "spec": spec._asdict(), "command": shlex.join(argv),
          "background_form": COMMAND,
          "settings": command["settings"], "first_eval": log[0] if log else None,
          "last_eval": log[-1] if log else None,
          "note": f"theta of outer step {int(step)} of {command['settings']['steps']} planned (the newest "
                  "checkpoint at export time)"}
  with open(os.path.join(data_dir, NAME + ".json"), "w") as f:
    json.dump(meta, f, indent=1)
  load.cache_clear()
  print(f"exported outer step {int(step)} of {run_dir} to {data_dir}")
  return 0
