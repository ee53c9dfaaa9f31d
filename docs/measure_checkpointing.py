"""unrolled_es.training.checkpoint against orbax-checkpoint, on the state a training run saves: speed, atomicity when the
writer is killed, damage detection, and resume. The numbers behind the choice recorded in docs/dependencies.md.

    python docs/measure_checkpointing.py [--particles 64] [--repeats 5] [--kills 6] [--out results.json]

The state is the README's main job's (`train` saves θ, the optimizer state, the estimator state and the run key):
ES-Single with N particles on the learned-optimizer task, shapes from jax.eval_shape, filled with random bytes.
  * speed: median save (written and fsynced/finished) and restore (against an abstract template) time, and size;
  * atomicity: a child process saves step after step and is SIGKILLed at a random moment; the parent then restores
    the newest checkpoint it finds and checks that it is one complete step (every float leaf = base + step);
  * damage: one byte flipped in the middle of the newest checkpoint's largest file: is it detected, and does
    resume fall back to the previous step, or is wrong data returned?
Needs orbax-checkpoint (it comes with flax) and the tasks (the `cli` extra).
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from unrolled_es.training import checkpoint as ours  # noqa: E402


def state_shapes(particles):
  """ShapeDtypeStructs of what train() checkpoints for the README's main job."""
  import optax

  import unrolled_es as ue
  from unrolled_es_tasks import learned_optimizer as lopt
  task = lopt.learned_optimizer()
  est = ue.es_single(task.system, num_particles=particles, sigma=0.01, truncation_length=1)
  key = jax.random.key(0)
  return jax.eval_shape(lambda: {"theta": task.theta0, "opt_state": optax.adam(1e-3).init(task.theta0),
                                 "est_state": est.init(key, task.theta0), "key": key})


def filled(shapes, step):
  """Arrays of the given shapes: float leaves = base (fixed random) + step, other leaves fixed random bits.
  Typed PRNG keys become their uint32 key data, which orbax needs anyway (recorded as a difference)."""
  rng = np.random.default_rng(0)

  def leaf(s):
    if jnp.issubdtype(s.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(jnp.asarray(rng.integers(0, 2 ** 32, (*s.shape, 2), dtype=np.uint32)))
    if jnp.issubdtype(s.dtype, jnp.floating):
      return jnp.asarray(rng.standard_normal(s.shape).astype(s.dtype) + np.asarray(step, s.dtype))
    return jnp.asarray(rng.integers(0, 100, s.shape).astype(s.dtype))
  return jax.tree_util.tree_map(leaf, shapes)


def keys_as_data(tree):
  return jax.tree_util.tree_map(
      lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x, tree)


class Ours:
  name = "unrolled_es.training.checkpoint"

  def __init__(self, directory):
    self.dir = directory

  def save(self, step, tree, meta):
    ours.save(self.dir, step, tree, config_fingerprint="f", metadata=meta, keep=2)

  def restore_latest(self, template):
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      found = ours.restore_latest(self.dir, template, config_fingerprint="f")
    if found is None:
      return None, [str(w.message) for w in caught]
    tree, step, _ = found
    return (tree, step), [str(w.message) for w in caught]


class Orbax:
  name = "orbax-checkpoint"

  def __init__(self, directory):
    import orbax.checkpoint as ocp
    self.ocp = ocp
    self.mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        max_to_keep=2, enable_async_checkpointing=False))

  def save(self, step, tree, meta):
    ocp = self.ocp
    self.mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(keys_as_data(tree)),
                                                 meta=ocp.args.JsonSave(meta)))
    self.mngr.wait_until_finished()

  def restore_latest(self, template):
    ocp = self.ocp
    self.mngr.reload()
    step = self.mngr.latest_step()
    if step is None:
      return None, []
    out = self.mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(
        jax.eval_shape(keys_as_data, template)), meta=ocp.args.JsonRestore()))
    return (out["state"], step), []


LIBRARIES = {"ours": Ours, "orbax": Orbax}


def size_of(directory):
  return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(directory) for f in fs)


def measure_speed(lib, shapes, meta, repeats):
  trees = [filled(shapes, s) for s in (1, 2)]
  saves, restores, size = [], [], 0
  for r in range(repeats):
    d = tempfile.mkdtemp(prefix=f"ckpt_{lib}_")
    store = LIBRARIES[lib](d)
    start = time.perf_counter()
    store.save(r + 1, trees[r % 2], meta)
    saves.append(time.perf_counter() - start)
    size = size_of(d)
    start = time.perf_counter()
    (tree, _), _ = store.restore_latest(shapes)
    jax.block_until_ready(tree)
    restores.append(time.perf_counter() - start)
    shutil.rmtree(d)
  return {"save_s": float(np.median(saves)), "restore_s": float(np.median(restores)), "bytes": size,
          "saves_s": saves, "restores_s": restores}


