"""Reading checkpoints: weights into a network (skipping what does not fit), and the spec they carry.

Checkpoints are plain `torch.save` dicts (Lightning's, with our `spec` added, or a converted
import) and are always read with `weights_only=True`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from model.errors import UserError

log = logging.getLogger(__name__)
MODULE_PREFIX = "model."  # the network's attribute in the LightningModule


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict; a missing or unreadable file is a UserError naming it."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or foreign files
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path}: expected a checkpoint dict, got {type(checkpoint).__name__}")
    return checkpoint


def network_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's weights, whether saved by Lightning (prefixed) or as a bare state dict."""
    state = checkpoint.get("state_dict", checkpoint.get("model", checkpoint))
    if any(k.startswith(MODULE_PREFIX) for k in state):
        state = {k[len(MODULE_PREFIX) :]: v for k, v in state.items() if k.startswith(MODULE_PREFIX)}
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_weights(network: nn.Module, path: str | os.PathLike) -> dict[str, list[str]]:
    """Load the weights of `path` into `network`, skipping missing keys and shape mismatches.

    Returns and logs the report: {"missing": [...], "unexpected": [...], "mismatched": [...]}.
    """
    state = network_state_dict(read_checkpoint(path))
    own = network.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    usable = {k: v for k, v in state.items() if k in own and k not in mismatched}
    if not usable:
        raise UserError(f"{path}: no weight in it fits this model (is it a Mask2Former checkpoint of this platform?)")
    result = network.load_state_dict(usable, strict=False)
    report = {
        "missing": sorted(k for k in result.missing_keys if k not in mismatched),
        "unexpected": sorted(k for k in state if k not in own),
        "mismatched": sorted(mismatched),
    }
    log.info(
        "%s: loaded %d tensors; %d missing, %d unexpected, %d skipped for shape (%s)",
        path, len(usable), len(report["missing"]), len(report["unexpected"]), len(mismatched), ", ".join(mismatched[:5]),
    )
    return report


def save_weights(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], spec: dict[str, Any]) -> None:
    """A weights-only checkpoint in the layout training writes (so every action reads it)."""
    torch.save({"state_dict": {MODULE_PREFIX + k: v for k, v in state_dict.items()}, "spec": spec}, path)
