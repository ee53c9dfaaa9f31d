"""The installed layout: the tasks ship as `unrolled_es_tasks` with their data, no generic top-level `tasks` module is
installed, and the command line finds the tasks through the `unrolled_es.tasks` entry point."""
import pathlib
from importlib import metadata, resources

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_install_has_no_top_level_tasks_module_and_ships_the_tasks_data():
  """What `pip install` recorded for this project: its top-level import names, its entry points, and the tasks' data
  reachable through the installed import name."""
  dist = metadata.distribution("unrolled_es")
  assert set(dist.read_text("top_level.txt").split()) == {"unrolled_es", "unrolled_es_tasks"}
  found = [e for e in dist.entry_points if e.group == "unrolled_es.tasks"]
  assert [(e.name, e.value) for e in found] == [("unrolled_es_tasks", "unrolled_es_tasks")]
  data = resources.files("unrolled_es_tasks") / "data"
  assert {p.name for p in (ROOT / "tasks" / "data").iterdir() if p.is_file()} <= {p.name for p in data.iterdir()}


def test_the_library_never_imports_the_tasks_package():
  for path in (ROOT / "unrolled_es").rglob("*.py"):
    for line in path.read_text().splitlines():
      words = line.split()
      assert not (words[:1] in (["import"], ["from"]) and words[1].split(".")[0] in ("tasks", "unrolled_es_tasks")), (
          f"{path.relative_to(ROOT)} imports the tasks package: {line.strip()}")
