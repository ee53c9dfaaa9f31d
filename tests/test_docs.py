"""The documentation site's examples run as written, so they cannot rot: every ```python block of a page runs, in
order, in one namespace per page (as a reader would paste them), from an empty working folder. A block right after
an `<!-- no-run ... -->` comment is shown, not run (it needs several processes or the reader's own system).
Also: mkdocs.yml's navigation lists exactly the pages there are, and every relative link and image resolves."""
import inspect
import os
import re
import sys

import pytest

import unrolled_es as ue

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DOCS = os.path.join(ROOT, "docs")
RESULTS = os.path.join(ROOT, "benchmarks", "results")
BLOCK = re.compile(r"(<!-- no-run[^>]*-->\n)?```python\n(.*?)```", re.S)
PAGES = sorted(f for f in os.listdir(DOCS) if f.endswith(".md"))


def python_blocks(page):
  text = open(os.path.join(DOCS, page)).read()
  return [code for skip, code in BLOCK.findall(text) if not skip]


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)])
def test_page_examples_run(page, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(ROOT)   # `import benchmarks` from a clone, as the pages' readers do
  scope = {"__name__": f"docs.{page[:-3]}"}
  for i, code in enumerate(python_blocks(page)):
    exec(compile(code, f"{page} block {i + 1}", "exec"), scope)
  assert "Traceback" not in capsys.readouterr().err


def nav_pages():
  text = open(os.path.join(ROOT, "mkdocs.yml")).read()
  return re.findall(r"^\s*- [^:\n]+: (\S+\.md)\s*$", text, re.M)


def test_navigation_lists_every_page_once():
  nav = nav_pages()
  assert sorted(nav) == PAGES and len(set(nav)) == len(nav)


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_and_images_resolve(page):
  text = open(os.path.join(DOCS, page)).read()
  text = re.sub(r"```.*?```", "", text, flags=re.S)   # code is not links
  for target in re.findall(r"\]\(([^)\s]+)\)", text):
    if re.match(r"[a-z]+://", target) or target.startswith("#"):
      continue
    path = target.split("#")[0]
    if path.startswith("results/"):   # the benchmark figures, added to the site by docs/hooks.py
      assert os.path.exists(os.path.join(RESULTS, path[len("results/"):])), f"{page}: {target}"
    else:
      assert os.path.exists(os.path.join(DOCS, path)), f"{page}: {target}"


def test_every_python_block_is_run_or_marked():
  """Each ```python fence is either run by test_page_examples_run or explicitly marked no-run (a fence the regex
  missed, e.g. with attributes, would otherwise go untested)."""
  for page in PAGES:
    text = open(os.path.join(DOCS, page)).read()
    assert text.count("```python") == len(BLOCK.findall(text)), page


LIBRARY_ESTIMATORS = sorted({name for name, ctor in ue.registered().items()
                             if ctor.__module__.startswith("unrolled_es.estimators.")})


@pytest.mark.parametrize("name", LIBRARY_ESTIMATORS)
def test_every_estimator_documents_each_parameter(name):
  """The API page shows the constructors' docstrings: each parameter gets a `name:` line there."""
  ctor = ue.registered()[name]
  doc = inspect.getdoc(ctor) or ""
  missing = [p for p in inspect.signature(ctor).parameters if not re.search(rf"^{p}:", doc, re.M)]
  assert not missing, f"{name}'s docstring does not describe {missing}"
