"""Atomic, verified checkpoints of a training run: pytrees of arrays plus JSON metadata in one .npz.

A checkpoint `ckpt_<step>.npz` holds every leaf of a pytree as raw bytes (so bfloat16 and typed PRNG keys
survive exactly), and one JSON record with, per leaf, its key path, shape, dtype and weak type, the pytree
structure, a SHA-256 of all leaf bytes, the caller's config fingerprint and free-form metadata.

Writing is atomic: a temporary file in the same folder, flushed and fsynced, then `os.replace`d over the
final name, so a crash mid-write never leaves a half-written `ckpt_*.npz`. Older checkpoints are kept
(`keep`, at least 2) so that a latest file damaged after the fact (disk, copy, partial sync) can fall back
to the previous good one.

Loading checks the file against a template pytree (e.g. from `jax.eval_shape`): structure, shapes and
dtypes must match, and so must the fingerprint. Any failure raises `CheckpointError`; a damaged file
raises its subclass `CorruptCheckpointError`, the only kind `restore_latest` falls back from.
"""
import glob
import hashlib
import json
import os
import re
import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "unrolled_es.training.checkpoint/1"
_NAME = re.compile(r"^ckpt_(\d+)\.npz$")


class CheckpointError(Exception):
  """A checkpoint that cannot be used: damaged, or written by a different configuration or structure."""


class CorruptCheckpointError(CheckpointError):
  """The file itself is damaged (unreadable, truncated, checksum mismatch)."""


def fingerprint(config) -> str:
  """SHA-256 of a JSON-serialisable config, independent of key order."""
  text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
  return hashlib.sha256(text.encode()).hexdigest()


def checkpoint_path(directory: str, step: int) -> str:
  return os.path.join(directory, f"ckpt_{step:09d}.npz")


def list_checkpoints(directory: str) -> list[tuple[int, str]]:
  """(step, path) of the checkpoints in `directory`, oldest first."""
  found = []
  for path in glob.glob(os.path.join(directory, "ckpt_*.npz")):
    m = _NAME.match(os.path.basename(path))
    if m:
      found.append((int(m.group(1)), path))
  return sorted(found)


# ---------------------------------------------------------------- leaves <-> bytes

def _is_key(dtype) -> bool:
  return jnp.issubdtype(dtype, jax.dtypes.prng_key)


def _leaf_record(path, leaf):
  weak = bool(getattr(leaf, "weak_type", False))
  dtype = jnp.result_type(leaf) if not hasattr(leaf, "dtype") else leaf.dtype
  record = {"path": jax.tree_util.keystr(path), "shape": list(np.shape(leaf)), "dtype": str(dtype), "weak": weak}
  if _is_key(dtype):
    record["impl"] = str(jax.random.key_impl(leaf))
    leaf = jax.random.key_data(leaf)
  data = np.array(jax.device_get(leaf), order="C")  # not ascontiguousarray: it turns 0-d into 1-d
  record["data_dtype"] = str(data.dtype)
  record["data_shape"] = list(data.shape)
  return record, data.reshape(-1).view(np.uint8)


def _make_weak(x):
  # Weak types change dtype promotion, so a restored leaf must keep the original's for bit-identical resumes.
  try:
    from jax._src.lax import lax as lax_internal
    return lax_internal._convert_element_type(x, np.dtype(x.dtype), weak_type=True)
  except Exception:  # pragma: no cover - private API moved; a strong type is the best we can do
    return x


def _leaf_from(record, raw):
  data = np.frombuffer(raw.tobytes(), dtype=jnp.dtype(record["data_dtype"])).reshape(record["data_shape"])
  if "impl" in record:
    return jax.random.wrap_key_data(jnp.asarray(data), impl=record["impl"])
  leaf = jnp.asarray(data)
  return _make_weak(leaf) if record["weak"] else leaf


def _template_records(template):
  leaves = jax.tree_util.tree_leaves_with_path(template)
  return [(jax.tree_util.keystr(p), list(np.shape(x)), str(x.dtype if hasattr(x, "dtype") else jnp.result_type(x)))
          for p, x in leaves]


# ---------------------------------------------------------------- save / load

def save(directory: str, step: int, tree, *, config_fingerprint: str = "", metadata=None, keep: int = 2) -> str:
  """Atomically writes `tree` (any pytree of arrays) and JSON `metadata` as checkpoint `step`.

  Older checkpoints beyond the newest `keep` (>= 2) are deleted only after the new one is safely on disk.
  """
  keep = max(int(keep), 2)
  os.makedirs(directory, exist_ok=True)
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
  records, arrays = [], {}
  digest = hashlib.sha256()
  for i, (path, leaf) in enumerate(leaves_with_path):
    record, raw = _leaf_record(path, leaf)
    records.append(record)
    arrays[f"leaf_{i}"] = raw
    digest.update(raw.tobytes())
  header = {"format": FORMAT, "step": int(step), "treedef": str(treedef), "leaves": records,
            "sha256": digest.hexdigest(), "fingerprint": config_fingerprint, "metadata": metadata or {}}
  arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)

  final = checkpoint_path(directory, step)
  for stale in glob.glob(os.path.join(directory, ".ckpt_*.tmp")):  # left by a writer killed mid-write
    os.remove(stale)
  fd, tmp = tempfile.mkstemp(prefix=".ckpt_", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, final)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  _fsync_dir(directory)
  for _, old in list_checkpoints(directory)[:-keep]:
    os.remove(old)
  return final


