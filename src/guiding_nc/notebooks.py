"""``python -m guiding_nc.notebooks``: the command path committed provenance records; the
command lives in :mod:`guiding_nc.experiments.notebooks`."""
import sys

from .experiments.notebooks import main

if __name__ == "__main__":
    sys.exit(main())
