"""The LightningModule: what one training step and one validation step of Mask2Former are.

It holds the science (loss, optimiser, schedule, metrics); devices, precision, checkpoints
and how often things run belong to the Trainer its caller configures.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from model.criterion import SetCriterion
from model.cuda_graph import GraphedTraining
from model.errors import NonFiniteLossError
from model.evaluator import SegmentationEvaluator
from model.lr_schedule import lr_multiplier, milestone_steps

# Parameters that get no weight decay besides norms and embeddings (as the original).
NO_DECAY_NAMES = ("relative_position_bias_table", "absolute_pos_embed", "query_feat", "query_embed", "level_embed")
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d, nn.SyncBatchNorm, nn.Embedding)


class Mask2FormerModule(pl.LightningModule):
    """Mask2Former training and validation.

    Args:
        model: the network; forward(normalised images) -> dict of predictions.
        criterion: matcher + losses.
        evaluator: accumulates the validation metrics (reset every validation).
        postprocess: (pred_logits (Q, K+1), pred_masks (Q, h, w), image_size, orig_size) ->
            prediction dict for one image, as the evaluator reads it.
        pixel_mean, pixel_std: per-channel statistics on the 0..1 scale.
        lr, weight_decay, backbone_multiplier: AdamW settings (backbone lr = lr x multiplier).
        lr_scheduler, milestones, gamma, warmup_steps, poly_power, num_epochs: the schedule
            (model.lr_schedule), defined over the run's total steps.
        freeze: module-name prefixes whose parameters are not trained.
        cuda_graph: replay the network's training forward and backward as CUDA graphs where
            that is exact (model.cuda_graph.GraphedTraining; eager elsewhere).
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: SetCriterion,
        evaluator: SegmentationEvaluator,
        postprocess: Callable[..., dict],
        *,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        lr: float,
        weight_decay: float,
        backbone_multiplier: float,
        lr_scheduler: str = "MultiStep",
        milestones: Sequence[float] = (),
        gamma: float = 0.1,
        warmup_steps: int = 0,
        poly_power: float = 0.9,
        num_epochs: int = 1,
        freeze: Sequence[str] = (),
        cuda_graph: bool = False,
    ):
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.evaluator = evaluator
        self.postprocess = postprocess
        # (1, 3, 1, 1) buffers on the 0..255 scale: images arrive as uint8.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.lr, self.weight_decay, self.backbone_multiplier = lr, weight_decay, backbone_multiplier
        self.lr_scheduler_name, self.milestones, self.gamma = lr_scheduler, list(milestones), gamma
        self.warmup_steps, self.poly_power, self.num_epochs = warmup_steps, poly_power, num_epochs
        for name, param in self.model.named_parameters():
            if any(name.startswith(prefix) for prefix in freeze):
                param.requires_grad_(False)
        # a plain object, not a submodule: the network's parameters stay registered once
        self.graphed = GraphedTraining(self.model) if cuda_graph else None

    def forward(self, images: torch.Tensor) -> dict:
        """images: uint8 or float (B, 3, H, W) on the 0..255 scale."""
        return (self.graphed or self.model)((images.float() - self.pixel_mean) / self.pixel_std)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        outputs = self(batch["images"])
        losses = self.criterion(outputs, batch["targets"])
        loss = self.criterion.total_loss(losses)
        if self.trainer.strategy.reduce_boolean_decision(not torch.isfinite(loss).item(), all=False):
            raise NonFiniteLossError(
                f"training loss became {loss.item()} at epoch {self.current_epoch}, step {self.global_step}; "
                "lower train.optim.lr or raise train.clip_grad_norm"
            )
        batch_size = batch["images"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=False)
        for key in ("loss_ce", "loss_mask", "loss_dice"):
            if key in losses:
                self.log(f"train/{key}", losses[key], batch_size=batch_size)
        head_lr = max(group["lr"] for group in self.trainer.optimizers[0].param_groups)
        self.log("lr", head_lr, prog_bar=True, batch_size=batch_size)
        return loss

    def on_train_start(self) -> None:
        # A resumed run trains with this module's lr and weight decay, not the checkpoint's: the
        # same values on an exact resume, new ones when a PBT clone continues with mutated values.
        optimizer = self.trainer.optimizers[0]
        scheduler = self.trainer.lr_scheduler_configs[0].scheduler
        for i, (group, wanted) in enumerate(zip(optimizer.param_groups, self.parameter_groups())):
            group["initial_lr"] = scheduler.base_lrs[i] = wanted["lr"]
            group["weight_decay"] = wanted["weight_decay"]
            group["lr"] = wanted["lr"] * scheduler.lr_lambdas[i](scheduler.last_epoch)

    def on_validation_epoch_start(self) -> None:
        self.evaluator.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        outputs = self(batch["images"])
        for i, ground_truth in enumerate(batch["ground_truths"]):
            prediction = self.postprocess(
                outputs["pred_logits"][i], outputs["pred_masks"][i], batch["image_sizes"][i], batch["orig_sizes"][i]
            )
            self.evaluator.update(prediction, ground_truth)

    def on_validation_epoch_end(self) -> None:
        self.evaluator.sync(self.trainer.strategy)
        metrics = self.evaluator.compute()
        headline = {f"val/{k}": v for k, v in metrics.items() if "/" not in k}
        self.log_dict(headline, prog_bar=False, sync_dist=False, batch_size=1)
        self.validation_metrics = metrics

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        # Under FSDP each rank holds a shard of the gradients: the norm must be reduced across
        # ranks, which the sharded module's own clip_grad_norm_ does (Lightning's FSDP precision
        # plugin refuses norm clipping instead).
        if gradient_clip_val and gradient_clip_algorithm == "norm" and isinstance(self.trainer.strategy, FSDPStrategy):
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> dict:
        # PyTorch's default multi-tensor (foreach) update: Lightning refuses to clip gradients
        # under mixed precision for fused=True, which unscales them itself.
        optimizer = torch.optim.AdamW(self.parameter_groups(), lr=self.lr, weight_decay=self.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = max(total // max(self.num_epochs, 1), 1)
        multiplier = lr_multiplier(
            self.lr_scheduler_name,
            total,
            warmup_steps=self.warmup_steps,
            milestones=milestone_steps(self.milestones, self.num_epochs, steps_per_epoch),
            gamma=self.gamma,
            poly_power=self.poly_power,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Backbone at lr x multiplier; no weight decay on norms, embeddings and position tables."""
        no_decay: set[str] = set()
        for module_name, module in self.model.named_modules():
            if isinstance(module, NORM_TYPES):
                no_decay.update(f"{module_name}.{p}" if module_name else p for p, _ in module.named_parameters(recurse=False))
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            is_backbone = name.startswith("backbone.")
            decays = name not in no_decay and not any(key in name for key in NO_DECAY_NAMES)
            groups.setdefault((is_backbone, decays), []).append(param)
        return [
            {
                "params": params,
                "lr": self.lr * (self.backbone_multiplier if is_backbone else 1.0),
                "weight_decay": self.weight_decay if decays else 0.0,
                "name": f"{'backbone' if is_backbone else 'head'}{'' if decays else '_no_decay'}",
            }
            for (is_backbone, decays), params in sorted(groups.items())
        ]
