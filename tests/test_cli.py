"""`unrolled-es`: the run folder, exact --resume, and one-line errors (exit code 2) for bad input."""
import functools
import json
import os
import subprocess
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unrolled_es_tasks.base import Task
from unrolled_es.training import checkpoint as ckpt
from unrolled_es import cli
from unrolled_es.cli import assemble
from unrolled_es.core.system import UnrolledSystem, evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Estimator(NamedTuple):
  init: callable
  estimate: callable


@functools.lru_cache(maxsize=None)  # the same task and estimator objects, so each step compiles once
def toy_task(horizon=20):
  def init(key, theta):
    return 0.1 * jax.random.normal(key, (2,))

  def step(theta, s, key):
    s = 0.8 * s + theta + 0.01 * jax.random.normal(key, (2,))
    return s, jnp.sum((s - 1.0) ** 2)

  system = UnrolledSystem(init, step, horizon)
  settings = {"sigma": 0.1, "num_particles": 4, "truncation_length": 2, "outer_lr": 0.05, "optimizer": "adam",
              "steps": 8}
  return Task("toy", system, jnp.zeros(2), lambda theta, key: {"meta_loss": evaluate(system, theta, key)}, settings)


@functools.lru_cache(maxsize=None)
def fake_es(system, num_particles=4, sigma=0.1, truncation_length=2, antithetic=True, stagger=True):
  """Truncated BPTT plus key-dependent noise of scale sigma: enough to exercise the command line."""
  if num_particles % 2 and antithetic:
    raise ValueError(f"num_particles must be even with antithetic=True; got {num_particles}")

  def window(theta, s, keys):
    s, losses = jax.lax.scan(lambda s, k: system.step(theta, s, k), s, keys)
    return jnp.mean(losses), s

  def estimate(key, theta, states):
    keys = jax.random.split(key, num_particles * truncation_length).reshape(num_particles, truncation_length)
    (loss, states), g = jax.vmap(jax.value_and_grad(window, has_aux=True), (None, 0, 0))(theta, states, keys)
    grad = g.mean(0) + sigma * 0.01 * jax.random.normal(jax.random.fold_in(key, 1), g.shape[1:])
    return grad, states, {"loss": loss.mean(), "num_nonfinite": jnp.int32(0),
                          "inner_steps": jnp.int32(num_particles * truncation_length)}

  init = lambda key, theta: jax.vmap(system.init, (0, None))(jax.random.split(key, num_particles), theta)
  return Estimator(init, estimate)


@functools.lru_cache(maxsize=None)
def fake_bptt(system, num_particles=4, truncation_length=2):
  return fake_es(system, num_particles, 0.0, truncation_length, False)


@pytest.fixture
def fakes(monkeypatch):
  reports = []
  monkeypatch.setattr(assemble, "task_names", lambda: ("toy", "other"))
  report = lambda theta, out: reports.append(("toy", np.asarray(theta), out)) or [
      {"optimizer": "learned", "test_loss": 0.25}, {"optimizer": "adam", "test_loss": 0.5}]
  monkeypatch.setattr(assemble, "build_task", lambda name, **kw: toy_task(**kw)._replace(report=report))
  monkeypatch.setattr(assemble, "estimator_constructors", lambda: {"fake_es": fake_es, "fake_bptt": fake_bptt})
  return reports


def train(out, *extra):
  return cli.main(["train", "--task", "toy", "--estimator", "fake_es", "--out", str(out), "--no-progress",
                   "--checkpoint-every", "3", "--eval-every", "4", *extra])


def records(out):
  with open(os.path.join(out, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k != "wall_time"} for line in f]


def error_line(capsys):
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("unrolled-es: error: ") and "Traceback" not in err[0], err
  return err[0]


def test_list(fakes, capsys):
  assert cli.main(["list"]) == 0
  out = capsys.readouterr().out
  assert "toy" in out and "other" in out and "fake_es" in out and "Truncated BPTT plus" in out and "adam" in out


