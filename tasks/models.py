"""Small haiku models shared by the neural tasks: an MLP classifier and a one-token-at-a-time LSTM."""
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {"gelu": jax.nn.gelu, "relu": jax.nn.relu, "tanh": jnp.tanh}


def check_activation(name):
  if name not in ACTIVATIONS:
    raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {name!r}")
  return ACTIVATIONS[name]


def check_hidden(name, hidden):
  """A tuple of positive layer widths (an int is one layer)."""
  widths = (hidden,) if isinstance(hidden, int) else hidden
  try:
    widths = tuple(widths)
  except TypeError:
    widths = None
  if not widths or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
    raise ValueError(f"{name} must be a positive int or a non-empty tuple of positive ints; got {hidden!r}")
  return widths


def mlp_classifier(hidden, num_classes, activation="gelu") -> hk.Transformed:
  """x (batch, d) -> logits (batch, num_classes); `init(key, x)`, `apply(params, x)`."""
  act = check_activation(activation)
  return hk.without_apply_rng(hk.transform(
      lambda x: hk.nets.MLP(tuple(hidden) + (num_classes,), activation=act)(x)))


def cross_entropy(logits, labels):
  """Per-example −log softmax(logits)[label]; labels are integer ids (any leading shape)."""
  logp = jax.nn.log_softmax(logits)
  return -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]


def lstm_lm(hidden, vocab):
  """A one-token step of an LSTM language model (Hochreiter & Schmidhuber 1997).

  Returns (model, initial_state): `model.apply(params, token, state) -> (logits, state)` with a scalar int
  `token` fed one-hot, and `initial_state()` the zero `hk.LSTMState` (unbatched).
  """
  def step(token, state):
    out, state = hk.LSTM(hidden)(jax.nn.one_hot(token, vocab), state)
    return hk.Linear(vocab)(out), state

  def initial_state():
    zeros = jnp.zeros((hidden,), jnp.float32)
    return hk.LSTMState(hidden=zeros, cell=zeros)

  return hk.without_apply_rng(hk.transform(step)), initial_state


def numpy_init(model: hk.Transformed, seed: int, *example_args):
  """Params for `model` with haiku's default initialisers (weights truncated-normal at ±2 std with std
  1/√fan_in, biases zero), drawn with numpy: shapes come from `jax.eval_shape`, so building a task compiles
  nothing (eager haiku init compiles every op of every layer)."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), *example_args)
  rng = np.random.default_rng(seed)

  def draw(leaf):
    if leaf.ndim < 2:
      return jnp.zeros(leaf.shape, leaf.dtype)
    x = rng.standard_normal(leaf.shape)
    while np.any(bad := np.abs(x) > 2):
      x[bad] = rng.standard_normal(int(bad.sum()))
    return jnp.asarray(x / 0.87962566103423978 / np.sqrt(leaf.shape[0]), leaf.dtype)

  return jax.tree_util.tree_map(draw, shapes)
