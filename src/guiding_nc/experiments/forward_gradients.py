"""``python -m guiding_nc.experiments.forward_gradients``: the command path committed provenance records; the
command lives in :mod:`guiding_nc.research.forward_gradients.experiment`."""
import sys

from ..research.forward_gradients.experiment import main

if __name__ == "__main__":
    sys.exit(main())
