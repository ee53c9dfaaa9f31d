"""The pretraining driver resumes exactly after a stop, and its export round-trips into `pretrained`."""
import json

import jax
import numpy as np
import pytest

from benchmarks import lopt_pretrain
from unrolled_es_tasks import lopt_pretrained


def _theta(run, tmp_path, name):
  out = tmp_path / name
  lopt_pretrained.export(str(run), str(out), force=True)
  theta, spec, meta = lopt_pretrained.load(str(out))
  return theta, spec, meta


def test_stopped_and_resumed_run_retraces_the_uninterrupted_one(tmp_path):
  args = ["--quick", "--problems", "0", "--no-progress", "--steps", "2"]
  whole, split = tmp_path / "whole", tmp_path / "split"
  lopt_pretrain.main(args + ["--out", str(whole)])
  lopt_pretrain.main(args + ["--out", str(split), "--max-core-hours", "0"])   # a sitting stopped after step 1
  assert json.loads((split / "cpu_seconds.json").read_text())["step"] == 1
  lopt_pretrain.main(args + ["--out", str(split)])                          # the same command resumes it
  a, spec, meta = _theta(whole, tmp_path, "a")
  b, _, meta_b = _theta(split, tmp_path, "b")
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert meta["outer_step"] == meta_b["outer_step"] == 2 and spec == lopt_pretrain.SPEC   # the run's recorded spec
  theta0 = lopt_pretrain.lopt_network.init_theta(spec)
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(theta0)))
  assert json.loads((whole / "cpu_seconds.json").read_text())["cpu_seconds"] > 0
  assert (tmp_path / "a" / "lopt_pretrained_log.jsonl").stat().st_size > 0   # the evaluation records


def test_cpu_budget_stops_a_run(tmp_path):
  budget = lopt_pretrain.CpuBudget(str(tmp_path), 0.0, checkpoint_every=1)
  assert budget(1, None, {}) is True
  assert json.loads((tmp_path / "cpu_seconds.json").read_text())["step"] == 1
  assert lopt_pretrain.CpuBudget(str(tmp_path), 1.0, 1).before > 0       # a later sitting counts the earlier ones


def test_export_refuses_a_run_whose_evaluation_got_worse():
  log = [{"step": 0, "eval_valid_mean": 0.30}, {"step": 500, "eval_valid_mean": 0.35}]
  assert lopt_pretrained._regressed(log) and not lopt_pretrained._regressed(log[:1])
  assert not lopt_pretrained._regressed([log[1], log[0]])


def test_training_only_the_output_layer_leaves_the_hidden_layer_exactly_at_theta0(tmp_path):
  run = tmp_path / "output"
  lopt_pretrain.main(["--quick", "--problems", "0", "--no-progress", "--steps", "2", "--train", "output",
                      "--sigma", "0.1", "--lengths", "20,30", "--out", str(run)])
  theta, spec, _ = _theta(run, tmp_path, "exported")
  theta0 = lopt_pretrain.lopt_network.init_theta(spec)
  hidden, output = "mlp/~/linear_0", f"mlp/~/linear_{len(spec.hidden)}"
  for k in ("w", "b"):
    np.testing.assert_array_equal(theta[hidden][k], theta0[hidden][k])
  assert not np.array_equal(theta[output]["w"], theta0[output]["w"])
  settings = json.loads((run / "command.json").read_text())["settings"]
  assert settings["train"] == "output" and (settings["low"], settings["high"], settings["sigma"]) == (20, 30, 0.1)


def test_bad_pretraining_settings_are_refused_by_name(tmp_path, capsys):
  with pytest.raises(ValueError, match="--sigma must be a finite number > 0"):
    lopt_pretrain.main(["--quick", "--out", str(tmp_path), "--sigma", "0"])
  for lengths in ("300", "300,300", "0,10", "a,b"):
    with pytest.raises(ValueError, match="--lengths must be LOW,HIGH"):
      lopt_pretrain.main(["--quick", "--out", str(tmp_path), "--lengths", lengths])
  with pytest.raises(SystemExit):
    lopt_pretrain.main(["--quick", "--out", str(tmp_path), "--train", "first"])
  err = capsys.readouterr().err
  assert "--train" in err and "'all', 'output'" in err
