"""Every output is written through `atomic_write`: to a temporary name in the same folder, then renamed, so a reader
never sees a half-written file and a failed write leaves the previous file intact."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(fh)` on a temporary file beside `path`, then rename it to `path` (mode as for a new file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; outputs follow the user's umask like any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    return atomic_write(path, lambda fh: torch.save(obj, fh))


class CheckpointError(ValueError):
    """A checkpoint file is unreadable or does not fit the model; the message names the file."""


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by the engine (plain tensors and containers, loaded with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # EOFError, pickle and zip errors, RuntimeError from the stream reader...
        # torch's own first line for a foreign file is advice about weights_only, which would mislead here
        first = "" if "weights_only" in str(err) else f": {str(err).strip().splitlines()[0]}" if str(err).strip() else ""
        raise CheckpointError(f"{path}: not a readable checkpoint (empty, truncated, corrupt or not written by "
                              f"torch.save; {type(err).__name__}{first})") from None
    if not isinstance(state, dict) or "model" not in state:
        kind = f"a dict with keys {sorted(state)[:8]}" if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: holds {kind}, not a checkpoint of this project (a dict with 'model')")
    return state


def load_model_state(model: torch.nn.Module, state: dict, path: str | Path) -> None:
    """`model.load_state_dict(state["model"])`, naming the file and what does not fit when it fails."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise CheckpointError(f"{path}: does not fit the model of these parameters (another method, row or "
                              f"width?): {detail[:600]}") from None
