"""``python -m guiding_nc.experiments.reduction_mappings``: the command path committed provenance records; the
command lives in :mod:`guiding_nc.research.reduction_mappings`."""
import sys

from ..research.reduction_mappings import main

if __name__ == "__main__":
    sys.exit(main())
