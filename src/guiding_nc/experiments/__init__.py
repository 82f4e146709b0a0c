"""Reproduction commands: each module is ``python -m guiding_nc.experiments.<name>`` and writes
tidy results with provenance under ``data/results/<name>/``."""
