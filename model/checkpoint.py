"""Reading checkpoints: the one reader of weight files, and weights into a network.

A checkpoint is a plain `torch.save` dict (Lightning's, with our `spec` added, a converted
import, or a published backbone release), always read with `weights_only=True` so that a file
can hold tensors but never run code; or a `.safetensors` file. Every failure is a UserError
naming the file.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import torch
from torch import nn

from model.errors import ArgumentError, UserError

log = logging.getLogger(__name__)
MODULE_PREFIX = "model."  # the network's attribute in the LightningModule
CLASS_HEAD = "transformer_decoder.class_embed.weight"  # (num_classes + 1, hidden_dim)
# What evaluation, export and fine-tuning read from a training checkpoint; the rest of it
# (optimiser, scheduler, loop and data-order state: two thirds of its bytes with AdamW) serves only
# an exact resume.
WEIGHTS_KEYS = ("state_dict", "spec", "epoch", "global_step", "pytorch-lightning_version")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict of a torch.save or .safetensors file; a missing or unreadable file is a UserError naming it."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: checkpoint not found")
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            checkpoint = load_file(path, device="cpu")
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt, pickled or foreign files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserError(f"{path}: not a readable weights-only PyTorch checkpoint ({type(err).__name__}: {reason})") from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path}: expected a checkpoint dict, got {type(checkpoint).__name__}")
    return checkpoint


def without_training_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint with only its WEIGHTS_KEYS: loadable for evaluation, export and fine-tuning, not for resuming."""
    return {key: value for key, value in checkpoint.items() if key in WEIGHTS_KEYS}


def network_state_dict(checkpoint: dict[str, Any], prefixes: Sequence[str] = (MODULE_PREFIX,)) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint, unwrapped from 'state_dict' / 'model', each prefix in turn
    removed (keeping only the keys that have it) where some key has it."""
    state = checkpoint
    for wrapper in ("state_dict", "model"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def read_state_dict(path: str | os.PathLike, prefixes: Sequence[str] = (MODULE_PREFIX,)) -> dict[str, torch.Tensor]:
    """The weights in the file `path` (see network_state_dict); a file with none is a UserError."""
    state = network_state_dict(read_checkpoint(path), prefixes)
    if not state:
        raise UserError(f"{path}: holds no weights (expected tensors, optionally under 'state_dict' or 'model')")
    return state


def load_weights(network: nn.Module, path: str | os.PathLike, *, skip_mismatched: bool = False) -> dict[str, list[str]]:
    """Load the weights of `path` into a Mask2Former `network`.

    skip_mismatched=False (evaluating a trained model): every weight of the network must be in the
    file with its shape. True (fine-tuning): weights of another shape (e.g. the class head of a
    model trained on other classes) and missing ones keep their initialisation, said at WARNING.

    Returns the report: {"missing": [...], "unexpected": [...], "mismatched": [...]}.

    Raises:
        ArgumentError('num_classes'): skip_mismatched is False and the class head has another size.
        UserError: the file is unreadable, fits no weight, or (not skipping) misses or misshapes one.
    """
    state = read_state_dict(path)
    own = network.state_dict()
    mismatched = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    usable = {k: v for k, v in state.items() if k in own and k not in mismatched}
    if not usable:
        raise UserError(f"{path}: no weight in it fits this model (is it a Mask2Former checkpoint of this platform?)")
    report = {
        "missing": sorted(k for k in own if k not in state),
        "unexpected": sorted(k for k in state if k not in own),
        "mismatched": mismatched,
    }
    if not skip_mismatched:
        if CLASS_HEAD in mismatched:
            trained, built = state[CLASS_HEAD].shape[0] - 1, own[CLASS_HEAD].shape[0] - 1
            raise ArgumentError("num_classes", f"{built}, but {path} was trained with {trained} classes; its class head does not fit")
        if mismatched or report["missing"]:
            key = (mismatched or report["missing"])[0]
            found = f"shape {tuple(state[key].shape)}" if key in state else "nothing"
            raise UserError(
                f"{path}: does not fit this model ({len(mismatched)} weights of another shape, {len(report['missing'])} missing); "
                f"e.g. {key}: {found}, expected {tuple(own[key].shape)}"
            )
    network.load_state_dict(usable, strict=False)
    level = logging.WARNING if mismatched or report["missing"] else logging.INFO
    log.log(
        level, "%s: loaded %d tensors; %d missing, %d unexpected, %d skipped for shape (%s)",
        path, len(usable), len(report["missing"]), len(report["unexpected"]), len(mismatched), ", ".join(mismatched[:5]),
    )
    return report


def save_weights(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], spec: dict[str, Any]) -> None:
    """A weights-only checkpoint in the layout training writes (so every action reads it)."""
    torch.save({"state_dict": {MODULE_PREFIX + k: v for k, v in state_dict.items()}, "spec": spec}, path)
