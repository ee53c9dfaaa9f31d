"""benchmarks.correction_scaling times the right arithmetic: its corrected program is the scan of
tanh(h (W + σ a_m b_mᵀ)) with each member's dense perturbed matrix, its bare program the scan with W alone, and its
`--quick` run writes one row per cell with the fields RESULTS reads (timings themselves are benchmark figures)."""
import json

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import correction_scaling as cs


def dense_scan(h, w, a, b, sigma):
  per_member = w[None] + sigma * a @ jnp.swapaxes(b, 1, 2)   # [M, width, width]: W + σ a_m b_mᵀ
  for _ in range(cs.K):
    h = jnp.tanh(jnp.einsum("mrw,mwv->mrv", h, per_member))
  return h


def test_the_corrected_program_is_the_per_member_perturbed_scan_and_the_bare_one_is_not():
  width, members = 8, 3
  corrected, h0 = cs.scan_program(width, members, corrected=True)
  bare, _ = cs.scan_program(width, members, corrected=False)
  keys = jax.random.split(jax.random.PRNGKey(0), 4)   # the draws scan_program makes, in its order
  w = jax.random.normal(keys[0], (width, width)) / width ** 0.5
  a, b = (jax.random.normal(k, (members, width, 1)) for k in keys[1:3])
  np.testing.assert_allclose(corrected(h0), dense_scan(h0, w, a, b, cs.SIGMA), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bare(h0), dense_scan(h0, w, a, b, 0.0), rtol=1e-5, atol=1e-6)
  assert not np.allclose(corrected(h0), bare(h0), atol=1e-6)   # the correction is not a no-op


def test_quick_run_writes_a_row_per_cell(tmp_path):
  cs.main(["--quick", "--out", str(tmp_path)])
  rows = json.loads((tmp_path / "correction_scaling_quick.json").read_text())["rows"]
  assert [(r["width"], r["members"]) for r in rows] == list(cs.CELLS["quick"])
  for r in rows:
    assert np.isfinite(r["x_bare"]) and r["x_bare"] > 0 and r["arithmetic_share"] == 2 / r["width"]
