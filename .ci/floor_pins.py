"""Prints, one per line, the pip requirements that pin pyproject.toml's lowest allowed core dependencies: jax (and
the jaxlib of the same version), optax and numpy, each at its `>=` bound. CI installs them to test the floors."""
import pathlib
import re
import tomllib

CORE = ("jax", "optax", "numpy")


def floors(pyproject: pathlib.Path) -> dict:
  dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
  found = {}
  for requirement in dependencies:
    match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*", requirement)
    if match and match.group(1).lower() in CORE:
      found[match.group(1).lower()] = match.group(2)
  missing = [name for name in CORE if name not in found]
  if missing:
    raise SystemExit(f"pyproject.toml gives no '>=' floor for {', '.join(missing)}")
  return found


if __name__ == "__main__":
  pins = floors(pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml")
  for name in CORE:
    print(f"{name}=={pins[name]}")
  print(f"jaxlib=={pins['jax']}")
