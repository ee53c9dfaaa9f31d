"""The learned optimizer's task family, its optax export and the statistics of its evaluation."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from unrolled_es_tasks import learned_optimizer as lo
from unrolled_es_tasks import lopt_eval, lopt_network, lopt_problems
from unrolled_es_tasks.lopt_network import LoptSpec

KEY = jax.random.PRNGKey(0)
SPEC = LoptSpec()
THETA0 = lopt_network.init_theta(SPEC)


def _saturated(theta, spec=SPEC, scale=1e4):
  """θ whose output layer is scaled so far up that tanh saturates: the largest steps any θ can take."""
  last = f"mlp/~/linear_{len(spec.hidden)}"
  return {**theta, last: {"w": theta[last]["w"] * scale, "b": theta[last]["b"] + 3.0}}


# ---------------------------------------------------------------- task family

def test_family_keeps_shapes_and_draws_different_problems():
  family = lopt_problems.make_family()
  opt = optax.adam(1e-2)
  keys = jax.random.split(KEY, 16)
  states = [lopt_problems.episode_init(family, opt, k) for k in keys]
  shapes = {str(jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), s)) for s in states}
  assert len(shapes) == 1
  problems = [s.problem for s in states]
  assert {int(p.source) for p in problems} == {0, 1}             # digits and synthetic both drawn
  assert len({int(p.num_classes) for p in problems if int(p.source) == 1}) > 1
  assert len({int(p.batch) for p in problems}) == 3
  assert len({round(float(p.init_scale), 4) for p in problems}) == 16
  assert all(0.5 <= float(p.init_scale) <= 2.0 for p in problems)
  first = [np.asarray(jax.tree_util.tree_leaves(s.params)[-1]) for s in states[:2]]
  assert not np.array_equal(*first)


def test_losses_are_on_one_scale_across_problems():
  """A fresh classifier scores about 1 (loss / log C) whatever the number of classes."""
  family = lopt_problems.make_family(vary=False)
  opt = optax.adam(1e-2)

  def first_loss(key):
    state = lopt_problems.episode_init(family, opt, key)
    return state.problem.num_classes, lopt_problems.episode_step(family, opt, state, key)[1][1]

  classes, losses = jax.jit(jax.vmap(first_loss))(jax.random.split(KEY, 64))
  assert len(set(np.asarray(classes).tolist())) >= 4
  assert np.all(np.abs(np.asarray(losses) - 1.0) < 0.35)


def test_meta_loss_clip_counts_nan_as_the_ceiling():
  out = lopt_problems.clip_meta_loss(jnp.array([jnp.nan, jnp.inf, -1.0, 0.3]))
  np.testing.assert_array_equal(out, np.float32([1.5, 1.5, 0.0, 0.3]))


def test_validation_split_is_disjoint_from_train_and_test():
  data = lopt_problems.load_data("digits")
  rows = lambda x: {r.tobytes() for r in np.asarray(x)}
  train, valid, test = rows(data.train_x), rows(data.valid_x), rows(data.test_x)
  assert len(data.valid_x) > 200 and not (valid & test) and not (valid & train)


def test_valid_meta_loss_differs_from_train_loss():
  family = lopt_problems.make_family(datasets="digits", vary=False, meta_loss="valid")
  opt = optax.adam(1e-2)
  state = lopt_problems.episode_init(family, opt, KEY)
  _, (meta, train) = jax.jit(lambda s, k: lopt_problems.episode_step(family, opt, s, k))(state, KEY)
  assert abs(float(meta) - float(train)) > 1e-4 and abs(float(meta) - 1.0) < 0.3


# ---------------------------------------------------------------- optax export

def _odd_params():
  k = jax.random.split(KEY, 4)
  return {"conv": jax.random.normal(k[0], (3, 3, 2, 4)), "scalar": jnp.float32(0.5),
          "nested": (jax.random.normal(k[1], (7,)), {"w": jax.random.normal(k[2], (5, 3))})}


def test_optax_export_on_any_pytree_jitted():
  params = _odd_params()
  opt = lo.as_optax(THETA0, num_steps=10)
  loss = lambda p: sum(jnp.sum(jnp.sin(x) ** 2) for x in jax.tree_util.tree_leaves(p))

  @jax.jit
  def step(p, s):
    updates, s = opt.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, updates), s

  state, start = opt.init(params), loss(params)
  for _ in range(10):
    params, state = step(params, state)
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(_odd_params())
  assert float(loss(params)) < float(start)


def test_untrained_optimizer_is_adam_at_its_lr():
  params = _odd_params()
  grads = jax.tree_util.tree_map(lambda x: jnp.cos(x) + 0.1, params)
  ours, adam = lo.as_optax(THETA0, num_steps=10), optax.adam(SPEC.lr)
  u1, _ = jax.jit(ours.update)(grads, ours.init(params), params)
  u2, _ = jax.jit(adam.update)(grads, adam.init(params), params)
  for a, b in zip(jax.tree_util.tree_leaves(u1), jax.tree_util.tree_leaves(u2)):
    width_factor = lopt_network._tensor_lr(SPEC, np.shape(a))   # (32 / fan_in) for matrices, μP's
    np.testing.assert_allclose(a, width_factor * b, rtol=0.02, atol=1e-4 * SPEC.lr)


def test_unseen_shape_trains_for_five_horizons_without_nan():
  """A 3-layer MLP on the held-out tabular data for 5× the default horizon (1000 steps), with θ0 and with a θ
  far from it (every weight perturbed by N(0, 0.3²)): no NaN; with θ0 the loss goes down."""
  family = lopt_problems.make_family(hidden=(24, 16, 8), datasets="breast_cancer", vary=False)
  leaves, treedef = jax.tree_util.tree_flatten(THETA0)
  noise = jax.random.split(KEY, len(leaves))
  far = treedef.unflatten([x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, noise)])
  train = jax.jit(lambda theta, k: lopt_eval.run(family, lo.as_optax(theta, num_steps=1000), k, 1000))
  for theta in (THETA0, far):
    out = train(theta, KEY)
    assert np.all(np.isfinite(np.asarray(out["train"]))) and np.isfinite(float(out["test_loss"]))
  assert float(np.mean(train(THETA0, KEY)["train"][-100:])) < 0.5 * float(out["train"][0])


def test_no_theta_steps_further_than_the_bound():
  """|update| <= lr·e^S·(|Adam's direction| + D) for a θ that saturates every output."""
  params = _odd_params()
  grads = jax.tree_util.tree_map(lambda x: jnp.cos(3 * x), params)
  opt, adam = lo.as_optax(_saturated(THETA0), num_steps=10), optax.adam(1.0)
  ours, s = jax.jit(opt.update)(grads, opt.init(params), params)
  nominal, _ = adam.update(grads, adam.init(params), params)
  for u, n in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(nominal)):
    lr = SPEC.lr * lopt_network._tensor_lr(SPEC, np.shape(u))
    bound = lr * math.exp(SPEC.step_range) * (np.abs(np.asarray(n)) + SPEC.direction_scale)
    assert np.all(np.abs(np.asarray(u)) <= bound * (1 + 1e-5))
    assert float(np.max(np.abs(np.asarray(u)) / bound)) > 0.5    # saturated: the bound is nearly reached