def test_train_writes_the_run_folder(fakes, tmp_path, capsys):
  assert train(tmp_path, "--particles", "6", "--task-arg", "horizon=30") == 0
  assert set(os.listdir(tmp_path)) >= {"config.json", "metrics.jsonl", "meta_loss.png", "checkpoints"}
  cfg = json.load(open(tmp_path / "config.json"))
  assert cfg["particles"] == 6 and cfg["task_args"] == {"horizon": 30}  # from the command line
  assert cfg["sigma"] == 0.1 and cfg["truncation"] == 2 and cfg["steps"] == 8 and cfg["optimizer"] == "adam"
  ms = records(tmp_path)
  assert [m["step"] for m in ms] == list(range(9))
  assert ms[-1]["total_inner_steps"] == 8 * 6 * 2 and ms[-1]["sequential_inner_steps"] == 8 * 2
  assert [m["step"] for m in ms if "eval_meta_loss" in m] == [0, 4, 8]
  assert open(tmp_path / "meta_loss.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path / "checkpoints"))] == [6, 8]
  assert len(fakes) == 1 and fakes[0][0] == "toy" and fakes[0][2] == str(tmp_path)
  out = capsys.readouterr().out
  assert "learned" in out and "0.25" in out and "done: 8 outer steps, 96 total inner steps" in out


def test_resume_continues_exactly(fakes, tmp_path, capsys):
  full, part = tmp_path / "full", tmp_path / "part"
  assert train(full) == 0
  assert train(part, "--steps", "4") == 0
  assert cli.main(["train", "--out", str(part), "--resume", "--steps", "8", "--no-progress"]) == 0
  assert records(part) == records(full)
  last = lambda d: ckpt.list_checkpoints(str(d / "checkpoints"))[-1][1]
  assert [r.tobytes() for r in ckpt._read(last(part))[1]] == [r.tobytes() for r in ckpt._read(last(full))[1]]
  # a changed option is refused, naming it
  capsys.readouterr()
  assert cli.main(["train", "--out", str(part), "--resume", "--sigma", "0.2", "--no-progress"]) == 2
  assert "--sigma 0.1, not 0.2" in error_line(capsys)


def test_overwrite_starts_over(fakes, tmp_path):
  assert train(tmp_path, "--steps", "3") == 0
  assert train(tmp_path, "--steps", "2", "--overwrite") == 0
  assert [m["step"] for m in records(tmp_path)] == [0, 1, 2]


@pytest.mark.parametrize("argv, message", [
    (["--task", "nope"], "unknown task 'nope'; choose one of: toy, other"),
    (["--estimator", "nope"], "unknown estimator 'nope'; choose one of: fake_es, fake_bptt"),
    (["--particles", "0"], "--particles: must be a finite number >= 1; got '0'"),
    (["--particles", "2.5"], "--particles: expected an integer"),
    (["--sigma", "-1"], "--sigma: must be a finite number > 0"),
    (["--sigma", "nan"], "--sigma: must be a finite number > 0"),
    (["--lr", "inf"], "--lr: must be a finite number > 0"),
    (["--steps", "0"], "--steps: must be a finite number >= 1"),
    (["--optimizer", "lbfgs"], "invalid choice: 'lbfgs'"),
    (["--task-arg", "horizon"], "expected NAME=VALUE"),
    (["--task-arg", "colour=1"], "task 'toy': "),
    (["--estimator-arg", "bogus=1"], "estimator 'fake_es' takes no option bogus; it takes: num_particles"),
    (["--particles", "3"], "estimator 'fake_es': num_particles must be even"),
    (["--rank", "2"], "estimator 'fake_es' takes no noise, so --rank does not apply"),
    (["--resume", "--overwrite"], "not allowed with argument"),
])
def test_bad_input_is_one_line_exit_2(fakes, tmp_path, capsys, argv, message):
  defaults = ["--task", "toy", "--estimator", "fake_es", "--steps", "1"]  # the later flag wins
  assert cli.main(["train", "--out", str(tmp_path), "--no-progress", *defaults, *argv]) == 2
  assert message in error_line(capsys)
  assert not os.path.exists(tmp_path / "checkpoints")


def test_out_folder_with_a_run_is_refused(fakes, tmp_path, capsys):
  assert train(tmp_path, "--steps", "2") == 0
  capsys.readouterr()
  assert train(tmp_path, "--steps", "2") == 2
  assert "already holds a run; pass --resume to continue it or --overwrite" in error_line(capsys)


def test_corrupt_and_mismatched_checkpoints(fakes, tmp_path, capsys):
  assert train(tmp_path, "--steps", "6") == 0  # checkpoints 3 and 6
  paths = [p for _, p in ckpt.list_checkpoints(str(tmp_path / "checkpoints"))]
  with open(paths[1], "r+b") as f:
    f.seek(200)
    f.write(b"\0" * 64)
  capsys.readouterr()
  assert cli.main(["train", "--out", str(tmp_path), "--resume", "--no-progress"]) == 0  # falls back to step 3
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("unrolled-es: warning: checkpoint") and "falling back" in err[0]
  for _, p in ckpt.list_checkpoints(str(tmp_path / "checkpoints")):
    with open(p, "r+b") as f:
      f.truncate(100)
  assert cli.main(["train", "--out", str(tmp_path), "--resume", "--no-progress"]) == 2
  *warned, err = capsys.readouterr().err.strip().splitlines()  # a warning per damaged file, then the error
  assert len(warned) == 2 and all(w.startswith("unrolled-es: warning: checkpoint") for w in warned)
  assert err.startswith("unrolled-es: error: no usable checkpoint")
  # a config.json edited behind the checkpoints' back: the fingerprint no longer matches
  assert train(tmp_path, "--steps", "3", "--overwrite") == 0
  cfg = json.load(open(tmp_path / "config.json"))
  json.dump(dict(cfg, lr=0.5), open(tmp_path / "config.json", "w"))
  capsys.readouterr()
  assert cli.main(["train", "--out", str(tmp_path), "--resume", "--steps", "4", "--no-progress"]) == 2
  assert "different configuration" in error_line(capsys)


def test_real_task_and_estimator(tmp_path, capsys):
  argv = ["train", "--task", "influence_balancing", "--task-arg", "horizon=20", "--estimator", "pes", "--particles",
          "4", "--truncation", "5", "--lr", "1e-3", "--steps", "3", "--out", str(tmp_path), "--no-progress"]
  assert cli.main(argv) == 0
  ms = records(tmp_path)
  assert [m["step"] for m in ms] == [0, 1, 2, 3] and all(np.isfinite(m["eval_meta_loss"]) for m in ms)
  # 4 antithetic pairs of 5 steps per update, plus the staggering burn-in counted at step 0
  assert [b["total_inner_steps"] - a["total_inner_steps"] for a, b in zip(ms, ms[1:])] == [40, 40, 40]
  assert "done: 3 outer steps" in capsys.readouterr().out


def test_console_script_errors_without_traceback(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-m", "unrolled_es.cli", "train", "--task", "no_such_task", "--estimator",
                         "pes", "--out", str(tmp_path)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines() == [
      "unrolled-es: error: unknown task 'no_such_task'; choose one of: " + ", ".join(__import__("unrolled_es_tasks").NAMES)]


def test_a_run_killed_with_sigkill_resumes_to_the_same_result(tmp_path):
  """A real kill -9 of `unrolled-es train` halfway, then --resume, ends bit-identical to an uninterrupted run."""
  import signal
  import time
  args = ["train", "--task", "influence_balancing", "--task-arg", "horizon=20", "--estimator", "pes",
          "--particles", "8", "--truncation", "5", "--lr", "1e-3", "--optimizer", "sgd", "--eval-every", "0",
          "--checkpoint-every", "10", "--no-progress", "--no-report"]
  cmd = lambda out, steps: [sys.executable, "-m", "unrolled_es.cli", *args, "--steps", str(steps), "--out", str(out)]
  full, killed = tmp_path / "full", tmp_path / "killed"
  assert subprocess.run(cmd(full, 400), capture_output=True, timeout=300).returncode == 0
  proc = subprocess.Popen(cmd(killed, 400), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      done = ckpt.list_checkpoints(str(killed / "checkpoints")) if (killed / "checkpoints").exists() else []
      if done and done[-1][0] >= 50:
        proc.send_signal(signal.SIGKILL)
        break
      time.sleep(0.05)
  finally:
    proc.kill()
    proc.wait()
  last = lambda d: ckpt.list_checkpoints(str(d / "checkpoints"))[-1]
  assert last(killed)[0] < 400, "the run finished before it could be killed"
  resumed = subprocess.run([sys.executable, "-m", "unrolled_es.cli", "train", "--out", str(killed), "--resume",
                            "--no-progress", "--no-report"], capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr
  assert last(killed)[0] == last(full)[0] == 400
  assert [r.tobytes() for r in ckpt._read(last(killed)[1])[1]] == [r.tobytes() for r in ckpt._read(last(full)[1])[1]]
  assert records(killed) == records(full)


def test_factored_low_rank_noise_on_a_device_mesh_runs_and_resumes(tmp_path, capsys):
  base = ["train", "--task", "rnn_char", "--task-arg", "horizon=8", "--task-arg", "hidden=3", "--estimator",
          "es_single", "--particles", "4", "--truncation", "4", "--sigma", "0.01", "--lr", "1e-2", "--noise",
          "low_rank", "--rank", "1", "--factored", "--devices", "all", "--no-progress", "--no-report",
          "--checkpoint-every", "2", "--eval-every", "2"]
  full, part = tmp_path / "full", tmp_path / "part"
  assert cli.main(base + ["--steps", "4", "--out", str(full)]) == 0
  assert cli.main(base + ["--steps", "2", "--out", str(part)]) == 0
  saved = json.load(open(part / "config.json"))
  assert (saved["noise"], saved["rank"], saved["factored"], saved["devices"]) == ("low_rank", 1, True, "all")
  assert cli.main(["train", "--out", str(part), "--resume", "--steps", "4", "--no-progress", "--no-report"]) == 0
  assert records(part) == records(full)
  capsys.readouterr()
  assert cli.main(["train", "--out", str(part), "--resume", "--no-factored", "--no-progress"]) == 2
  assert "--factored True, not False" in error_line(capsys)


@pytest.mark.parametrize("argv, message", [
    (["--noise", "gaussian", "--rank", "2"], "--rank applies to --noise low_rank, not gaussian"),
    (["--devices", "0"], "--devices: expected 'all' or a positive integer, got '0'"),
    (["--devices", "64"], "--devices 64: only 1 device(s) available"),
    (["--noise", "uniform"], "invalid choice: 'uniform'"),
])
def test_bad_noise_and_device_flags_are_one_line_exit_2(tmp_path, capsys, argv, message):
  base = ["train", "--task", "influence_balancing", "--task-arg", "horizon=20", "--estimator", "pes", "--particles",
          "4", "--truncation", "5", "--steps", "1", "--out", str(tmp_path), "--no-progress"]
  assert cli.main(base + argv) == 2
  assert message in error_line(capsys)


def test_a_task_with_systems_of_other_shapes_trains_them_in_one_step(monkeypatch, tmp_path):
  import unrolled_es as ue
  wide = toy_task(horizon=20)._replace(system=toy_task(horizon=12).system)
  task = toy_task(horizon=20)._replace(extra_systems=((wide.system, 3.0),))
  monkeypatch.setattr(assemble, "task_names", lambda: ("toy",))
  monkeypatch.setattr(assemble, "build_task", lambda name, **kw: task)
  monkeypatch.setattr(assemble, "estimator_constructors", lambda: {"es_single": ue.es_single})
  argv = ["train", "--task", "toy", "--estimator", "es_single", "--steps", "2", "--out", str(tmp_path),
          "--no-progress", "--no-report"]
  assert cli.main(argv) == 0
  last = records(tmp_path)[-1]
  assert {"task0/loss", "task1/loss"} <= set(last)
  assert last["loss"] == pytest.approx(0.25 * last["task0/loss"] + 0.75 * last["task1/loss"], rel=1e-5)


def test_load_theta_rebuilds_the_runs_task_from_its_config(fakes, tmp_path, monkeypatch):
  import unrolled_es as ue
  from unrolled_es.cli import task_registry
  assert train(tmp_path) == 0
  monkeypatch.setattr(task_registry, "build_task", lambda name, **kw: toy_task(**kw))
  theta = ue.load_theta(str(tmp_path))
  steps = [s for s, _ in ckpt.list_checkpoints(os.path.join(tmp_path, "checkpoints"))]
  newest = ckpt.load(ckpt.checkpoint_path(os.path.join(tmp_path, "checkpoints"), steps[-1]),
                     jnp.zeros(2), part="theta")[0]
  assert steps[-1] == 8 and theta.shape == (2,) and np.array_equal(theta, newest)
  assert not np.array_equal(theta, np.zeros(2))   # trained: not the task's starting θ
