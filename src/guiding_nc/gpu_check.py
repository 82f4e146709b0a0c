"""``python -m guiding_nc.gpu_check``: the command path committed provenance records; the
command lives in :mod:`guiding_nc.experiments.gpu_check`."""
import sys

from .experiments.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
