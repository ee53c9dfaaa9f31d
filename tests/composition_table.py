"""The composition matrix: which estimator, noise and option combine, and why the others are refused.

One table drives both tests/test_composition.py (every cell tested: unbiased against jax.grad, or refused with an
error that names both parts) and docs/composition.md (printed by docs/composition_matrix.py). A combination is
refused when any pair in it is refused (the refusals are pairwise), so the table lists pairs:

  * estimator × noise, estimator × option, noise × option: `REFUSED` (why, and the words the error must contain),
    `BIASED` (biased by design: tested to run, not for bias); every other pair is claimed unbiased.
  * Coverage is pairwise: `cells()` picks (estimator, noise, option) triples, greedily, until every estimator ×
    noise, estimator × option and noise family × option pair appears in at least one tested triple (`family`: the
    orthogonal variants count as one family against the options). The full cross product would take an hour of
    compiling.

The configuration every cell runs on: a linear system with quadratic loss (tests/test_composition.py), T = 4
inner steps, windows of K = 2, particles not staggered, so every estimate has an exact answer.
"""
from typing import NamedTuple

HORIZON, WINDOW = 4, 2


class Estimator(NamedTuple):
  target: str              # what its estimates are unbiased for: "windows" (each window through the episode),
  #                          "first_window" (only an episode's first window: truncation biases the later ones),
  #                          "episode" (whole episodes per call)
  takes_noise: bool = True
  note: str = ""


ESTIMATORS = {
    "full_es": Estimator("episode"),
    "truncated_es": Estimator("first_window", note="biased by design; tested on an episode's first window, where "
                                                   "it is exact"),
    "generalized_pes": Estimator("windows", note=f"resample_every={2 * WINDOW} (GPES-k proper, k = 2K)"),
    "pes": Estimator("windows"),
    "es_single": Estimator("windows"),
    "nres": Estimator("windows", note="the same constructor as es_single (asserted), so its cells are es_single's"),
    "baseline_es": Estimator("windows"),
    "truncated_bptt": Estimator("first_window", takes_noise=False,
                                note="biased by design; tested on an episode's first window, where it is exact"),
    "full_bptt": Estimator("episode", takes_noise=False),
    "uoro": Estimator("windows", takes_noise=False, note="unbiased when init does not depend on θ, as here"),
    "int_es": Estimator("episode", takes_noise=False, note="trains int8 θ with its own integer noise "
                                                           "(tests/test_integer.py); refused for float θ"),
}

_BASES = ("gaussian", "gaussian(scale)", "gaussian(factored)", "low_rank(2)", "low_rank(2, factored)")
NOISES = _BASES + tuple(f"orthogonal({b})" for b in _BASES) + ("guided",)
OPTIONS = ("none", "mask", "horizons", "bfloat16", "mesh", "multi_task", "clip_gradient", "hybrid")
OPTION_NOTES = {
    "none": "fitness left at its default (the raw differences) in every cell",
    "mask": "a mask over part of a matrix and part of a vector; the target is zero outside it",
    "horizons": "ue.horizons.log_uniform(2, 5): episodes of 2–4 steps, so some windows hold a reset",
    "bfloat16": "θ in bfloat16; the target is the gradient at the rounded θ",
    "mesh": "mesh=ue.particle_mesh() (the devices there are)",
    "multi_task": "ue.multi_task over two systems with different targets, weights 1 and 3",
    "clip_gradient": "ue.clip_gradient(est, max_norm=1e6): never clips, so the wrapped estimate passes unchanged "
                     "(clipping itself biases by design)",
    "hybrid": "ue.hybrid(est, exact autodiff part): the zero-variance part takes all the weight; with two noisy "
              "parts the mix is biased by design (its weights come from the same particles)",
}
GUIDED = "guided (unbiased=True)"


class Refused(NamedTuple):
  reason: str
  names: tuple        # words the error message must contain (both parts of the pair)


def _no_noise(name):
  return Refused("takes no noise", (name, "noise"))


def _orthogonal_refusal(est, noise):
  return Refused("orthogonal draws need every particle to draw at once", (noise.split("(")[0], est))


