"""Run logging to TensorBoard beside metrics.jsonl: `train(..., tensorboard_dir=...)` and `unrolled-es train
--tensorboard` write every logged record's numbers as scalars, read back here from the event file."""
import glob
import os
import struct

import jax
import jax.numpy as jnp
import optax
import pytest

event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")

import unrolled_es as ue  # noqa: E402
from unrolled_es import cli  # noqa: E402
from unrolled_es.training.loop import load_metrics, train  # noqa: E402


def read_scalars(logdir):
  """{tag: [(step, value)]} from every event file in logdir, read as TFRecords (u64 length, u32 length CRC, an
  Event proto, u32 data CRC) without TensorBoard itself."""
  out = {}
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    data, at = open(path, "rb").read(), 0
    while at < len(data):
      (length,) = struct.unpack("<Q", data[at:at + 8])
      event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
      at += 12 + length + 4
      for value in event.summary.value:
        out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return out


def quadratic_system():
  return ue.UnrolledSystem(lambda key, th: jnp.zeros(()), lambda th, s, key: (s, jnp.sum((th["x"] - 1.0) ** 2)), 4)


def test_train_writes_the_logged_records_as_scalars(tmp_path):
  system, theta = quadratic_system(), {"x": jnp.zeros(3)}
  est = ue.es_single(system, num_particles=4, sigma=0.1, truncation_length=2)
  evaluate = lambda th, key: {"meta_loss": ue.evaluate(system, th, key)}
  result = train(est, optax.sgd(0.1), theta, jax.random.PRNGKey(0), steps=6, evaluate=evaluate, eval_every=3,
                 metrics_path=str(tmp_path / "metrics.jsonl"), tensorboard_dir=str(tmp_path / "tb"), progress=False)
  scalars = read_scalars(tmp_path / "tb")
  records = load_metrics(tmp_path / "metrics.jsonl")
  assert [s for s, _ in scalars["loss"]] == [r["step"] for r in records if r.get("loss") is not None] == list(
      range(1, 7))
  for name in ("loss", "eval_meta_loss", "grad_norm", "total_inner_steps"):
    want = [(r["step"], r[name]) for r in result.metrics if r.get(name) is not None]
    assert [s for s, _ in scalars[name]] == [s for s, _ in want]
    assert all(v == pytest.approx(w, rel=1e-6) for (_, v), (_, w) in zip(scalars[name], want)), name
  assert [s for s, _ in scalars["eval_meta_loss"]] == [0, 3, 6]
  assert "step" not in scalars


def test_cli_tensorboard_flag_logs_beside_metrics_jsonl(tmp_path):
  out = tmp_path / "run"
  code = cli.main(["train", "--task", "influence_balancing", "--estimator", "es_single", "--particles", "4",
                   "--steps", "3", "--out", str(out), "--no-progress", "--no-report", "--tensorboard"])
  assert code == 0
  scalars = read_scalars(out / "tensorboard")
  assert [s for s, _ in scalars["loss"]] == [r["step"] for r in load_metrics(out / "metrics.jsonl") if "loss" in r]
