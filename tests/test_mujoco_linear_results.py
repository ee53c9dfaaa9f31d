"""benchmarks.mujoco_linear keeps the entries other processes write to its JSON while it runs (environments are
run as separate processes, `--envs` each), and reports steps to a threshold from the logged evaluations."""
import json

from benchmarks import mujoco_linear


def test_an_environment_written_by_another_process_meanwhile_is_kept(tmp_path, monkeypatch):
  stem = tmp_path / "mujoco_linear.json"

  def run_env(env_id, methods, mode, seeds, budget=None):
    # Another process finishes Walker2d while this one trains Hopper.
    stem.write_text(json.dumps({"envs": {"Walker2d-v5": {"methods": {}, "marker": "other process"}}}))
    return {"methods": {}, "marker": "this process"}

  monkeypatch.setattr(mujoco_linear, "run_env", run_env)
  monkeypatch.setattr(mujoco_linear.control_benchmark, "plot", lambda result, path: None)
  mujoco_linear.main(["--envs", "Hopper-v5", "--methods", "es_single", "--out", str(tmp_path)])
  envs = json.loads(stem.read_text())["envs"]
  assert envs["Walker2d-v5"]["marker"] == "other process" and envs["Hopper-v5"]["marker"] == "this process"


def test_steps_to_threshold_is_the_first_logged_count_at_or_above_it():
  run = {"env_steps": [0, 100, 200, 300], "eval": [{"return": 5.0}, {"return": None}, {"return": 10.0},
                                                   {"return": 12.0}]}
  assert mujoco_linear.steps_to_threshold(run, 10.0) == 200
  assert mujoco_linear.steps_to_threshold(run, 12.5) is None


def _entry(settings, seeds, budget=100, seconds=1.0):
  runs = [{"seed": s, "env_steps": [0, 50], "wall_time": [0.0, 2.0], "eval": [{"return": 0.0}, {"return": 10.0 * s}]}
          for s in seeds]
  method = mujoco_linear.summarise("Hopper-v5", "es_single", settings, runs)
  return {"config": {"seeds": len(seeds)}, "budget_env_steps": budget, "seconds": seconds,
          "methods": {"es_single": method}}


def test_seeds_run_by_separate_processes_add_up_to_one_entry():
  earlier, later = _entry({"sigma": 0.1}, [0, 2], seconds=3.0), _entry({"sigma": 0.1}, [1])
  merged = mujoco_linear.merge_seeds("Hopper-v5", earlier, later)
  m = merged["methods"]["es_single"]
  assert [r["seed"] for r in m["runs"]] == [0, 1, 2]
  assert m["final_return"] == [0.0, 10.0, 20.0] and m["final_return_mean"] == 10.0
  assert merged["config"]["seeds"] == 3 and merged["seconds"] == 4.0


def test_a_rerun_seed_replaces_its_old_run_and_other_settings_or_budgets_replace_the_entry():
  earlier = _entry({"sigma": 0.1}, [0, 1])
  rerun = _entry({"sigma": 0.1}, [1])
  rerun["methods"]["es_single"]["runs"][0]["eval"][-1]["return"] = 99.0
  rerun["methods"]["es_single"] = mujoco_linear.summarise("Hopper-v5", "es_single", {"sigma": 0.1},
                                                           rerun["methods"]["es_single"]["runs"])
  merged = mujoco_linear.merge_seeds("Hopper-v5", earlier, rerun)["methods"]["es_single"]
  assert merged["final_return"] == [0.0, 99.0]
  other_settings = _entry({"sigma": 0.2}, [1])
  assert mujoco_linear.merge_seeds("Hopper-v5", earlier, other_settings) is other_settings
  # settings read back from the file compare equal to the same settings in memory (tuples become lists)
  from_file = json.loads(json.dumps(_entry({"sigma": 0.1, "sizes": (8, 8)}, [0])))
  assert len(mujoco_linear.merge_seeds("Hopper-v5", from_file, _entry({"sigma": 0.1, "sizes": (8, 8)}, [1]))
             ["methods"]["es_single"]["runs"]) == 2
  other_budget = _entry({"sigma": 0.1}, [1], budget=200)
  assert mujoco_linear.merge_seeds("Hopper-v5", earlier, other_budget) is other_budget


def test_bad_seed_arguments_are_refused_by_name(capsys):
  import pytest
  for argv in (["--seeds", "0"], ["--first-seed", "-1"]):
    with pytest.raises(SystemExit):
      mujoco_linear.parse_args(argv)
    assert "--seeds" in capsys.readouterr().err
