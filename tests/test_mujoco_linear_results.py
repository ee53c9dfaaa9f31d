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
