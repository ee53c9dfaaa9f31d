"""The README's quick-start runs as written and does what it says: it raises the tiny initial learning rate."""
import os
import re

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_quick_start_runs_and_learns(capsys):
  text = open(README).read()
  code = re.search(r"## Quick start\n\n```python\n(.*?)```", text, re.S).group(1)
  scope = {}
  exec(compile(code, "README quick-start", "exec"), scope)
  lr = float(scope["jnp"].exp(scope["theta"]["log_lr"]))
  assert lr > 10 * float(scope["jnp"].exp(-4.0))
  assert capsys.readouterr().out.startswith("lr ")


def test_readme_commands_are_the_ones_ci_runs():
  text = open(README).read()
  ci = open(os.path.join(os.path.dirname(__file__), "..", ".ci", "run")).read()
  test_command = re.search(r"pip install -e '\.\[test\]' && (python -m pytest[^\n]*)", text).group(1)
  assert test_command in ci
  assert "unrolled-es train --task learned_optimizer" in text


def test_layout_tree_names_every_subpackage_and_module_of_core():
  """The README's Layout draws the folder tree: a subpackage added or renamed must show up there."""
  text = open(README).read()
  tree = re.search(r"## Layout\n.*?```text\n(.*?)```", text, re.S).group(1)
  package = os.path.join(os.path.dirname(README), "unrolled_es")
  subpackages = [d for d in os.listdir(package) if os.path.exists(os.path.join(package, d, "__init__.py"))]
  core = [f for f in os.listdir(os.path.join(package, "core")) if f.endswith(".py") and f != "__init__.py"]
  missing = [f"{d}/" for d in subpackages if f"── {d}/" not in tree] + [f for f in core if f"── {f}" not in tree]
  assert not missing, f"README's Layout tree lacks {missing}"
