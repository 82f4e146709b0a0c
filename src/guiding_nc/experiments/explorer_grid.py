"""``python -m guiding_nc.experiments.explorer_grid``: the command path committed provenance records; the
command lives in :mod:`guiding_nc.companions.explorer_grid`."""
import sys

from ..companions.explorer_grid import main

if __name__ == "__main__":
    sys.exit(main())
