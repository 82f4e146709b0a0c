"""Training checkpoints: what they hold, and loading them without running anything in them.

A checkpoint is written atomically by the trainer (model, optimiser, scheduler, AMP scaler,
epoch, history and every RNG state) and read back with ``torch.load(weights_only=True)``:
tensors, numbers, strings, lists and dicts only, so a crafted file cannot execute code.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np
import torch

from .config import ConfigError

__all__ = ["CHECKPOINT_NAME", "CHECKPOINT_FORMAT", "CheckpointError", "rng_state", "set_rng_state",
           "read_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "guiding_nc.checkpoint/2"  # 2: RNG states as tensors, loadable with weights_only


class CheckpointError(ConfigError):
    """A checkpoint that cannot be (or must not be) loaded: truncated, foreign, or a pickle."""


def rng_state(device: torch.device) -> Dict[str, Any]:
    """Every RNG's state as tensors and plain numbers, so a checkpoint loads with
    ``torch.load(weights_only=True)`` (no pickled objects)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64),
                        "gauss": None if gauss is None else float(gauss)},
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError):
            pass


def read_checkpoint(path: Union[str, os.PathLike], map_location=None) -> Dict[str, Any]:
    """A ``guiding_nc`` checkpoint, loaded without unpickling anything but tensors, numbers,
    strings, lists and dicts (``weights_only=True``): a file that holds other objects -- a crafted
    pickle, say -- is refused before any of its code can run.  Every failure is a
    :class:`CheckpointError` naming the file."""
    import pickle
    import zipfile

    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        text = str(exc)
        import re

        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:  # a well-formed file asking for a callable: the signature of a pickle payload
            raise CheckpointError(f"refused to load {path}: it asks to import {found.group(1)}, and a checkpoint holds "
                                  "only tensors and plain data; delete it or pass overwrite=true to start the run "
                                  "again") from None
        raise CheckpointError(f"cannot read the checkpoint {path} ({type(exc).__name__}); it is truncated, empty or "
                              "not a checkpoint: delete it or pass overwrite=true to start the run again") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint (format "
                              f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}); "
                              "delete it or pass overwrite=true to start the run again")
    return state
