"""Env-steps per second of the MuJoCo tasks: native MuJoCo through the host callback, MJX, Gymnasium's vector env.

    python -m benchmarks.env_throughput [--quick] [--envs Hopper-v5,Swimmer-v5] [--members 64] [--seconds 10] [--rounds 5]

Each backend steps `members` environments with uniformly random actions for a fixed wall time, in the way the
estimators drive them:
  native      the control task's ControlEnv (tasks/mujoco_native.py): a jitted scan whose body is the vmapped env
              step, i.e. one host callback per step for all members (state in JAX, float64 bit for bit). Members
              are kept running past a termination (their done flag is cleared), so every step simulates all of them.
  native_raw  the same simulator called from numpy directly (no JAX): what the callback costs is the difference.
  mjx         mujoco-mjx (Swimmer-v5 only, the one the project ports), the same harness as native.
  gymnasium   gymnasium.vector.SyncVectorEnv of the same number of Gymnasium environments (auto-reset), one process.
Compilation is excluded (one untimed call first). The backends take turns: the timed seconds are split into
--rounds rounds, each backend timed once per round, so that a change in the shared machine's load falls on all of
them; a backend's rate is its median over rounds, and native over MJX the median of the per-round ratios (each
round's figures are in the JSON, with the load average). Every number is env steps (one action, frame_skip physics
steps) per second.
Writes env_throughput.json (env_throughput_quick.json with --quick) to --out.
"""
import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import write_json_atomic
from unrolled_es_tasks import mujoco_native
from unrolled_es_tasks.control_envs import MJX_ENVS, NATIVE_ENVS, make_env

QUICK_ENVS = ("Swimmer-v5", "Hopper-v5", "HalfCheetah-v5")


def _rate(call, seconds):
  """Env steps per second of `call()` -> env steps taken, over about `seconds` (two calls at least)."""
  steps, calls, start = 0, 0, time.perf_counter()
  while time.perf_counter() - start < seconds or calls < 2:
    steps += call()
    calls += 1
  return steps / (time.perf_counter() - start)


def jax_backend(env_id, backend, members, chunk):
  """A call stepping the ControlEnv `chunk` times per jitted call, vmapped over members; and its cleanup."""
  env = make_env(env_id, backend)
  low, high = jnp.asarray(env.action_space.low), jnp.asarray(env.action_space.high)

  def one_step(state, key):
    actions = jax.random.uniform(key, (members, len(low)), jnp.float32, low, high)
    _, state, _, _ = jax.vmap(env.step)(jax.random.split(key, members), state, actions)
    if "done" in state:
      state = dict(state, done=jnp.zeros_like(state["done"]))   # keep every member simulating
    return state, None

  run = jax.jit(lambda state, key: jax.lax.scan(one_step, state, jax.random.split(key, chunk))[0])
  _, state = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(0), members))
  box = {"state": state, "i": 0}

  def call():
    box["i"] += 1
    box["state"] = jax.block_until_ready(run(box["state"], jax.random.PRNGKey(box["i"])))
    return members * chunk
  return call, lambda: None


def native_raw(env_id, members, chunk):
  sim = mujoco_native.simulator(env_id)
  physics, position, _ = sim.reset(np.arange(members, dtype=np.uint32))
  low, high = sim.model.actuator_ctrlrange.T
  rng = np.random.default_rng(0)
  box = {"physics": physics, "position": position}

  def call():
    for _ in range(chunk):
      box["physics"], box["position"], *_ = sim.step(box["physics"], box["position"],
                                                     rng.uniform(low, high, (members, len(low))))
    return members * chunk
  return call, lambda: None


def gymnasium_vector(env_id, members, chunk):
  import gymnasium
  envs = gymnasium.vector.SyncVectorEnv([lambda: gymnasium.make(env_id) for _ in range(members)])
  envs.reset(seed=0)
  rng = np.random.default_rng(0)
  low, high = envs.single_action_space.low, envs.single_action_space.high

  def call():
    for _ in range(chunk):
      envs.step(rng.uniform(low, high, (members, len(low))).astype(np.float32))
    return members * chunk
  return call, envs.close


def _backends(env_id, members, chunk):
  """{name: (call, close)}, each call made once already (compilation and first-touch out of the timing)."""
  makers = {"native": lambda: jax_backend(env_id, "native", members, chunk),
            "native_raw": lambda: native_raw(env_id, members, chunk),
            "gymnasium": lambda: gymnasium_vector(env_id, members, chunk)}
  if env_id in MJX_ENVS:
    makers["mjx"] = lambda: jax_backend(env_id, "mjx", members, chunk)
  out = {}
  for name, make in makers.items():
    out[name] = make()
    out[name][0]()
  return out


def measure(env_id, members, chunk, seconds, rounds):
  """Every backend timed in `rounds` interleaved rounds of seconds/rounds each, so that a change of the shared
  machine's load hits all of them; rates are medians over rounds, and native/MJX the median of per-round ratios."""
  backends = _backends(env_id, members, chunk)
  rates = {name: [] for name in backends}
  for _ in range(rounds):
    for name, (call, _) in backends.items():
      rates[name].append(_rate(call, seconds / rounds))
  for _, close in backends.values():
    close()
  row = {name: {"env_steps_per_s": round(float(np.median(r)), 1), "rounds": [round(x, 1) for x in r],
                "load_average": os.getloadavg()[0]} for name, r in rates.items()}
  for name, r in row.items():
    print(f"{env_id:28s} {name:11s} {r['env_steps_per_s']:10.0f} env steps/s   (load {r['load_average']:.1f})",
          flush=True)
  if "mjx" in row:
    ratios = np.asarray(rates["native"]) / np.asarray(rates["mjx"])
    row["native_over_mjx"] = round(float(np.median(ratios)), 2)
    row["native_over_mjx_rounds"] = [round(float(x), 2) for x in ratios]
    print(f"{env_id:28s} native/MJX {row['native_over_mjx']}x, median of rounds {row['native_over_mjx_rounds']}")
  return row


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--envs", default=None, help="comma-separated ids (default: all nine; --quick: three)")
  parser.add_argument("--members", type=int, default=64)
  parser.add_argument("--seconds", type=float, default=None, help="timed seconds per backend (default 10; quick 3)")
  parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds the seconds are split into")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = parser.parse_args(argv)
  envs = args.envs.split(",") if args.envs else (QUICK_ENVS if args.quick else NATIVE_ENVS)
  seconds = args.seconds or (3.0 if args.quick else 10.0)
  start = time.time()
  if args.rounds < 1 or args.members < 1:
    parser.error(f"--rounds and --members must be at least 1; got {args.rounds} and {args.members}")
  rows = {env_id: measure(env_id, args.members, 20, seconds, args.rounds) for env_id in envs}
  result = {"members": args.members, "seconds_per_backend": seconds, "rounds": args.rounds, "cpu_count": os.cpu_count(),
            "jax": jax.__version__, "mujoco": mujoco_native.simulator(envs[0]).mujoco.__version__, "envs": rows,
            "seconds": round(time.time() - start, 1)}
  path = os.path.join(args.out, "env_throughput_quick.json" if args.quick else "env_throughput.json")
  write_json_atomic(result, path)
  print(f"wrote {path} in {result['seconds']} s")
  print(json.dumps({k: {b: v[b]["env_steps_per_s"] if isinstance(v[b], dict) else v[b] for b in v}
                    for k, v in rows.items()}, indent=1))


if __name__ == "__main__":
  main()
