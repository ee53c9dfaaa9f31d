"""Prints docs/composition.md, the composition matrix, from the table the tests run (tests/composition_table.py):

    python docs/composition_matrix.py > docs/composition.md

tests/test_composition.py checks that the committed page equals this output, so the page cannot drift from what
is tested."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

import composition_table  # noqa: E402

if __name__ == "__main__":
  sys.stdout.write(composition_table.markdown())