@pytest.mark.parametrize("scale, bias", [(1e4, 3.0), (1e4, -3.0), (30.0, 0.0)])
def test_the_aligned_correction_only_scales_adams_step(scale, bias):
  """With correction="aligned" every element moves along Adam's update, by at most (1 + D)·e^S of Adam's step,
  for a θ that saturates its outputs up or down and for a θ of large random outputs; over steps where the
  gradient changes sign, so that the momentum and the gradient disagree."""
  spec = LoptSpec(correction="aligned")
  last = f"mlp/~/linear_{len(spec.hidden)}"
  theta0 = lopt_network.init_theta(spec, seed=3)
  theta = {**theta0, last: {"w": theta0[last]["w"] * scale, "b": theta0[last]["b"] + bias}}
  params = _odd_params()
  opt, adam = lo.as_optax(theta, num_steps=10, spec=spec), optax.adam(1.0, eps=0.0)
  state, adam_state = opt.init(params), adam.init(params)
  for k in range(4):
    grads = jax.tree_util.tree_map(lambda x: jnp.cos(3 * x + 2.0 * k), params)
    ours, state = jax.jit(opt.update)(grads, state, params)
    nominal, adam_state = adam.update(grads, adam_state, params)
    for u, n in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(nominal)):
      u, n = np.asarray(u), np.asarray(n)
      lr = float(lopt_network.nominal_lr(spec, k, 10)) * lopt_network._tensor_lr(spec, u.shape)
      assert np.all(u * n >= 0)
      assert np.all(np.abs(u) <= lr * math.exp(spec.step_range) * (1 + spec.direction_scale) * np.abs(n) * (1 + 1e-4))


