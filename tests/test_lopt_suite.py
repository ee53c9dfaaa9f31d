"""The held-out suite's statistics against direct numpy computations, and a --quick run through its JSON."""
import json
import math

import jax
import numpy as np
import pytest
from scipy import stats

from benchmarks import lopt_suite, lopt_suite_stats as st


def test_paired_ci_is_the_t_interval_of_the_differences():
  rng = np.random.default_rng(0)
  a, b = rng.normal(1.0, 0.2, 8), rng.normal(1.1, 0.2, 8)
  mean, low, high = st.paired_ci(a, b)
  d = a - b
  half = stats.t.ppf(0.975, 7) * np.std(d, ddof=1) / math.sqrt(8)
  np.testing.assert_allclose([mean, low, high], [d.mean(), d.mean() - half, d.mean() + half], rtol=1e-12)
  res = stats.ttest_rel(a, b).confidence_interval(0.95)     # scipy's paired t-test agrees
  np.testing.assert_allclose([low, high], [res.low, res.high], rtol=1e-10)
  assert math.isnan(st.paired_ci([1.0], [2.0])[1]) and math.isnan(st.paired_ci([1.0, np.nan], [0.0, 0.0])[1])


def test_verdicts_follow_the_interval():
  assert st.verdict((-0.2, -0.3, -0.1)) == "better" and st.verdict((0.2, 0.1, 0.3)) == "worse"
  assert st.verdict((-0.2, -0.5, 0.1)) == "not different" and st.verdict((0.0, math.nan, math.nan)) == "not different"
  assert st.counts(["better", "worse", "better"]) == {"better": 2, "not different": 0, "worse": 1}


def test_speedup_counts_the_steps_the_baseline_needs():
  learned = np.linspace(1.0, 0.5, 100)
  baseline = np.linspace(1.0, 0.0, 400)                        # reaches 0.5 (unsmoothed) at step 200 of 400
  assert st.speedup(learned, baseline, window=1) == pytest.approx(2.0, abs=0.02)
  assert st.speedup(learned, np.full(400, 0.9), window=1) == 4.0      # never reached: the cap
  assert st.speedup(learned, np.linspace(1.0, 0.0, 50), window=1) == pytest.approx(0.26, abs=0.01)
  noisy = learned + np.where(np.arange(100) % 2 == 0, 0.05, -0.05)
  np.testing.assert_allclose(st.smooth(noisy, 2)[1:], np.convolve(noisy, [0.5, 0.5], "valid"))


def test_iqm_matches_the_trimmed_mean():
  x = np.random.default_rng(1).normal(size=12)
  assert st.iqm(x) == pytest.approx(stats.trim_mean(x, 0.25))
  assert st.iqm([1.0, 2.0, 3.0, 100.0]) == pytest.approx(2.5)
  x5 = np.array([5.0, 1.0, 3.0, 2.0, 4.0])                     # n = 5: quartiles cut 1.25 values at each end
  assert st.iqm(x5) == pytest.approx((0.75 * 2 + 3 + 0.75 * 4) / 2.5)


def test_quick_suite_writes_rows_summary_and_plot(tmp_path):
  lopt_suite.main(["--quick", "--problems", "7", "--seeds", "3", "--no-checks", "--out", str(tmp_path)])
  result = json.loads((tmp_path / "lopt_suite_quick.json").read_text())
  assert (tmp_path / "lopt_suite_quick.png").stat().st_size > 1000
  (row,) = result["rows"]
  assert row["problem"] == "mlp breast-cancer 32" and row["diverged_learned"] == 0
  assert len(row["grid_scores"]) == len(lopt_suite.QUICK_LRS) * (2 + len(lopt_suite.WEIGHT_DECAYS))  # AdamW too
  assert min(row["grid_scores"]) == pytest.approx(min(s for s in row["grid_scores"] if math.isfinite(s)))
  for key in ("test_diff", "train_diff"):
    mean, low, high = row[key]
    assert low <= mean <= high
  assert 0 < row["speedup"] <= lopt_suite.SPEEDUP_CAP
  summary = result["summary"]
  assert summary["iqm_normalised_test_loss"] == pytest.approx(row["learned_test"] / row["adam_test"])
  assert sum(summary["counts"].values()) == 1 and summary["median_speedup"] == row["speedup"]
  from unrolled_es_tasks.lopt_pretrained import load
  assert result["theta"]["sha256"] == load()[2]["sha256"]   # the scored θ is named: here the shipped one


def _copy_shipped(folder, scale):
  """The shipped θ's files in `folder`, every array times `scale`, with the checksum the loader checks."""
  import os
  import shutil
  from unrolled_es_tasks import lopt_pretrained as shipped
  folder.mkdir()
  npz = folder / (shipped.NAME + ".npz")
  with np.load(os.path.join(shipped.DATA_DIR, shipped.NAME + ".npz")) as f:
    np.savez(npz, **{k: f[k] * scale for k in f.files})
  shutil.copy(os.path.join(shipped.DATA_DIR, shipped.NAME + "_log.jsonl"), folder)
  meta = json.loads(open(os.path.join(shipped.DATA_DIR, shipped.NAME + ".json")).read())
  meta["sha256"] = shipped._sha256(str(npz))
  (folder / (shipped.NAME + ".json")).write_text(json.dumps(meta))


