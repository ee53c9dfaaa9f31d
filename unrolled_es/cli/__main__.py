"""`python -m unrolled_es.cli ...` is `unrolled-es ...`."""
import sys

from unrolled_es.cli import main

sys.exit(main())