def _fsync_dir(directory):
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:  # pragma: no cover - e.g. Windows cannot open folders
    return
  try:
    os.fsync(fd)
  except OSError:  # pragma: no cover
    pass
  finally:
    os.close(fd)


def _read(path):
  try:
    with np.load(path, allow_pickle=False) as f:
      header = json.loads(f["header"].tobytes().decode())
      if header.get("format") != FORMAT:
        raise ValueError(f"not an {FORMAT} file")
      raws = [f[f"leaf_{i}"] for i in range(len(header["leaves"]))]
    digest = hashlib.sha256()
    for raw in raws:
      digest.update(raw.tobytes())
    ok = digest.hexdigest() == header["sha256"]
  except Exception as e:  # zip CRC, truncation, bad JSON, missing member or field: all mean a damaged file
    raise CorruptCheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})") from None
  if not ok:
    raise CorruptCheckpointError(f"checkpoint {path} fails its SHA-256 check (the file is damaged)")
  return header, raws


def _check_leaves(path, expected, stored, treedef_ok):
  """Raises CheckpointError unless the stored leaves (path, shape, dtype) are the expected ones."""
  if not treedef_ok or len(expected) != len(stored):
    names = lambda records: ", ".join(r[0] for r in records[:6]) + (", ..." if len(records) > 6 else "")
    raise CheckpointError(f"checkpoint {path} holds a different pytree structure: {len(stored)} leaves "
                          f"({names(stored)}), expected {len(expected)} ({names(expected)})")
  for e, s in zip(expected, stored):
    if tuple(e) != (s[0], list(s[1]), s[2]):
      raise CheckpointError(f"checkpoint {path}: leaf {s[0]} has shape {s[1]} dtype {s[2]}, "
                            f"expected {e[0]} with shape {e[1]} dtype {e[2]}")


def _same_structure(a: str, b: str) -> bool:
  """Pytree structures compared by their printed form without object addresses (static data such as an
  mjx.Data prints its id, which differs in every process)."""
  strip = lambda text: re.sub(r" at 0x[0-9a-fA-F]+", "", text)
  return strip(a) == strip(b)


def load(path: str, template, *, config_fingerprint: str | None = None, part: str | None = None):
  """Reads checkpoint `path`, checked against `template`. Returns (tree, step, metadata).

  `template` is a pytree with the expected structure, shapes and dtypes (arrays or ShapeDtypeStructs).
  If `config_fingerprint` is given it must equal the one stored. With `part` (a top-level key of a checkpointed
  dict, e.g. "theta"), only that entry is read and `template` is its template: a run's θ can be restored without
  rebuilding its optimizer's and estimator's states.
  """
  header, raws = _read(path)
  if config_fingerprint is not None and header["fingerprint"] != config_fingerprint:
    raise CheckpointError(f"checkpoint {path} was written by a different configuration "
                          f"(fingerprint {header['fingerprint'][:12]}, expected {config_fingerprint[:12]})")
  treedef = jax.tree_util.tree_structure(template)
  expected = _template_records(template)
  records = list(zip(header["leaves"], raws))
  if part is not None:
    prefix = f"[{part!r}]"
    records = [(dict(r, path=r["path"][len(prefix):]), raw) for r, raw in records if r["path"].startswith(prefix)]
  stored = [(r["path"], r["shape"], r["dtype"]) for r, _ in records]
  _check_leaves(path, expected, stored, part is not None or _same_structure(str(treedef), header["treedef"]))
  leaves = [_leaf_from(r, raw) for r, raw in records]
  return jax.tree_util.tree_unflatten(treedef, leaves), header["step"], header["metadata"]


def restore_latest(directory: str, template, *, config_fingerprint: str | None = None, part: str | None = None):
  """Loads the newest usable checkpoint in `directory` (or only its `part`, see `load`), or returns None if there
  is none.

  A damaged newest file is skipped with a warning in favour of the previous one; a configuration or
  structure mismatch is raised at once (an older file of the same run would not match either).
  """
  found = list_checkpoints(directory) if os.path.isdir(directory) else []
  errors = []
  for _, path in reversed(found):
    try:
      result = load(path, template, config_fingerprint=config_fingerprint, part=part)
    except CorruptCheckpointError as e:
      warnings.warn(f"{e}; falling back to an older checkpoint", RuntimeWarning, stacklevel=2)
      errors.append(str(e))
      continue
    return result
  if errors:
    raise CorruptCheckpointError("no usable checkpoint in " + directory + ": " + "; ".join(errors))
  return None