def _constant_correction(spec, d):
  """θ whose correction is the constant tanh⁻¹(d) and whose step multiplier is 1 (only the output bias)."""
  theta, last = lopt_network.init_theta(spec), f"mlp/~/linear_{len(spec.hidden)}"
  return {**theta, last: {"w": 0 * theta[last]["w"], "b": jnp.asarray([math.atanh(d), 0.0], jnp.float32)}}


def test_an_additive_correction_drifts_where_the_gradient_vanishes_and_an_aligned_one_cannot():
  """The failure of the θ shipped before: a correction with a non-zero average keeps stepping after the gradient
  has gone. On ½‖p‖² from p = 1 for 3000 steps of unknown length, a correction of constant sign carries the
  additive form far past the minimum (its loss ends above its start), while the same θ aligned converges."""
  params = {"b": jnp.ones((8,), jnp.float32)}
  loss = lambda p: 0.5 * jnp.sum(jnp.square(p["b"]))

  def final_loss(spec):
    opt = lo.as_optax(_constant_correction(spec, 0.99), spec=spec)

    def step(carry, _):
      p, s = carry
      u, s = opt.update(jax.grad(loss)(p), s, p)
      return (optax.apply_updates(p, u), s), None
    (p, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=3000)
    return float(loss(p))

  start = float(loss(params))
  assert final_loss(LoptSpec(time_features="any", direction_scale=2.0)) > start
  assert final_loss(LoptSpec(time_features="any", correction="aligned")) < 1e-3 * start


def test_the_task_takes_the_correction_and_checks_it():
  assert lo.make_config(correction="aligned").spec.correction == "aligned"
  with pytest.raises(ValueError, match="correction must be one of"):
    lo.make_config(correction="multiplicative")


def test_export_errors_name_the_argument():
  with pytest.raises(ValueError, match="num_steps"):
    lo.as_optax(THETA0)
  with pytest.raises(ValueError, match="lopt_hidden"):
    lo.as_optax(lopt_network.init_theta(LoptSpec(hidden=(4,))), num_steps=5)
  opt = lo.as_optax(THETA0, num_steps=5)
  params = {"w": jnp.ones((2, 2))}
  with pytest.raises(ValueError, match="params"):
    opt.update(params, opt.init(params))
  with pytest.raises(ValueError, match="cosine"):
    lo.as_optax(THETA0, spec=LoptSpec(time_features="steps"))
  with pytest.raises(ValueError, match="correction must be one of additive, aligned; got 'sign'"):
    lo.as_optax(THETA0, 5, spec=LoptSpec(correction="sign"))
  with pytest.raises(ValueError, match="direction_scale must be at most 1 with correction='aligned'"):
    lo.as_optax(THETA0, 5, spec=LoptSpec(correction="aligned", direction_scale=1.5))
  steps_spec = LoptSpec(time_features="steps", schedule="constant")
  lo.as_optax(lopt_network.init_theta(steps_spec), spec=steps_spec)  # needs no run length


def test_load_restores_the_newest_valid_checkpoint(tmp_path, capsys):
  from unrolled_es.cli import main as cli_main
  out = str(tmp_path / "run")
  args = ["train", "--task", "learned_optimizer", "--estimator", "es_single", "--particles", "2", "--steps", "2",
          "--checkpoint-every", "1", "--truncation", "2", "--task-arg", "horizon=4", "--task-arg", "hidden=8",
          "--task-arg", "lopt_hidden=4", "--no-stagger", "--out", out, "--no-progress", "--no-report"]
  assert cli_main(args) == 0
  theta, config = lo.load_theta(out)
  assert config.spec.hidden == (4,) and config.horizon == 4
  newest = sorted(os.listdir(os.path.join(out, "checkpoints")))[-1]
  with open(os.path.join(out, "checkpoints", newest), "r+b") as f:
    f.seek(100)
    f.write(b"\0" * 64)
  with pytest.warns(RuntimeWarning, match="older checkpoint"):
    opt = lo.load(out)            # from the step-1 checkpoint
  params = {"w": jnp.linspace(-1, 1, 6).reshape(3, 2)}
  grads = jax.tree_util.tree_map(jnp.cos, params)
  update = lambda o: jax.jit(o.update)(grads, o.init(params), params)[0]["w"]
  older, newer = update(opt), update(lo.as_optax(theta, config.horizon, config.spec))
  assert np.all(np.isfinite(np.asarray(older))) and not np.array_equal(older, newer)
  with pytest.raises(ValueError, match="config.json"):
    lo.load(str(tmp_path))


