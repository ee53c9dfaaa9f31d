"""benchmarks.env_throughput pairs its backends: each is timed once per round, in turn, and native over MJX is the
median of the per-round ratios, so a load change between rounds cancels in the ratio."""
import numpy as np
import pytest

from benchmarks import env_throughput


def test_rates_are_medians_over_rounds_and_the_ratio_is_the_median_of_per_round_ratios(monkeypatch):
  # The load halves every backend's rate each round; MJX is hit harder in round 2, where its ratio is 5: the median
  # of per-round ratios is 4, the ratio of medians would be 4000 / 800 = 5.
  script = {"native": [8000.0, 4000.0, 2000.0], "native_raw": [9000.0, 4500.0, 2250.0],
            "gymnasium": [5000.0, 2500.0, 1250.0], "mjx": [2000.0, 800.0, 500.0]}
  order = []
  made = {}

  def fake_backends(env_id, members, chunk):
    for name in script:
      made[name] = iter(script[name])
    return {name: (name, lambda: None) for name in script}

  def fake_rate(call, seconds):
    order.append(call)
    assert seconds == pytest.approx(1.0)
    return next(made[call])

  monkeypatch.setattr(env_throughput, "_backends", fake_backends)
  monkeypatch.setattr(env_throughput, "_rate", fake_rate)
  row = env_throughput.measure("Swimmer-v5", 64, 20, seconds=3.0, rounds=3)
  assert order == list(script) * 3   # interleaved, not one backend's rounds back to back
  assert row["native"]["env_steps_per_s"] == 4000.0
  assert row["mjx"]["rounds"] == [2000.0, 800.0, 500.0]
  assert row["native_over_mjx_rounds"] == [4.0, 5.0, 4.0]
  assert row["native_over_mjx"] == 4.0
  assert row["native"]["env_steps_per_s"] / row["mjx"]["env_steps_per_s"] == 5.0
  np.testing.assert_allclose(row["gymnasium"]["rounds"], script["gymnasium"])


def test_bad_rounds_are_refused_by_name(tmp_path, capsys):
  with pytest.raises(SystemExit):
    env_throughput.main(["--envs", "Swimmer-v5", "--rounds", "0", "--out", str(tmp_path)])
  assert "--rounds" in capsys.readouterr().err