def _refusals():
  out = {}
  for est, spec in ESTIMATORS.items():
    if not spec.takes_noise:
      out.update({(est, noise): _no_noise(est) for noise in NOISES})
  for est in ("es_single", "nres", "baseline_es", "generalized_pes"):
    out.update({(est, noise): _orthogonal_refusal("es_single" if est == "nres" else est, noise)
                for noise in NOISES if noise.startswith("orthogonal")})
  for est in ("es_single", "nres", "baseline_es", "generalized_pes", "pes"):
    out[(est, "guided")] = Refused("guided noise needs each estimate to weight only its own draws",
                                   ("guided", "es_single" if est == "nres" else est))
  for noise in NOISES:
    if noise.startswith("orthogonal"):
      out[(noise, "mask")] = Refused("a masked draw lives in fewer dimensions than orthogonal radii assume",
                                     ("orthogonal", "mask"))
  for est in ("full_es", "full_bptt", "uoro"):
    out[(est, "horizons")] = Refused("takes no horizons (whole episodes of the system's T, or no schedule)",
                                     (est, "horizons"))
  out[("guided", "hybrid")] = Refused("hybrid needs diagnostics=True, which the whitened guided estimate cannot "
                                      "give", ("diagnostics", "unbiased"))
  out.update({("int_es", option): Refused("trains int8 θ only", ("int",)) for option in OPTIONS})
  return out


REFUSED = _refusals()
REFUSED_AT_FIRST_CALL = ("int_es",)   # refuses float θ in init, where it first sees θ; the rest when built
ALIASES = {"nres": "es_single"}   # another name for the same constructor: tested once, under its first name
BIASED = {("uoro", "hybrid"): "both parts noisy: the mix's weights come from the same particles as its parts"}


def pair_status(a, b):
  """The Refused of pair (a, b), "biased" (by design), or None (claimed unbiased)."""
  if (a, b) in REFUSED:
    return REFUSED[(a, b)]
  return "biased" if (a, b) in BIASED else None


def _family_status(a, b):
  return pair_status(f"{a}(gaussian)" if a == "orthogonal" else a, b)



def _noises_of(est):
  return NOISES if ESTIMATORS[est].takes_noise else (None,)


def cell_status(est, noise, option):
  """("refused", Refused) for the first refused pair, ("biased", reason), or ("unbiased", None)."""
  pairs = [(est, option)] + ([] if noise is None else [(est, noise), (noise, option)])
  for a, b in pairs:
    if isinstance(pair_status(a, b), Refused):
      return "refused", pair_status(a, b)
  for a, b in pairs:
    if pair_status(a, b) == "biased":
      return "biased", BIASED[(a, b)]
  return "unbiased", None


def family(noise):
  """Noise × option coverage is per family: the orthogonal transform runs the same code over every base noise, and
  a factored noise differs from its unfactored one only in what `perturb` hands the step (each still meets every
  estimator on its own, and the options through its family)."""
  if noise.startswith("orthogonal"):
    return "orthogonal"
  return noise.replace(", factored)", ")").replace("(factored)", "")


FAMILIES = tuple(dict.fromkeys(family(n) for n in NOISES))


def _pairs_of(cell):
  est, noise, option = cell
  return {(est, option)} | (set() if noise is None else {(est, noise), (family(noise), option)})


