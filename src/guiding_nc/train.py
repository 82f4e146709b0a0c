"""``python -m guiding_nc.train``: the command path committed provenance records; the
command lives in :mod:`guiding_nc.training.train_command`."""
import sys

from .training.train_command import main

if __name__ == "__main__":
    sys.exit(main())