def consistent(tree, step, shapes):
  """Every float leaf equals base + step: one complete step, not a mix or a partial write."""
  want = filled(shapes, step)
  got, ref = keys_as_data(tree), keys_as_data(want)
  return all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
             zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)))


def child(lib, directory, particles):
  """Saves step after step until killed, printing each finished step."""
  shapes = state_shapes(particles)
  store = LIBRARIES[lib](directory)
  step = 1
  while True:
    store.save(step, filled(shapes, step), {"step": step})
    print(step, flush=True)
    step += 1


def measure_kills(lib, particles, kills, save_s, shapes):
  results = []
  for k in range(kills):
    d = tempfile.mkdtemp(prefix=f"kill_{lib}_")
    proc = subprocess.Popen([sys.executable, __file__, "--child", lib, d, "--particles", str(particles)],
                            stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()   # step 1 is on disk
    time.sleep(random.Random(k).uniform(0.0, 2 * save_s))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # a temporary file or folder left behind shows that the kill fell inside a write
    mid_write = any("tmp" in name for _, dirs, files in os.walk(d) for name in dirs + files)
    try:
      found, notes = LIBRARIES[lib](d).restore_latest(shapes)
      ok = found is not None and consistent(found[0], found[1], shapes)
      results.append({"restored_step": None if found is None else int(found[1]), "consistent": bool(ok),
                      "mid_write": mid_write})
    except Exception as e:   # a restore that fails outright after a kill is a failed resume
      results.append({"error": f"{type(e).__name__}: {str(e)[:200]}", "consistent": False, "mid_write": mid_write})
    shutil.rmtree(d)
  return results


def largest_file(directory, newest_step_dir=None):
  files = [os.path.join(r, f) for r, _, fs in os.walk(newest_step_dir or directory) for f in fs]
  return max(files, key=os.path.getsize)


def measure_damage(lib, shapes, meta):
  d = tempfile.mkdtemp(prefix=f"damage_{lib}_")
  store = LIBRARIES[lib](d)
  for step in (1, 2):
    store.save(step, filled(shapes, step), meta)
  newest = None if lib == "ours" else os.path.join(d, "2")
  target = largest_file(d, newest) if lib == "orbax" else ours.checkpoint_path(d, 2)
  with open(target, "r+b") as f:
    f.seek(os.path.getsize(target) // 2)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 0xFF]))
  try:
    found, notes = LIBRARIES[lib](d).restore_latest(shapes)
    step = int(found[1])
    verdict = ("fell back to the previous step" if step == 1 and consistent(found[0], 1, shapes) else
               "returned the damaged step unchanged" if consistent(found[0], 2, shapes) else
               "returned wrong data without an error")
    out = {"restored_step": step, "verdict": verdict, "notes": notes[:2]}
  except Exception as e:
    out = {"verdict": "raised (no fallback)", "error": f"{type(e).__name__}: {str(e)[:200]}"}
  shutil.rmtree(d)
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--particles", type=int, default=64)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--kills", type=int, default=6)
  p.add_argument("--out")
  p.add_argument("--child", nargs=2, metavar=("LIB", "DIR"), help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    return child(args.child[0], args.child[1], args.particles)
  shapes = state_shapes(args.particles)
  meta = {"metrics": [{"step": i, "loss": 0.5, "total_inner_steps": 128 * i} for i in range(3000)]}
  leaves = jax.tree_util.tree_leaves(shapes)
  report = {"particles": args.particles, "leaves": len(leaves), "jax": jax.__version__,
            "state_bytes": int(sum(np.prod(s.shape) * (8 if jnp.issubdtype(s.dtype, jax.dtypes.prng_key) else
                                                       np.dtype(s.dtype).itemsize) for s in leaves))}
  import orbax.checkpoint
  report["orbax_version"] = getattr(orbax.checkpoint, "__version__", "?")
  for lib in LIBRARIES:
    speed = measure_speed(lib, shapes, meta, args.repeats)
    report[lib] = {"speed": speed, "kills": measure_kills(lib, args.particles, args.kills, speed["save_s"], shapes),
                   "damage": measure_damage(lib, shapes, meta)}
    print(lib, json.dumps({k: v for k, v in report[lib]["speed"].items() if not k.endswith("s_s")}),
          f"kills consistent {sum(r['consistent'] for r in report[lib]['kills'])}/{args.kills}",
          f"({sum(r['mid_write'] for r in report[lib]['kills'])} mid-write),",
          "damage:", report[lib]["damage"]["verdict"], flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