def test_a_candidate_theta_is_scored_from_its_folder(tmp_path):
  from unrolled_es_tasks import lopt_family
  problem, keys = lopt_family.HELD_OUT[7], jax.random.split(jax.random.PRNGKey(0), 2)
  shipped = lopt_suite.learned_runner(problem, 12, 12)(keys)["train"]
  _copy_shipped(tmp_path / "same", 1.0)
  _copy_shipped(tmp_path / "scaled", 0.5)
  same = lopt_suite.learned_runner(problem, 12, 12, str(tmp_path / "same"))(keys)["train"]
  scaled = lopt_suite.learned_runner(problem, 12, 12, str(tmp_path / "scaled"))(keys)["train"]
  np.testing.assert_array_equal(np.asarray(same), np.asarray(shipped))
  assert not np.allclose(np.asarray(scaled), np.asarray(shipped))


def test_a_missing_candidate_folder_is_refused_by_name(tmp_path):
  with pytest.raises(ValueError, match="data_dir"):
    lopt_suite.main(["--quick", "--problems", "7", "--no-checks", "--data-dir", str(tmp_path / "none"),
                     "--out", str(tmp_path)])
  assert not (tmp_path / "lopt_suite_quick.json").exists()


def _fake_evaluate(calls, fail_on=None):
  """A stand-in for evaluate_problem: a row that depends only on the problem, and a record of what ran."""
  def evaluate(problem, s, keys):
    if problem.name == fail_on:
      raise KeyboardInterrupt("killed mid-run")
    calls.append(problem.name)
    x = (len(problem.name) % 7) / 100
    return {"problem": problem.name, "tuned": {"schedule": "cosine", "lr": 0.01, "weight_decay": 0.0},
            "test_diff": [x, x - 0.01, x + 0.01], "train_diff": [-x, -x - 0.01, -x + 0.01],
            "verdict_test": "worse", "verdict_train": "better", "verdict": "worse", "speedup": 1 + x,
            "learned_test": 1 + x, "adam_test": 1.0, "diverged_learned": 0}
  return evaluate


def test_a_killed_suite_resumes_from_its_finished_problems(tmp_path, monkeypatch, capsys):
  from unrolled_es_tasks import lopt_family
  args = ["--quick", "--problems", "7,8,10", "--seeds", "3", "--no-checks"]
  whole, calls = [], []
  monkeypatch.setattr(lopt_suite, "evaluate_problem", _fake_evaluate(whole))
  lopt_suite.main(args + ["--out", str(tmp_path / "whole")])
  second = lopt_family.HELD_OUT[8].name
  monkeypatch.setattr(lopt_suite, "evaluate_problem", _fake_evaluate(calls, fail_on=second))
  with pytest.raises(KeyboardInterrupt):
    lopt_suite.main(args + ["--out", str(tmp_path / "run")])
  progress = tmp_path / "run" / "lopt_suite_quick.progress.json"
  assert list(json.loads(progress.read_text())["stages"]) == [f"problem {lopt_family.HELD_OUT[7].name}"]
  monkeypatch.setattr(lopt_suite, "evaluate_problem", _fake_evaluate(calls))
  lopt_suite.main(args + ["--out", str(tmp_path / "run")])
  assert calls == [lopt_family.HELD_OUT[i].name for i in (7, 8, 10)]   # the first problem ran once, not twice
  resumed = json.loads((tmp_path / "run" / "lopt_suite_quick.json").read_text())
  uninterrupted = json.loads((tmp_path / "whole" / "lopt_suite_quick.json").read_text())
  assert resumed["rows"] == uninterrupted["rows"] and resumed["summary"] == uninterrupted["summary"]
  assert not progress.exists() and "(resumed)" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["corrupt", "other settings"])
def test_a_damaged_or_foreign_progress_file_is_set_aside_not_mixed_in(tmp_path, monkeypatch, capsys, damage):
  calls = []
  monkeypatch.setattr(lopt_suite, "evaluate_problem", _fake_evaluate(calls))
  progress = tmp_path / "lopt_suite_quick.progress.json"
  if damage == "corrupt":
    progress.write_text('{"identity": {"settin')
  else:   # a finished stage of a run with 4 seeds must not stand in for a 3-seed run
    fake = lopt_suite.open_progress(str(progress), lopt_suite.run_identity(
        dict(lopt_suite.QUICK, seeds=4), {"sha256": "x"}))
    lopt_suite.stage(fake, "problem mlp breast-cancer 32", lambda: {"stale": True}, str)
  lopt_suite.main(["--quick", "--problems", "7", "--seeds", "3", "--no-checks", "--out", str(tmp_path)])
  assert calls == ["mlp breast-cancer 32"]
  assert (tmp_path / "lopt_suite_quick.progress.json.old").exists()
  assert "starting afresh" in capsys.readouterr().out
  assert "stale" not in json.loads((tmp_path / "lopt_suite_quick.json").read_text())["rows"][0]


