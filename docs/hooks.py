"""mkdocs hook: the benchmark figures in benchmarks/results/ become site files under results/, so the pages show
the figures the benchmark commands made instead of copies that would go stale."""
import pathlib

from mkdocs.structure.files import File

RESULTS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def on_files(files, config):
  for png in sorted(RESULTS.glob("*.png")):
    files.append(File.generated(config, f"results/{png.name}", abs_src_path=str(png)))
  return files
