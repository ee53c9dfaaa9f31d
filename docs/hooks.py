"""mkdocs hooks.

on_files: the benchmark figures in benchmarks/results/ become site files under results/, so the pages show the
figures the benchmark commands made instead of copies that would go stale.

on_page_content: the docstrings list their parameters as `name:  text` lines with indented continuations, which
read well in an editor but render as one run-on paragraph in markdown. On the API page, a paragraph of at least
two such lines becomes a definition list (name, then its text).
"""
import html
import pathlib
import re

from mkdocs.structure.files import File

RESULTS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "results"
PARAGRAPH = re.compile(r"<p>(.*?)</p>", re.S)
ENTRY = re.compile(r"^([A-Za-z_]\w*(?:, [A-Za-z_]\w*)*):\s+(.*)$")


def on_files(files, config):
  for png in sorted(RESULTS.glob("*.png")):
    files.append(File.generated(config, f"results/{png.name}", abs_src_path=str(png)))
  return files


def _entries(paragraph):
  """[(name, text)] when every line of the paragraph is a `name: text` line or an indented continuation."""
  entries = []
  for line in paragraph.split("\n"):
    match = ENTRY.match(line)
    if match:
      entries.append([match.group(1), match.group(2)])
    elif entries and line.startswith(" "):
      entries[-1][1] += " " + line.strip()
    else:
      return None
  return entries if len(entries) >= 2 else None


def _definition_list(match):
  entries = _entries(match.group(1))
  if entries is None:
    return match.group(0)
  items = "".join(f"<dt><code>{html.escape(name)}</code></dt><dd>{text}</dd>" for name, text in entries)
  return f'<dl class="parameters">{items}</dl>'


def on_page_content(content, page, config, files):
  if page.file.src_uri != "api.md":
    return content
  return PARAGRAPH.sub(_definition_list, content)