def cells():
  """(estimator, noise or None, option) triples covering every pair of the axes (noise None: the estimator takes
  none), in a fixed order. An estimator × noise pair is tested with the option that covers most new pairs."""
  wanted = set()
  tested = [e for e in ESTIMATORS if e not in ALIASES]
  for est in tested:
    wanted |= {(est, option) for option in OPTIONS} | {(est, n) for n in NOISES}
  wanted |= {(family(noise), option) for noise in NOISES for option in OPTIONS}
  chosen = []

  def add(cell):  # a refused triple tests its refused pair only
    chosen.append(cell)
    refused = {p for p in _pairs_of(cell) if isinstance(_family_status(*p), Refused)}
    wanted.difference_update(refused if cell_status(*cell)[0] == "refused" else _pairs_of(cell))
  for est in tested:
    for noise in NOISES:
      if (est, noise) in wanted:
        best = max(OPTIONS, key=lambda o: (cell_status(est, noise, o)[0] != "refused",
                                           len(_pairs_of((est, noise, o)) & wanted)))
        add((est, noise, best) if cell_status(est, noise, best)[0] != "refused" else (est, noise, "none"))
  for est in tested:
    for option in OPTIONS:
      if (est, option) in wanted:
        noise = max(_noises_of(est), key=lambda n: (cell_status(est, n, option)[0] != "refused",
                                                    len(_pairs_of((est, n, option)) & wanted)))
        add((est, noise, option))
  for noise in NOISES:
    for option in OPTIONS:
      if (family(noise), option) in wanted:
        est = max((e for e in tested if ESTIMATORS[e].takes_noise),
                  key=lambda e: (cell_status(e, noise, option)[0] != "refused", -tested.index(e)))
        add((est, noise, option))
  return chosen


def cell_id(cell):
  est, noise, option = cell
  return f"{est}-{noise or 'no_noise'}-{option}"


def _reasons():
  """Each distinct refusal reason, numbered in table order, for the matrices' footnotes."""
  return {r: i + 1 for i, r in enumerate(dict.fromkeys(v.reason for v in REFUSED.values()))}


def _mark(status):
  if isinstance(status, Refused):
    return f"✗ {_reasons()[status.reason]}"
  return "biased by design" if status == "biased" else "✓"


def _matrix(rows, columns, label):
  head = f"| {label} | " + " | ".join(f"`{c}`" for c in columns) + " |"
  lines = [head, "| --- |" + " --- |" * len(columns)]
  for r in rows:
    lines.append(f"| `{r}` | " + " | ".join(_mark(pair_status(r, c)) for c in columns) + " |")
  return lines


def markdown():
  """docs/composition.md: the three pair matrices and the notes, from this table."""
  tested = cells()
  out = ["# Composition matrix", "",
         "<!-- generated by docs/composition_matrix.py from tests/composition_table.py: do not edit by hand -->", "",
         "Which estimator, noise and option combine. ✓: unbiased against `jax.grad` through the full unroll on a "
         "quadratic linear system (T = 4, K = 2, particles not staggered), tested in `tests/test_composition.py`; "
         "✗ n: refused for reason n (below): the constructor (for `int_es` with float θ, its `init`) raises an "
         "error that names both parts. A "
         "combination of three is refused when one of its pairs is. Coverage is pairwise: "
         f"{len(tested)} triples of (estimator, noise, option) hold every pair below at least once "
         f"({sum(cell_status(*c)[0] == 'unbiased' for c in tested)} tested for bias, "
         f"{sum(cell_status(*c)[0] == 'refused' for c in tested)} for their refusal; "
         "`pytest --collect-only -q tests/test_composition.py` lists them). Noise × option pairs are covered per "
         "family (the orthogonal variants are one family, and a factored noise is in its unfactored one's).", "",
         f"`guided` is `ue.guided(estimator, system, unbiased=True, ...)`, the estimator's own noise; "
         "`gaussian(scale)` has a per-coordinate scale; low rank has rank 2.", "",
         "## Estimator × noise", ""]
  out += _matrix(ESTIMATORS, NOISES, "estimator")
  out += ["", "## Estimator × option", ""] + _matrix(ESTIMATORS, OPTIONS, "estimator")
  out += ["", "## Noise × option", ""] + _matrix(NOISES, OPTIONS, "noise")
  out += ["", "## Why the refused pairs are refused", ""]
  out += [f"{i}. {reason}" for reason, i in _reasons().items()]
  out += ["", "## Notes", ""]
  out += [f"- `{name}`: {spec.note}" for name, spec in ESTIMATORS.items() if spec.note]
  out += [f"- `{name}`: {note}" for name, note in OPTION_NOTES.items()]
  out += [f"- `{a}` × `{b}` is biased by design: {why}" for (a, b), why in BIASED.items()]
  return "\n".join(out) + "\n"
