"""``python -m guiding_nc.experiments.reproduce``: the command path committed provenance records;
the grid runner lives in :mod:`guiding_nc.experiments.runner` (the experiment files in
:mod:`guiding_nc.experiments.spec`, the result files in :mod:`guiding_nc.experiments.store`)."""
import sys

from .runner import main

if __name__ == "__main__":
    sys.exit(main())
