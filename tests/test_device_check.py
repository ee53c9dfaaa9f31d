"""benchmarks.device_check --quick runs end to end on CPU and writes a JSON file of the structure the device run
fills in (never timed: ratios are only checked to be finite and positive)."""
import json
import math

from benchmarks import device_check


def _positive(x):
  return isinstance(x, float) and math.isfinite(x) and x > 0


def test_quick_device_check_writes_every_section(tmp_path):
  device_check.main(["--quick", "--out", str(tmp_path), "--budget", "100000"])
  result = json.loads((tmp_path / "device_check_quick.json").read_text())
  assert result["complete"] and result["preset"] == "quick"
  assert {"backend", "device_kind", "jax"} <= set(result["device"])
  spec = device_check.PRESETS["quick"]
  assert [(r["width"], r["particles"], r["rows"]) for r in result["factored"]] == list(spec["factored"])
  assert [r["width"] for r in result["int8"]] == list(spec["int8_widths"])
  assert [r["particles"] for r in result["million"]] == [b["particles"] for b in spec["million"]]
  for row in result["factored"] + result["million"]:
    assert "error" not in row, row
    for key in ("estimate_ms", "bare_ms", "ratio_to_bare", "estimate_compile_s", "particle_steps_per_s",
                "estimate_peak_bytes_per_particle"):
      assert _positive(row[key]), (key, row)
    assert row["all_valid"] and row["gradient_finite"]
  for row in result["factored"]:
    assert _positive(row["bare_tflops"])
  for row in result["int8"]:
    assert "error" not in row, row
    for key in ("int8_tokens_per_s", "float32_tokens_per_s", "int8_speedup"):
      assert _positive(row[key]), (key, row)


def test_a_failing_cell_is_recorded_and_the_rest_run(tmp_path, monkeypatch):
  calls = []

  def failing(spec, width, n, rows):
    calls.append(width)
    if width == 1:
      raise MemoryError("RESOURCE_EXHAUSTED: out of memory (simulated)")
    return {"width": width, "particles": n, "rows": rows, "ratio_to_bare": 1.0}
  monkeypatch.setattr(device_check, "factored_cell", failing)
  spec = dict(device_check.PRESETS["quick"], name="quick", factored=((1, 2, 1), (3, 4, 1)), int8_widths=(),
              million=())
  path = tmp_path / "out.json"
  device_check.run(spec, str(path), budget_s=1e5, log=lambda msg: None)
  rows = json.loads(path.read_text())["factored"]
  assert calls == [1, 3]
  assert "MemoryError" in rows[0]["error"] and rows[1]["ratio_to_bare"] == 1.0


def test_cells_past_the_budget_are_skipped_and_the_file_stays_valid(tmp_path):
  spec = dict(device_check.PRESETS["quick"], name="quick", int8_widths=(), million=())
  path = tmp_path / "out.json"
  device_check.run(spec, str(path), budget_s=-1.0, log=lambda msg: None)
  result = json.loads(path.read_text())
  assert result["complete"] and all("skipped" in r for r in result["factored"])
  assert len(result["factored"]) == len(spec["factored"])
