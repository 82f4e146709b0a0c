"""``python -m guiding_nc.bench``: the command path committed provenance records; the
command lives in :mod:`guiding_nc.experiments.bench`."""
import sys

from .experiments.bench import main

if __name__ == "__main__":
    sys.exit(main())
