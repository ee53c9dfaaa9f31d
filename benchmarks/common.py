"""What the benchmark commands share: a preset option, and writing a result as JSON beside its plot."""
import argparse
import json
import os


def preset_arguments(doc, presets, argv=None):
  """--preset NAME (default "default"), --quick (= --preset quick) and --out DIR."""
  parser = argparse.ArgumentParser(description=doc.split("\n")[0])
  parser.add_argument("--preset", choices=sorted(presets), default="default")
  parser.add_argument("--quick", action="store_const", dest="preset", const="quick")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  return parser.parse_args(argv)


def write_result(result, out_dir, stem, preset, plot):
  """<stem>[_<preset>].json and .png in out_dir (no suffix for the default preset); returns the JSON's path."""
  os.makedirs(out_dir, exist_ok=True)
  suffix = "" if preset == "default" else f"_{preset}"
  path = os.path.join(out_dir, f"{stem}{suffix}.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  plot(result, path[:-5] + ".png")
  print(f"wrote {path} in {result['seconds']} s")
  return path
