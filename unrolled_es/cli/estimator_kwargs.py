"""The estimator of a run, built from its options: each flag becomes the keyword argument it stands for (--noise,
--rank and --factored a noise, --devices a mesh, --horizons a schedule, --shaping and --clip-differences a fitness
transform, the task's mask `mask=`), given only to an estimator that takes it; a flag that the estimator cannot
honour is an error that says so, never dropped."""
import inspect

from unrolled_es.cli.parser import UsageError


def accepted(ctor) -> tuple:
  """The options a constructor takes (its keyword parameters besides the system)."""
  named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
  return tuple(p.name for p in inspect.signature(ctor).parameters.values() if p.kind in named and p.name != "system")


def _open_keywords(ctor) -> bool:
  return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(ctor).parameters.values())


def build_estimator(cfg, task, ctor):
  """The estimator `ctor` on the task's system(s), with --clip-gradient around it."""
  takes = accepted(ctor)
  kw = {"num_particles": cfg["particles"], "sigma": cfg["sigma"], "truncation_length": cfg["truncation"],
        "antithetic": cfg.get("antithetic"), "stagger": cfg.get("stagger"), "diagnostics": cfg.get("diagnostics")}
  kw = {k: v for k, v in kw.items() if v is not None and k in takes}
  kw.update(_structured_options(cfg, task, takes))
  unknown = [k for k in cfg["estimator_args"] if k not in takes]
  if unknown and not _open_keywords(ctor):
    raise UsageError(f"estimator {cfg['estimator']!r} takes no option {', '.join(unknown)}; it "
                     f"takes: {', '.join(takes)}")
  kw.update(cfg["estimator_args"])
  try:
    estimator = _on_every_system(ctor, task, kw)
    if cfg.get("clip_gradient") is not None:
      import unrolled_es
      estimator = unrolled_es.clip_gradient(estimator, cfg["clip_gradient"])
    return estimator
  except (ValueError, TypeError) as e:
    raise UsageError(f"estimator {cfg['estimator']!r}: {e}") from None


def _structured_options(cfg, task, takes):
  """noise=, mesh=, mask=, horizons= and fitness= as the options ask."""
  kw = {}
  noise = _noise(cfg, "noise" in takes)
  if noise is not None:
    kw["noise"] = noise
  if cfg.get("devices") is not None:
    kw["mesh"] = _mesh(cfg["devices"], "mesh" in takes, cfg["estimator"])
  if getattr(task, "mask", None) is not None:
    if "mask" not in takes:
      raise UsageError(f"task {cfg['task']!r} trains only part of θ (a mask), which estimator {cfg['estimator']!r} "
                       f"cannot honour; choose one that takes mask=")
    kw["mask"] = task.mask
  kw.update(_robustness(cfg, takes))
  return kw


def _on_every_system(ctor, task, kw):
  """The estimator on the task's system, or, when the task has further systems of other shapes, one estimator
  per system combined by unrolled_es.multi_task."""
  extra = tuple(getattr(task, "extra_systems", ()) or ())
  if not extra:
    return ctor(task.system, **kw)
  import unrolled_es
  systems, weights = [task.system] + [s for s, _ in extra], [1.0] + [float(w) for _, w in extra]
  return unrolled_es.multi_task([ctor(system, **kw) for system in systems], weights=weights)


def _robustness(cfg, takes):
  """horizons= and fitness= from --horizons, --shaping and --clip-differences."""
  import unrolled_es
  out = {}
  if cfg.get("horizons") is not None:
    if "horizons" not in takes:
      raise UsageError(f"estimator {cfg['estimator']!r} runs whole episodes, so --horizons does not apply")
    kind, *values = cfg["horizons"].split(":")
    try:
      out["horizons"] = getattr(unrolled_es.horizons, kind)(*map(int, values))
    except ValueError as e:
      raise UsageError(f"--horizons {cfg['horizons']}: {e}") from None
  transforms = []
  if cfg.get("clip_differences") is not None:
    transforms.append(unrolled_es.fitness.clipped(cfg["clip_differences"]))
  if cfg.get("shaping") is not None:
    transforms.append(unrolled_es.fitness.named(cfg["shaping"]))
  if transforms:
    if "fitness" not in takes:
      raise UsageError(f"estimator {cfg['estimator']!r} has no loss differences to shape or clip")
    out["fitness"] = transforms[0] if len(transforms) == 1 else unrolled_es.fitness.chain(*transforms)
  return out


def _noise(cfg, takes_noise):
  """The noise named by --noise/--rank/--factored (None: the estimator's default, full-rank Gaussian)."""
  import unrolled_es
  name, rank, factored = cfg.get("noise"), cfg.get("rank"), cfg.get("factored")
  if name is None and rank is not None:
    name = cfg["noise"] = "low_rank"
  if name is None and not factored:
    return None
  if not takes_noise:
    flag = "--rank" if rank is not None else "--factored" if factored else "--noise"
    raise UsageError(f"estimator {cfg['estimator']!r} takes no noise, so {flag} does not apply")
  if name == "gaussian" or name is None:
    if rank is not None:
      raise UsageError(f"--rank applies to --noise low_rank, not {name or 'gaussian'}")
    return unrolled_es.gaussian(factored=bool(factored))
  return unrolled_es.low_rank(1 if rank is None else rank, factored=bool(factored))


def _mesh(devices, takes_mesh, estimator):
  import jax

  import unrolled_es
  if not takes_mesh:
    raise UsageError(f"estimator {estimator!r} cannot split its particles over devices")
  available = jax.devices()
  if devices != "all" and devices > len(available):
    raise UsageError(f"--devices {devices}: only {len(available)} device(s) available ({available[0].platform})")
  return unrolled_es.particle_mesh(available if devices == "all" else available[:devices])