# ---------------------------------------------------------------- evaluation statistics

def test_mean_ci_matches_scipy():
  x = np.random.default_rng(0).normal(0.3, 0.1, size=8)
  mean, low, high = lopt_eval.mean_ci(x)
  want = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
  np.testing.assert_allclose([low, high], want, rtol=1e-12)
  assert mean == pytest.approx(x.mean())


def test_cosine_schedule_decays_to_zero():
  opt = lopt_eval._adam(jnp.float32(1.0), jnp.bool_(True), 10)
  params = {"w": jnp.ones(3)}
  state, sizes = opt.init(params), []
  for _ in range(11):
    u, state = opt.update({"w": jnp.ones(3)}, state, params)
    sizes.append(float(-u["w"][0]))
  np.testing.assert_allclose(sizes[5], 0.5, rtol=1e-3)   # ½(1 + cos(π/2)), Adam's direction is 1 here
  assert sizes[10] == pytest.approx(0.0, abs=1e-6)


def test_report_writes_table_json_and_plot(tmp_path):
  config = lo.make_config(horizon=6, hidden=(8,), datasets="digits", vary=False, lopt_hidden=(8,))
  theta0 = lopt_network.init_theta(config.spec)
  problem = lopt_eval.EvalProblem("tiny", config.family, 6)
  rows = lopt_eval.report(config, theta0, _saturated(theta0, config.spec), str(tmp_path), seeds=2,
                          problem_list=[problem])
  names = [r["optimizer"] for r in rows]
  assert [n.split(" (")[0] for n in names] == ["learned"] * 3 + ["adam constant", "adam cosine"]
  assert names[2].startswith("learned (pretrained, outer step ")   # the shipped optimizer's row beside them
  saved = json.load(open(tmp_path / "lopt_vs_adam.json"))
  assert saved["held_out_seeds"] == 2 and len(saved["adam_lrs"]) == len(lopt_eval.ADAM_LRS)
  for schedule, row in zip(lopt_eval.SCHEDULES, rows[-2:]):   # the chosen lr has the grid's best mean score
    grid = saved["adam"]["tiny"]["adam_grid"][schedule]
    assert f"lr {lopt_eval.ADAM_LRS[int(np.argmin(grid))]:.3g})" in row["optimizer"]
    assert max(grid) > min(grid)
  assert os.path.getsize(tmp_path / "lopt_vs_adam.png") > 1000
  mean, low, high = (float(v) for v in rows[0]["meta-objective"].replace("[", "").replace("]", "").replace(",", "").split())
  assert low <= mean <= high and math.isfinite(mean)
  # the printed table carries the paired test-loss difference of every learned row (claims follow its interval)
  assert all("test loss - best adam" in r for r in rows[:3]) and all("test loss - best adam" not in r for r in rows[3:])


def test_factored_low_rank_noise_applies_to_theta():
  """θ stays a haiku-params pytree: ES with factored low-rank noise runs on the task and gives a finite gradient."""
  import unrolled_es as ue
  task = lo.learned_optimizer(horizon=4, hidden=(8,), datasets="digits", vary=False)
  est = ue.es_single(task.system, num_particles=2, sigma=0.01, truncation_length=2, stagger=False,
                     noise=ue.low_rank(1, factored=True))
  grad, _, info = jax.jit(est.estimate)(KEY, task.theta0, est.init(KEY, task.theta0))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grad)) and int(info["num_valid"]) > 0


def test_readme_optax_example_trains_a_model_the_library_never_saw(monkeypatch, capsys):
  """The README's example, with `load` of a run folder replaced by the untrained θ0 (no run in a test)."""
  import re
  text = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
  code = re.search(r"```python\n(import jax[^`]*?lopt\.load\([^`]*?)```", text, re.S).group(1)
  monkeypatch.setattr(lo, "load", lambda run_dir, num_steps=None: lo.as_optax(THETA0, num_steps))
  exec(compile(code, "README learned-optimizer example", "exec"), {})
  final = float(re.search(r"final loss ([0-9.e+-]+)", capsys.readouterr().out).group(1))
  assert final < 0.01   # sin(2x) fitted; a fresh network's loss is about 0.5