def test_report_prints_a_finished_run_and_the_finished_stages_of_a_killed_one(tmp_path, monkeypatch, capsys):
  from unrolled_es_tasks import lopt_family
  args = ["--quick", "--problems", "7,8", "--seeds", "3", "--no-checks"]
  monkeypatch.setattr(lopt_suite, "evaluate_problem", _fake_evaluate([]))
  lopt_suite.main(args + ["--out", str(tmp_path / "whole")])
  monkeypatch.setattr(lopt_suite, "evaluate_problem", _fake_evaluate([], fail_on=lopt_family.HELD_OUT[8].name))
  with pytest.raises(KeyboardInterrupt):
    lopt_suite.main(args + ["--out", str(tmp_path / "killed")])
  capsys.readouterr()
  lopt_suite.main(["--report", str(tmp_path / "whole" / "lopt_suite_quick.json")])
  whole = capsys.readouterr().out.splitlines()
  lopt_suite.main(["--report", str(tmp_path / "killed" / "lopt_suite_quick.progress.json")])
  killed = capsys.readouterr().out.splitlines()
  rows = [line for line in whole if line.startswith("| mlp")]
  assert len(rows) == 2 and [line for line in killed if line.startswith("| mlp")] == rows[:1]
  x = (len(lopt_family.HELD_OUT[7].name) % 7) / 100             # the fake row's numbers, as printed
  assert f"| {1 + x:.4f} / 1.0000 | {x:+.4f} [{x - 0.01:+.4f}, {x + 0.01:+.4f}] |" in rows[0]
  assert "Summary: better / not different / worse 0 / 0 / 2" in "\n".join(whole)
  assert "Over the finished problems only: better / not different / worse 0 / 0 / 1" in "\n".join(killed)


def test_a_run_that_ends_above_its_start_blew_up_even_when_finite():
  steps = 400
  down = np.linspace(2.3, 0.01, steps)
  dip_then_climb = np.concatenate([np.linspace(2.3, 0.02, 100), np.linspace(0.02, 8.7, 300)])  # the slow drift
  late_nan = down.copy()
  late_nan[-1] = np.nan
  noisy_but_down = down + 0.2 * np.sin(np.arange(steps))
  runs = np.stack([down, dip_then_climb, late_nan, noisy_but_down])
  np.testing.assert_array_equal(lopt_suite.blew_up(runs), [False, True, True, False])
  summary = lopt_suite.long_run_summary({"train": runs, "test_loss": np.ones(4)}, steps)
  assert summary["diverged"] == 1 and summary["blew_up"] == 2


def test_horizon_check_scores_learned_and_untrained_with_and_without_a_length():
  from unrolled_es_tasks import lopt_family
  s = dict(lopt_suite.QUICK, long_steps=30, data_dir=lopt_suite.DATA_DIR)
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  tuned = {"lr": 0.01, "schedule": "cosine", "weight_decay": 0.0}
  h = lopt_suite.horizon_check(lopt_family.HELD_OUT[7], s, keys, tuned)
  assert set(h["results"]) == {"learned, length known", "learned, length unknown", "untrained θ0, length known",
                               "untrained θ0, length unknown", "adam (tuned at the suite's length)"}
  for v in h["results"].values():
    assert v["diverged"] == 0 and 0 <= v["blew_up"] <= 2 and math.isfinite(v["final_train"])
  r = h["results"]   # θ0 is not the shipped θ, so its runs differ
  assert r["untrained θ0, length known"]["final_train"] != r["learned, length known"]["final_train"]
  table = lopt_suite._horizon_table(h)
  assert len(table) == 4 + 5 and "untrained θ0, length unknown" in table[-2]


def test_untrained_scores_theta0_under_its_own_name(tmp_path):
  from unrolled_es_tasks import lopt_family, lopt_network
  from unrolled_es_tasks.lopt_optax import as_optax
  from unrolled_es_tasks.lopt_pretrained import load
  lopt_suite.main(["--quick", "--problems", "7", "--seeds", "2", "--steps", "12", "--no-checks", "--untrained",
                   "--out", str(tmp_path)])
  result = json.loads((tmp_path / "lopt_suite_untrained_quick.json").read_text())
  assert not (tmp_path / "lopt_suite_quick.json").exists() and result["theta"]["seed"] == 0
  _, spec, _ = load()
  keys = jax.random.split(jax.random.PRNGKey(lopt_suite.EVAL_SEED), 2)
  theta0 = as_optax(lopt_network.init_theta(spec, 0), 12, spec)
  direct = jax.vmap(lambda k: lopt_family.run(lopt_family.HELD_OUT[7], theta0, k, 12))(keys)
  assert result["rows"][0]["learned_test"] == pytest.approx(float(np.mean(direct["test_loss"])), rel=1e-5)
