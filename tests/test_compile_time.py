"""benchmarks.compile_time covers every registered constructor once and compiles without running (never timed)."""
import math

import unrolled_es as ue
import unrolled_es_tasks as tasks
from benchmarks import compile_time


def test_every_registered_constructor_is_listed_once():
  names = compile_time.estimator_names()
  constructors = {ue.registered()[n] for n in names if n in ue.registered()}
  assert constructors == set(ue.registered().values())
  assert len([n for n in names if n in ue.registered()]) == len(constructors)   # aliases (nres) once
  assert "es_single+low_rank1_factored" in names


def test_a_round_reports_positive_compile_seconds_and_skips_integer_estimators_on_float_tasks():
  spec = dict(particles=2)
  loaded = {"rnn_char": tasks.get("rnn_char", hidden=2, horizon=20)}
  out = compile_time.one_round(spec, loaded, ["es_single", "full_es", "int_es"])
  assert set(out) == {("rnn_char", "es_single"), ("rnn_char", "full_es")}
  assert "error" not in out[("rnn_char", "full_es")]   # built with only the options it takes (no K)
  row = out[("rnn_char", "es_single")]
  for key in ("estimate_trace_lower_s", "estimate_compile_s", "estimate_first_call_cpu_s", "init_compile_s"):
    assert math.isfinite(row[key]) and row[key] > 0, (key, row)
  assert compile_time.summarise([out])[0]["estimate_first_call_s"] == row["estimate_first_call_s"]
