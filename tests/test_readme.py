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
