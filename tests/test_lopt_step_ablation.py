"""The step-size ablation picks c by the rule that tunes Adam and compares by the suite's paired intervals: checked
on scripted runs against a direct numpy computation, and once end to end on a tiny problem."""
import json
import math

import numpy as np
import pytest
from scipy import stats

from benchmarks import lopt_step_ablation as ab
from unrolled_es_tasks import lopt_family

SEEDS, STEPS = 5, 20


def _runs(rng, shape, valid_level, test_shift):
  return {"train": rng.normal(1.0, 0.1, shape + (STEPS,)), "valid": np.full(shape + (STEPS,), valid_level),
          "test_loss": rng.normal(0.5, 0.05, shape) + test_shift, "meta": np.zeros(shape + (STEPS,))}


def test_c_is_tuned_on_validation_with_non_finite_scales_out_and_compared_by_paired_intervals(monkeypatch):
  rng = np.random.default_rng(0)
  adam = _runs(rng, (SEEDS,), 0.3, 0.0)
  levels = np.linspace(1.0, 0.2, len(ab.SCALES))[:, None, None] * np.ones((1, SEEDS, STEPS))
  scaled = _runs(rng, (len(ab.SCALES), SEEDS), 0.0, 0.1)
  scaled["valid"] = levels
  best = len(ab.SCALES) - 2
  scaled["train"][-1, 0, 3] = np.nan             # the lowest validation loss, but a diverged run: out
  monkeypatch.setattr(ab.lopt_suite, "tune", lambda *a: ({"lr": 1e-3}, adam, []))
  monkeypatch.setattr(ab, "scaled_runner", lambda *a: (lambda scales, keys: scaled))
  row = ab.evaluate_problem(lopt_family.HELD_OUT[7], {"steps": STEPS, "lrs": (), "data_dir": None}, keys=None)
  assert row["tuned_scale"] == ab.SCALES[best] and math.isinf(row["scale_scores"][-1])
  for key, i in (("scale_1", ab.SCALES.index(1.0)), ("scale_tuned", best)):
    d = scaled["test_loss"][i] - adam["test_loss"]
    half = stats.t.ppf(0.975, SEEDS - 1) * d.std(ddof=1) / math.sqrt(SEEDS)
    np.testing.assert_allclose(row[key]["test_diff"], [d.mean(), d.mean() - half, d.mean() + half], rtol=1e-10)
    t = scaled["train"][i].mean(1) - adam["train"].mean(1)
    assert row[key]["train_diff"][0] == pytest.approx(t.mean())
  summary = ab.summary([row])
  assert summary["scale_tuned"]["iqm_normalised_test_loss"] == pytest.approx(
      scaled["test_loss"][best].mean() / adam["test_loss"].mean())


def test_end_to_end_on_a_tiny_problem_writes_rows_and_a_summary(tmp_path):
  ab.main(["--problems", "7", "--seeds", "2", "--steps", "12", "--out", str(tmp_path)])
  result = json.loads((tmp_path / "lopt_step_ablation.json").read_text())
  (row,) = result["rows"]
  assert row["problem"] == lopt_family.HELD_OUT[7].name and row["tuned_scale"] in ab.SCALES
  assert len(row["scale_scores"]) == len(ab.SCALES)
  assert sum(result["summary"]["scale_1"]["counts"].values()) == 1
  assert (tmp_path / "lopt_step_ablation.png").exists()
  assert not (tmp_path / "lopt_step_ablation.progress.json").exists()


def test_too_few_seeds_are_refused_by_name(tmp_path, capsys):
  with pytest.raises(SystemExit):
    ab.main(["--seeds", "0", "--out", str(tmp_path)])
  assert "--seeds must be at least 2" in capsys.readouterr().err
