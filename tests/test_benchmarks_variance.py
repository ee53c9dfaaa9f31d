"""The variance benchmark and the evosax side-by-side run end to end (their --tiny modes), and their JSON shows
what they are for: ES-Single's variance is flat in T/K while PES's grows; evosax and we agree in distribution."""
import json

import numpy as np
import pytest

from benchmarks import variance, variance_reduction


def _ratio_and_se(a, b, what):
  """b/a and its standard error from the two figures' standard errors (delta method)."""
  ratio = b[what] / a[what]
  return ratio, ratio * np.hypot(a[what + "_se"] / a[what], b[what + "_se"] / b[what])


def test_variance_es_single_flat_pes_grows(tmp_path):
  variance.main(["--tiny", "--out", str(tmp_path), "--no-progress"])
  results = json.loads((tmp_path / "variance_tiny.json").read_text())
  scen = results["tasks"]["influence_balancing"]["scenarios"]["None"]
  assert scen["truth_floor"] == 0.0 and scen["grad_norm"] > 0
  pes, single = scen["estimators"]["pes"], scen["estimators"]["es_single"]
  first, last = "1", "10"

  ratio, se = _ratio_and_se(single[first], single[last], "variance")
  assert abs(ratio - 1) < 4 * se, (ratio, se)
  ratio, se = _ratio_and_se(pes[first], pes[last], "variance")
  assert ratio > 1.3 and ratio - 1 > 5 * se, (ratio, se)
  text = variance.report(results)   # the markdown RESULTS.md shows, printed from these figures
  assert f"| pes | {variance._cell(pes[first])} | {variance._cell(pes[last])} |" in text
  assert "es_single, T/K = 1, separate runs with each N: N=8: " in text
  # One window per episode: PES and ES-Single are the same estimator (the same draws, with common seeds).
  np.testing.assert_allclose(pes[first]["variance"], single[first]["variance"], rtol=1e-4)

  for fig in (pes[first], pes[last], single[first], single[last]):
    r = fig["repeats"]
    # mean ‖ĝ−g‖² = (R−1)/R · tr Cov + ‖ḡ−g‖² exactly: the bookkeeping of error, variance and bias.
    np.testing.assert_allclose(fig["error"], fig["variance"] * (r - 1) / r + fig["bias_sq"], rtol=1e-6)
    assert fig["bias_sq"] < 12 * fig["variance"] / r        # unbiased: E bias_sq = variance/R (here d = 1)
    by_n = fig["by_particles"]
    ratio, se = _ratio_and_se(by_n["8"], by_n["16"], "variance")
    assert abs(ratio - 0.5) < 4 * se                        # twice the particles, half the variance


def test_evosax_compare_agrees_and_has_power(tmp_path):
  pytest.importorskip("evosax")
  from benchmarks import evosax_compare
  evosax_compare.main(["--tiny", "--out", str(tmp_path)])
  results = json.loads((tmp_path / "evosax_compare_tiny.json").read_text())
  assert (tmp_path / "evosax_compare_tiny.png").stat().st_size > 0
  agree = results["agreement"]
  for pair in ("pes_vs_persistent_es", "es_single_vs_noise_reuse_es"):
    rec = agree[pair]
    assert rec["comparisons"] == results["settings"]["windows"] * results["settings"]["dim"]
    assert rec["max_abs_z"] < rec["z_threshold"], (pair, rec)   # Bonferroni over all comparisons, α = 0.01
    assert rec["hotelling_p"] > 1e-3, (pair, rec)
  # The same test sees the bias of truncated ES, so agreement above is not for want of power.
  control = agree["truncated_es_vs_persistent_es"]
  assert control["max_abs_z"] > 10 and control["hotelling_p"] < 1e-6
  for rec in results["timing"].values():
    assert all(t > 0 for t in rec["median_seconds"].values())
    assert all(np.isfinite(r) and r > 0 for r in rec["ratio_ours_over_evosax"].values())


def test_variance_reduction_against_truncation_length(tmp_path):
  # ES-Single's episode estimate averages its windows' estimates under one draw, so with common seeds it is the
  # same estimate whatever K and its error is flat in T/K; truncated BPTT is exact at K = T, biased below it.
  preset = dict(particles=4, repeats=8, reps=1, methods=("es_single", "tbptt"))
  runs = {str(k): variance_reduction.run_task("influence_balancing", preset, lambda line: None, k)
          for k in (100, 10)}
  errors = [runs[k]["methods"]["es_single"]["error"] for k in ("100", "10")]
  np.testing.assert_allclose(errors[0], errors[1], rtol=1e-5)
  assert runs["100"]["methods"]["tbptt"]["error"] < 1e-10
  assert runs["10"]["methods"]["tbptt"]["bias_sq"] > 0.5          # measured 1.10 at N = 16
  variance_reduction.plot_sweep({"sweep": {"influence_balancing": runs}}, str(tmp_path / "sweep.png"))
  assert (tmp_path / "sweep.png").stat().st_size > 0
