"""Tiny in-process runs of benchmarks.influence and benchmarks.meta_training, checked through their JSON."""
import json

import numpy as np

from benchmarks import influence, meta_training
from unrolled_es_tasks.influence_balancing import influence_balancing_optimum


def test_influence_pes_and_es_single_find_the_optimum_truncation_does_not(tmp_path):
  # T = 100, SGD lr 2e-3 (benchmarks.influence.LR): truncated BPTT K=1 and K=10, and truncated ES, drift towards
  # their own fixed points (0.95, 1.17 and 1.17) away from θ* = -0.047; PES and ES-Single settle at θ*.
  influence.main(["--horizons", "100", "--methods", "tbptt_k1,tbptt_k10,truncated_es,pes,es_single",
                  "--steps", "300", "--seeds", "2", "--particles", "32", "--out", str(tmp_path), "--no-progress"])
  result = json.loads((tmp_path / "influence.json").read_text())
  assert (tmp_path / "influence.png").stat().st_size > 0
  (s,) = result["studies"]
  star = s["theta_star"]
  assert star == influence_balancing_optimum(100) and s["theta0"] == 0.5 and s["lr"] == influence.LR[100]
  d0 = s["start_distance"]
  assert np.isclose(d0, 0.5 - star)
  methods = s["methods"]
  assert set(methods) == {"tbptt_k1", "tbptt_k10", "truncated_es", "pes", "es_single"}
  for name, m in methods.items():
    assert m["trajectory_steps"] == list(range(301)), name
    assert len(m["trajectories"]) == 2 and all(len(row) == 301 for row in m["trajectories"]), name
    assert m["trajectories"][0][0] == 0.5 and len(m["final_theta"]) == 2, name
    assert np.allclose(m["final_error"], np.abs(np.array(m["final_theta"]) - star)), name
    assert m["skipped_updates"] == 0 and m["nonfinite_pairs"] == 0, name
  for name in ("pes", "es_single"):  # near: within 10% of the starting distance (tail mean), 25% (last step)
    m = methods[name]
    assert abs(m["tail_mean_theta"] - star) < 0.1 * d0, (name, m["tail_mean_theta"])
    assert m["final_error_max"] < 0.25 * d0, (name, m["final_error"])
    assert m["expected_fixed_point"] == star and not m["diverged"]
  for name in ("tbptt_k1", "tbptt_k10", "truncated_es"):  # far: more than half the starting distance, every seed
    m = methods[name]
    assert min(m["final_error"]) > 0.5 * d0, (name, m["final_error"])
    assert m["expected_fixed_point"] > 0.9 and m["expected_slope"] > 0, name  # they converge, to the wrong θ
  # truncated BPTT is deterministic here: both seeds agree
  assert methods["tbptt_k10"]["final_theta"][0] == methods["tbptt_k10"]["final_theta"][1]


def test_meta_training_structure_and_es_single_pes_lower_lr_schedule_meta_loss(tmp_path):
  particles, k, budget = 8, 10, 9600
  meta_training.main(["--task", "lr_schedule", "--estimators", "es_single,pes", "--seeds", "1",
                      "--budget", str(budget), "--num-evals", "3", "--particles", str(particles), "--no-stagger",
                      "--outer-lr", "0.2", "--task-arg", "horizon=20", "--task-arg", "hidden=()",
                      "--task-arg", "batch_size=16", "--out", str(tmp_path), "--no-progress"])
  result = json.loads((tmp_path / "meta_training_lr_schedule.json").read_text())
  assert (tmp_path / "meta_training_lr_schedule.png").stat().st_size > 0
  cfg = result["config"]
  assert result["task"] == "lr_schedule" and cfg["budget"] == budget and cfg["particles"] == particles
  assert cfg["task_kwargs"] == {"horizon": 20, "hidden": [], "batch_size": 16} and cfg["stagger"] is False
  assert set(result["estimators"]) == {"es_single", "pes"}
  for name, e in result["estimators"].items():
    (r,) = e["runs"]
    per_update = particles * 2 * k
    assert r["per_update_inner_steps"] == per_update and r["init_steps"] == 0
    assert r["outer_steps"] == budget // per_update
    n = len(r["step"])
    assert n >= 4 and all(len(r[key]) == n for key in ("total_inner_steps", "sequential_inner_steps", "wall_time",
                                                        "eval"))
    assert r["step"][0] == 0 and r["step"][-1] == r["outer_steps"]
    assert r["total_inner_steps"] == [s * per_update for s in r["step"]]  # fair accounting: every inner step
    assert r["sequential_inner_steps"] == [s * k for s in r["step"]]
    assert np.all(np.diff(r["wall_time"]) >= 0)
    assert {"meta_loss", "test_loss", "lr0", "decay"} <= set(r["eval"][-1])
    # the same fixed eval keys for every estimator: identical meta-loss at θ0
    assert e["initial_meta_loss"] == result["estimators"]["es_single"]["initial_meta_loss"]
    start, final = e["initial_meta_loss"][0], e["final_meta_loss"][0]
    assert final < start - 0.2, (name, start, final)  # lr0 grows from 1e-3; meta-loss falls from ≈ 2.3
    assert r["eval"][-1]["lr0"] > 1e-2, name
