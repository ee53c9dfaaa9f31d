"""The throughput benchmark runs end to end at a tiny size and writes sane JSON and a PNG (never timed)."""
import json

import jax
import numpy as np

from benchmarks import throughput


def test_tiny_throughput_writes_sane_results(tmp_path):
  throughput.main(["--preset", "tiny", "--out", str(tmp_path)])
  result = json.loads((tmp_path / "throughput_tiny.json").read_text())
  assert (tmp_path / "throughput_tiny.png").stat().st_size > 0
  assert {"preset", "backend", "machine", "settings", "rows", "big"} <= set(result)
  rows = {(r["estimator"], r["noise"]): r for r in result["rows"]}
  assert set(rows) == {("bare", "none"), ("es_single", "low_rank1_factored")}
  for r in rows.values():
    assert "error" not in r, r
    assert r["seconds"] > 0 and np.isfinite(r["particle_steps_per_s"]) and r["particle_steps_per_s"] > 0
    assert np.isclose(r["member_steps_per_s"], 2 * r["particle_steps_per_s"])
  es = rows[("es_single", "low_rank1_factored")]
  assert es["ratio_to_bare"] > 0
  # State per particle: inner state h (rows × width) and t for 2 members, t, episode length, noise key, counter,
  # and the kept rank-1 draw (W: width + width, U: inputs + width, v: width floats): exact bytes.
  width, n_rows, inputs = 8, 1, 4
  draw = (2 * width + inputs + width + width) * 4
  assert es["state_bytes_per_particle"] == 2 * (n_rows * width * 4 + 4) + 4 + 4 + 8 + 4 + draw
  # Two rank-1 draws: factors of W (8+8) and U (4+8), and v (8); plus each member's formed v + σε (8).
  assert es["noise_bytes_per_particle"] == 2 * 4 * (16 + 12 + 8) + 2 * 4 * 8
  # The big runs' code path (100,000 particles in the gpu and big presets) at toy sizes: every particle valid.
  assert [b["model"] for b in result["big"]] == ["rnn", "rnn_char"]
  for b in result["big"]:
    assert b["gradient_finite"] and b["num_valid"] == b["particles"] and b["seconds"] > 0
    assert b["state_bytes_per_particle"] > 0 and b.get("host_peak_rss_bytes", b.get("device_peak_bytes", 0)) > 0


def test_the_draws_preset_times_a_dense_and_a_sparse_draw():
  rows = throughput.draw_costs(dict(widths=(8,), particles=(4,), rows=1, inputs=4, k=2, reps=1, dtype="float32"),
                               lambda msg: None)
  assert [(r["width"], r["particles"]) for r in rows] == [(8, 4)]
  assert rows[0]["dense_ms"] > 0 and rows[0]["sparse90_ms"] > 0
  np.testing.assert_allclose(rows[0]["sparse_over_dense"], rows[0]["sparse90_ms"] / rows[0]["dense_ms"])


def test_profile_in_loop_evaluates_the_stage_every_iteration_on_unchanged_inputs():
  import jax.numpy as jnp
  from benchmarks import profile_window
  calls = profile_window.in_loop(lambda x, y, k: (x * 2.0, {"y": y + 1, "k": k}), loops=7)
  # Each iteration adds sum(2x) + sum(y + 1) + sum(k) = 12 + 6 + 3 = 21: the ties that stop XLA hoisting the stage
  # change no input (float, int and uint), and no output is dropped.
  keys = jnp.array([1, 2], jnp.uint32)
  assert float(jax.jit(calls)(jnp.arange(4.0), jnp.ones(3, jnp.int32), keys)) == 7 * 21.0
  tied = profile_window._tied((jnp.arange(4.0), keys), jnp.float32(0))
  np.testing.assert_array_equal(tied[0], jnp.arange(4.0))
  assert tied[1].dtype == jnp.uint32 and list(tied[1]) == [1, 2]
