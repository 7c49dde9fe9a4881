"""The whole experiment spec as dataclasses: keys, defaults, bounds and AutoML metadata.

Key names and defaults follow the reference Mask2Former spec tree; where we differ, a comment
beside the field says why. One `ExperimentConfig` serves every action: each action reads its
own section plus `model`, `dataset` and `results_dir`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from automl.spec.fields import param, section
from model.tasks import TASKS

MODES = list(TASKS)
DATASET_TYPES = ["coco", "ade", "coco_panoptic"]


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
@dataclass
class SwinConfig:
    type: str = param(
        "tiny",
        "Swin size. tiny/small/base/large fix embed_dim, depths and num_heads to the published "
        "architectures; 'custom' builds from those three fields as written.",
        valid_options=["tiny", "small", "base", "large", "custom"],
        popular=True,
    )
    embed_dim: int = param(96, "Channels of the first stage (custom Swin only).", valid_min=8, valid_max=512, math_cond="/ 8")
    depths: List[int] = param([2, 2, 6, 2], "Blocks per stage (custom Swin only).", valid_min=1, valid_max=64, automl_enabled=False, length=4)
    num_heads: List[int] = param(
        [3, 6, 12, 24], "Attention heads per stage (custom Swin only).", valid_min=1, valid_max=128, automl_enabled=False, length=4
    )
    patch_size: int = param(4, "Patch size of the stem. Mask2Former's strides need 4.", valid_options=[4])
    window_size: int = param(7, "Attention window size.", valid_min=1, valid_max=64)
    mlp_ratio: float = param(4.0, "Hidden width of the MLPs relative to the embedding.", valid_min=1.0, valid_max=16.0)
    qkv_bias: bool = param(True, "Bias in the query/key/value projections.")
    qk_scale: Optional[float] = param(None, "Unused (kept for compatibility with reference specs).")
    drop_rate: float = param(0.0, "Dropout after the MLPs and projections.", valid_min=0.0, valid_max=1.0)
    attn_drop_rate: float = param(0.0, "Dropout on attention weights.", valid_min=0.0, valid_max=1.0)
    drop_path_rate: float = param(
        0.3, "Stochastic depth rate (linearly increasing over blocks).", valid_min=0.0, valid_max=0.9, automl_enabled=True
    )
    ape: bool = param(False, "Absolute position embedding (the original Swin for Mask2Former uses none).")
    patch_norm: bool = param(True, "LayerNorm after patch embedding.")
    out_indices: List[int] = param([0, 1, 2, 3], "Stages whose outputs feed the pixel decoder.", valid_min=0, valid_max=3, automl_enabled=False)
    pretrain_img_size: int = param(384, "Image size of the pretrained weights (for position tables).", valid_min=32, valid_max=2048)
    use_checkpoint: bool = param(False, "Activation checkpointing inside the backbone (less memory, slower).")
    out_features: List[str] = param(["res2", "res3", "res4", "res5"], "Names of the backbone outputs.", automl_enabled=False)


@dataclass
class EfficientViTConfig:
    """Accepted so reference specs load; this platform builds Swin and ResNet-50 backbones."""

    name: str = param("l0", "EfficientViT variant (not built by this platform).")
    out_indices: List[int] = param([1, 2, 3], "Stages used.", automl_enabled=False)
    pretrain_img_size: int = param(384, "Image size of the pretrained weights.")
    use_checkpoint: bool = param(False, "Activation checkpointing.")
    out_features: List[str] = param(["res2", "res3", "res4", "res5"], "Names of the backbone outputs.", automl_enabled=False)


@dataclass
class BackboneConfig:
    type: str = param("swin", "Backbone family.", valid_options=["swin", "resnet50"], popular=True)
    pretrained_weights: str = param(
        "", "Local file with ImageNet weights for the backbone (official Swin release or timm format). Never downloaded.",
        is_path=True,
    )
    swin: SwinConfig = section(SwinConfig, "Swin Transformer settings.")
    efficientvit: EfficientViTConfig = section(EfficientViTConfig, "Accepted for compatibility; not built.")


@dataclass
class SemSegHeadConfig:
    common_stride: int = param(4, "Stride of the mask features.", valid_options=[4, 8])
    transformer_enc_layers: int = param(6, "Deformable-attention encoder layers in the pixel decoder.", valid_min=0, valid_max=12, popular=True, automl_enabled=True)
    convs_dim: int = param(256, "Channels of the pixel decoder (GroupNorm(32) needs a multiple of 32).", valid_min=32, valid_max=1024, math_cond="/ 32", popular=True)
    mask_dim: int = param(256, "Channels of the per-pixel mask embeddings.", valid_min=16, valid_max=1024, math_cond="/ 8", popular=True)
    deformable_transformer_encoder_in_features: List[str] = param(
        ["res3", "res4", "res5"], "Backbone outputs attended by the deformable encoder.", automl_enabled=False
    )
    # Reference default 200 is a placeholder; the synthetic demo spec sets its own count.
    num_classes: int = param(200, "Number of classes the model predicts (no-object excluded).", valid_min=1, valid_max=10000)
    norm: str = param("GN", "Normalisation in the pixel decoder.", valid_options=["GN"])
    # Ours: the original runs the whole pixel decoder in float32; this lets the FPN take the training precision.
    fpn_autocast: bool = param(
        False,
        "The FPN convolutions follow train.precision's autocast instead of float32: faster and avoids cuDNN's float32 FFT "
        "plan whose workspace grew to 33 GiB at 512x512 batch 8; accuracy evidence in the README.",
        automl_enabled=False,
    )


@dataclass
class MaskFormerConfig:
    dropout: float = param(0.0, "Dropout in the pixel decoder's deformable encoder (as the original).", valid_min=0.0, valid_max=0.5)
    nheads: int = param(8, "Attention heads of the transformer decoder.", valid_min=1, valid_max=64, math_cond="^ 2", popular=True)
    num_object_queries: int = param(
        100, "Object queries (the most segments one image can hold).", valid_min=1, valid_max=1000, popular=True, automl_enabled=True, automl_default=True
    )
    hidden_dim: int = param(
        256, "Width of the transformer decoder.", valid_min=64, valid_max=1024, math_cond="/ 8", popular=True, automl_enabled=True, automl_default=True
    )
    dim_feedforward: int = param(
        2048, "Hidden width of the decoder FFNs.", valid_min=64, valid_max=8192, math_cond="/ 8",
        depends_on=[">= model.mask_former.hidden_dim"], automl_enabled=True,
    )
    # dec_layers counts the prediction from the initial queries: 10 means 9 decoder layers.
    dec_layers: int = param(
        10, "Decoder predictions (the initial one plus one per decoder layer).", valid_min=1, valid_max=16, automl_enabled=True, automl_default=True
    )
    pre_norm: bool = param(False, "Pre-norm decoder layers (the original uses post-norm).")
    class_weight: float = param(2.0, "Weight of the classification loss and matching cost.", valid_min=0.0, valid_max=20.0, popular=True, automl_enabled=True)
    dice_weight: float = param(5.0, "Weight of the dice loss and matching cost.", valid_min=0.0, valid_max=20.0, popular=True, automl_enabled=True)
    mask_weight: float = param(5.0, "Weight of the mask BCE loss and matching cost.", valid_min=0.0, valid_max=20.0, popular=True, automl_enabled=True)
    train_num_points: int = param(12544, "Points sampled per mask for matching and the mask losses.", valid_min=16, valid_max=200000)
    oversample_ratio: float = param(3.0, "Oversampling of candidate points before importance sampling.", valid_min=1.0, valid_max=10.0)
    importance_sample_ratio: float = param(0.75, "Fraction of points chosen by uncertainty.", valid_min=0.0, valid_max=1.0, popular=True)
    deep_supervision: bool = param(True, "Apply the losses to every decoder prediction.")
    no_object_weight: float = param(0.1, "Classification weight of the no-object class.", valid_min=0.0, valid_max=1.0, automl_enabled=True)


@dataclass
class ModelConfig:
    export: bool = param(False, "Build the model for export (set by the export action).")
    backbone: BackboneConfig = section(BackboneConfig, "Backbone settings.")
    sem_seg_head: SemSegHeadConfig = section(SemSegHeadConfig, "Pixel decoder settings.")
    mask_former: MaskFormerConfig = section(MaskFormerConfig, "Transformer decoder and loss settings.")
    mode: str = param("panoptic", "Which segmentation the model outputs.", valid_options=MODES, popular=True)
    object_mask_threshold: float = param(0.4, "Panoptic: minimum query score to keep a segment.", valid_min=0.0, valid_max=1.0)
    overlap_threshold: float = param(0.5, "Panoptic: minimum kept/original area to keep a segment.", valid_min=0.0, valid_max=1.0)
    test_topk_per_image: int = param(100, "Instance: detections kept per image.", valid_min=1, valid_max=10000)


# ---------------------------------------------------------------------------------------------
# dataset
# ---------------------------------------------------------------------------------------------
@dataclass
class SplitConfig:
    type: str = param("ade", "Annotation format of this split.", valid_options=DATASET_TYPES, popular=True)
    name: str = param("", "A name for the split (shown in logs).")
    panoptic_json: str = param("", "coco_panoptic: the panoptic annotations JSON.", is_path=True)
    instance_json: str = param("", "coco: the instance annotations JSON (coco_panoptic: optional).", is_path=True)
    img_dir: str = param("", "Folder (or .tar/.tar.gz archive) of images.", is_path=True)
    panoptic_dir: str = param("", "coco_panoptic: folder (or archive) of panoptic PNGs.", is_path=True)
    root_dir: str = param("", "ade: dataset root; images/ and masks/ below it unless annot_file is set.", is_path=True)
    annot_file: str = param("", "ade: JSONL of {\"img\": ..., \"segm\": ...} relative to root_dir.")
    batch_size: int = param(1, "Images per batch per device.", valid_min=1, valid_max=1024, math_cond="> 0")
    num_workers: int = param(1, "Data-loading worker processes.", valid_min=0, valid_max=128)
    target_size: List[int] = param([], "Unused (kept for compatibility with reference specs).", automl_enabled=False)


@dataclass
class AugmentationConfig:
    # Our addition: 'lsj' (large-scale jitter) next to the reference's resize-then-crop.
    train_augmentation: str = param(
        "resize_crop", "Training augmentation: shortest-edge resize then crop, or large-scale jitter.", valid_options=["resize_crop", "lsj"], automl_enabled=True
    )
    train_min_size: List[int] = param([640], "Shortest-edge sizes to pick from when training.", valid_min=32, valid_max=8192, automl_enabled=False)
    train_max_size: int = param(
        2560, "Longest edge after the training resize.", valid_min=32, valid_max=8192, math_cond="/ 32", automl_enabled=True
    )
    train_crop_size: List[int] = param([640, 640], "Training crop [H, W].", valid_min=32, valid_max=8192, automl_enabled=False, length=2)
    # Our addition: the large-scale-jitter range (fixed at [0.1, 2.0] in the LSJ paper), searchable.
    lsj_min_scale: float = param(
        0.1, "lsj: smallest resize, as a multiple of the crop size.", valid_min=0.05, valid_max=1.0,
        depends_on=["dataset.augmentation.train_augmentation == lsj"], automl_enabled=True,
    )
    lsj_max_scale: float = param(
        2.0, "lsj: largest resize, as a multiple of the crop size.", valid_min=1.0, valid_max=4.0,
        depends_on=["dataset.augmentation.train_augmentation == lsj"], automl_enabled=True,
    )
    # Test sizes change how the metric is measured, so the search must not tune them.
    test_min_size: int = param(640, "Shortest edge at test time.", valid_min=32, valid_max=8192, automl_enabled=False)
    test_max_size: int = param(
        640, "Longest edge at test time.", valid_min=32, valid_max=8192, depends_on=[">= dataset.augmentation.test_min_size"], automl_enabled=False
    )


@dataclass
class QuantCalibrationConfig:
    images_dir: str = param("", "Folder (or archive) of calibration images for static quantisation.", is_path=True)


@dataclass
class DatasetConfig:
    train: SplitConfig = section(SplitConfig, "Training split.")
    val: SplitConfig = section(SplitConfig, "Validation split.")
    test: SplitConfig = section(SplitConfig, "Test split (inference).")
    pin_memory: bool = param(True, "Pin host memory in the data loaders.")
    # Bounded to 0..1 so statistics on the 0..255 scale (detectron2's convention) are refused, not silently wrong.
    pixel_mean: List[float] = param(
        [0.485, 0.456, 0.406], "Per-channel mean (0..1 scale) for normalisation.", valid_min=0.0, valid_max=1.0, automl_enabled=False, length=3
    )
    pixel_std: List[float] = param(
        [0.229, 0.224, 0.225], "Per-channel std (0..1 scale) for normalisation.", valid_min=0.0, valid_max=1.0, math_cond="> 0.0",
        automl_enabled=False, length=3,
    )
    augmentation: AugmentationConfig = section(AugmentationConfig, "Augmentation settings.")
    contiguous_id: bool = param(False, "Map label-map ids to 0..N-1 (then num_classes must be N).")
    label_map: str = param("", "JSON list of {id, name, isthing, color} categories.", is_path=True)
    quant_calibration_dataset: QuantCalibrationConfig = section(QuantCalibrationConfig, "Calibration data for quantize.")


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------
@dataclass
class CudnnConfig:
    benchmark: bool = param(False, "cudnn.benchmark.")
    deterministic: bool = param(True, "cudnn.deterministic.")


@dataclass
class OptimConfig:
    type: str = param("AdamW", "Optimiser.", valid_options=["AdamW"])
    monitor_name: str = param("train_loss", "Loss to monitor.", valid_options=["val_loss", "train_loss"])
    # Searched on a log scale within bounds a practitioner uses; the reference searches [0, 1] linearly.
    lr: float = param(
        2e-4, "Base learning rate.", valid_min=1e-6, valid_max=1e-2, math_cond="> 0.0", log_scale=True, popular=True,
        automl_enabled=True, automl_default=True,
    )
    backbone_multiplier: float = param(
        0.1, "Backbone learning rate = lr x this.", valid_min=0.01, valid_max=1.0, math_cond="> 0.0", log_scale=True, popular=True,
        automl_enabled=True, automl_default=True,
    )
    # AdamW takes betas, not a momentum: searching this would only burn trials.
    momentum: float = param(0.9, "Unused by AdamW (kept for compatibility).", valid_min=0.0, valid_max=1.0, automl_enabled=False)
    weight_decay: float = param(
        0.05, "AdamW weight decay (not applied to norms, embeddings, position tables).", valid_min=1e-5, valid_max=1.0,
        math_cond="> 0.0", log_scale=True, popular=True, automl_enabled=True, automl_default=True,
    )
    lr_scheduler: str = param(
        "MultiStep", "Learning-rate schedule over the run's steps.", valid_options=["MultiStep", "Warmuppoly", "Cosine"],
        option_weights=[0.4, 0.2, 0.4], automl_enabled=True,
    )
    milestones: List[int] = param(
        [88, 96], "MultiStep: epochs at which lr is multiplied by gamma (scaled to num_epochs when the last one exceeds it).",
        valid_min=0, valid_max=100000, automl_enabled=False,
    )
    gamma: float = param(
        0.1, "MultiStep: lr decay factor at each milestone.", valid_min=0.001, valid_max=1.0, math_cond="> 0.0",
        depends_on=["train.optim.lr_scheduler == MultiStep"], automl_enabled=True,
    )
    warmup_iters: int = param(0, "Linear warm-up steps (all schedules).", valid_min=0, valid_max=1000000)
    poly_power: float = param(0.9, "Warmuppoly: power of the polynomial decay.", valid_min=0.1, valid_max=5.0, depends_on=["train.optim.lr_scheduler == Warmuppoly"])


@dataclass
class TrainConfig:
    num_gpus: int = param(1, "GPUs per node (ignored on a machine without GPUs).", valid_min=1, valid_max=1024, popular=True)
    gpu_ids: List[int] = param([0], "GPU indices to use.", valid_min=0, valid_max=1023, popular=True, automl_enabled=False)
    num_nodes: int = param(1, "Nodes (multi-node when > 1).", valid_min=1, valid_max=1024, popular=True)
    seed: int = param(1234, "Random seed (-1 picks one).", valid_min=-1, valid_max=2**31 - 1)
    cudnn: CudnnConfig = section(CudnnConfig, "cuDNN flags.")
    num_epochs: int = param(10, "Training epochs.", valid_min=1, valid_max=100000, popular=True)
    iters_per_epoch: Optional[int] = param(None, "Cap on steps per epoch (default: the whole training set).", valid_min=1, valid_max=10**9)
    checkpoint_interval: int = param(1, "Save a checkpoint every this many epochs (or steps).", valid_min=1, valid_max=10**9, popular=True)
    checkpoint_interval_unit: str = param("epoch", "Unit of checkpoint_interval.", valid_options=["epoch", "step"])
    validation_interval: int = param(1, "Validate every this many epochs.", valid_min=1, valid_max=100000, popular=True)
    resume_training_checkpoint_path: str = param("", "Checkpoint to resume from exactly (weights, optimiser, schedule, data order).", is_path=True)
    results_dir: str = param("", "Where training writes (default: <results_dir>/train).", is_path=True)
    freeze: List[str] = param([], "Module name prefixes to freeze, e.g. [\"backbone\"].", automl_enabled=False)
    pretrained_model_path: str = param("", "Checkpoint whose weights initialise the model (weights only).", is_path=True)
    clip_grad_norm: float = param(
        0.1, "Clip the full-model gradient L2 norm to this (0 disables).", valid_min=0.0, valid_max=1000.0, automl_enabled=True
    )
    clip_grad_type: str = param("full", "Gradient clipping over the full model.", valid_options=["full"])
    is_dry_run: bool = param(False, "Build everything and run one step, then stop.")
    optim: OptimConfig = section(OptimConfig, "Optimiser and schedule.")
    # bf16 is our addition (bf16-mixed); fp16 means fp16-mixed.
    precision: str = param("fp32", "Numeric precision.", valid_options=["fp32", "fp16", "bf16"])
    # Ours: TF32 is off by default (strict float32 matmuls and convolutions); on, fp32 steps run on tensor cores.
    allow_tf32: bool = param(False, "Let float32 matmuls and convolutions use TF32 on GPUs that have it (faster, about 1e-3 relative error).")
    distributed_strategy: str = param("ddp", "Multi-GPU strategy.", valid_options=["ddp", "fsdp"])
    activation_checkpoint: bool = param(False, "Recompute activations in backward to save memory.")
    # Ours: off until the Lightning loop with graphs has run on an 80 GB card (benchmarks/NOTES.md).
    cuda_graph: bool = param(False, "Replay the network's training forward and backward as CUDA graphs (one GPU, fixed crop, the short last batch dropped; eager where not exact).")
    use_distributed_sampler: bool = param(False, "Let Lightning insert distributed samplers.")


# ---------------------------------------------------------------------------------------------
# other actions
# ---------------------------------------------------------------------------------------------
@dataclass
class EvaluateConfig:
    checkpoint: str = param("", "Checkpoint to evaluate.", is_path=True)
    trt_engine: str = param("", "TensorRT engine to evaluate instead of a checkpoint.", is_path=True)
    results_dir: str = param("", "Where evaluate writes (default: <results_dir>/evaluate).", is_path=True)
    num_gpus: int = param(1, "GPUs.", valid_min=1, valid_max=1024, popular=True)
    gpu_ids: List[int] = param([0], "GPU indices.", valid_min=0, valid_max=1023, popular=True, automl_enabled=False)
    num_nodes: int = param(1, "Nodes.", valid_min=1, valid_max=1024, popular=True)
    batch_size: int = param(-1, "Batch size (-1: dataset.val.batch_size).", valid_min=-1, valid_max=1024)


@dataclass
class InferenceConfig:
    checkpoint: str = param("", "Checkpoint to run.", is_path=True)
    trt_engine: str = param("", "TensorRT engine to run instead of a checkpoint.", is_path=True)
    results_dir: str = param("", "Where inference writes (default: <results_dir>/inference).", is_path=True)
    num_gpus: int = param(1, "GPUs.", valid_min=1, valid_max=1024, popular=True)
    gpu_ids: List[int] = param([0], "GPU indices.", valid_min=0, valid_max=1023, popular=True, automl_enabled=False)
    num_nodes: int = param(1, "Nodes.", valid_min=1, valid_max=1024, popular=True)
    batch_size: int = param(-1, "Batch size (-1: dataset.test.batch_size).", valid_min=-1, valid_max=1024)


@dataclass
class ExportConfig:
    checkpoint: str = param("", "Checkpoint to export.", is_path=True)
    onnx_file: str = param("", "Output ONNX file (default: <results_dir>/export/model.onnx).", is_path=True)
    results_dir: str = param("", "Where export writes.", is_path=True)
    gpu_id: int = param(0, "GPU used for export.", valid_min=0, valid_max=1023)
    on_cpu: bool = param(False, "Export on the CPU.")
    input_channel: int = param(3, "Input channels.", valid_options=[3])
    input_width: int = param(960, "Input width.", valid_min=32, valid_max=8192, math_cond="/ 32")
    input_height: int = param(544, "Input height.", valid_min=32, valid_max=8192, math_cond="/ 32")
    opset_version: int = param(17, "ONNX opset.", valid_min=11, valid_max=23)
    batch_size: int = param(-1, "Batch size (-1: dynamic).", valid_min=-1, valid_max=1024)
    verbose: bool = param(False, "Verbose export log.")
    # Ours: the PyTorch-native compiled deployment, for machines without TensorRT.
    format: str = param(
        "onnx", "onnx: a plugin-free ONNX file; aoti: a torch.export + AOTInductor package (.pt2, written beside onnx_file).",
        valid_options=["onnx", "aoti"],
    )


@dataclass
class CalibrationConfig:
    cal_cache_file: str = param("", "INT8 calibration cache, read when it exists, else written (default: <trt_engine>.cal).", is_path=True)
    cal_batch_size: int = param(1, "Calibration images per batch.", valid_min=1, valid_max=1024)
    cal_batches: int = param(10, "Calibration batches (from dataset.quant_calibration_dataset.images_dir).", valid_min=1, valid_max=100000)


@dataclass
class TensorRTConfig:
    # INT8 is ours (calibrated on dataset.quant_calibration_dataset); lower case as the reference deploy templates write it.
    data_type: str = param("FP32", "Engine precision.", valid_options=["FP32", "FP16", "INT8", "fp32", "fp16", "int8"])
    workspace_size: int = param(1024, "Workspace in MiB.", valid_min=0, valid_max=1048576)
    min_batch_size: int = param(1, "Minimum batch of the optimisation profile.", valid_min=1, valid_max=1024, popular=True)
    opt_batch_size: int = param(1, "Optimal batch of the optimisation profile.", valid_min=1, valid_max=1024, popular=True)
    max_batch_size: int = param(1, "Maximum batch of the optimisation profile.", valid_min=1, valid_max=1024, popular=True)
    layers_precision: List[str] = param([], "Per-layer precision overrides (layer:precision).", automl_enabled=False)
    calibration: CalibrationConfig = section(CalibrationConfig, "INT8 calibration.")


@dataclass
class GenTrtEngineConfig:
    results_dir: str = param("", "Where gen_trt_engine writes.", is_path=True)
    gpu_id: int = param(0, "GPU used.", valid_min=0, valid_max=1023, popular=True)
    onnx_file: str = param("", "Input ONNX file.", is_path=True)
    trt_engine: str = param("", "Output engine file.", is_path=True)
    timing_cache: str = param("", "TensorRT timing cache file.", is_path=True)
    batch_size: int = param(-1, "Batch size (-1: dynamic).", valid_min=-1, valid_max=1024, popular=True)
    verbose: bool = param(False, "Verbose build log.")
    tensorrt: TensorRTConfig = section(TensorRTConfig, "TensorRT builder settings.")


@dataclass
class QuantizeConfig:
    # 'onnx' is ours: ONNX Runtime's static QDQ quantisation, no NVIDIA package needed.
    backend: str = param(
        "torchao", "Quantisation backend: torchao (PyTorch checkpoint), onnx (ONNX Runtime QDQ on an ONNX file), modelopt.* (needs nvidia-modelopt).",
        valid_options=["modelopt.pytorch", "torchao", "modelopt.onnx", "onnx"],
    )
    # 'dynamic_ptq' is ours: int8 weights and int8 activations quantised per token at run time (torchao).
    mode: str = param(
        "weight_only_ptq", "static_ptq: int8 weights and calibrated int8 activations (onnx, modelopt.*); weight_only_ptq: int8 weights; "
        "dynamic_ptq: int8 weights and dynamically quantised int8 activations (torchao).",
        valid_options=["static_ptq", "weight_only_ptq", "dynamic_ptq"],
    )
    algorithm: str = param("minmax", "Calibration algorithm.", valid_options=["minmax", "max", "entropy", "awq_clip", "awq_lite", "awq_full", "rtn_dq"])
    layers: List[str] = param([], "Layer name patterns (fnmatch) to quantise (default: every supported layer).", automl_enabled=False)
    skip_names: List[str] = param([], "Layer name patterns (fnmatch) to leave in float.", automl_enabled=False)
    model_path: str = param("", "Model to quantise: a checkpoint ('best', 'latest' or a file; torchao, modelopt.pytorch) or an ONNX file (onnx, modelopt.onnx).", is_path=True)
    results_dir: str = param("", "Where quantize writes.", is_path=True)
    backend_kwargs: Dict[str, Any] = param({}, "Extra backend options.", automl_enabled=False)
    device: str = param("cuda", "Device: cuda, cuda:N, cpu or trt.")


# ---------------------------------------------------------------------------------------------
# automl (ours)
# ---------------------------------------------------------------------------------------------
@dataclass
class AutoMLConfig:
    policy: str = param("on", "on: hyperparameter sweep; off: one plain training run.", valid_options=["on", "off"], popular=True)
    algorithm: str = param(
        "tpe", "Search algorithm.", valid_options=["tpe", "random", "grid", "gp", "cmaes", "bohb", "pbt"], popular=True
    )
    scheduler: str = param("asha", "Trial scheduler (epochs are the fidelity).", valid_options=["asha", "hyperband", "median", "pbt", "fifo"], popular=True)
    num_samples: int = param(8, "Trials to run.", valid_min=1, valid_max=100000, popular=True)
    max_concurrent: int = param(4, "Trials running at once (0: as many as resources allow).", valid_min=0, valid_max=10000)
    metric: str = param("", "Metric to optimise (default by model.mode: PQ, AP or mIoU).")
    mode: str = param("max", "Maximise or minimise the metric.", valid_options=["max", "min"])
    resources_per_trial: Dict[str, Any] = param(
        {}, "Resources of one trial, e.g. {cpu: 2, gpu: 0.25}, or {gpu: auto}: the share its measured memory needs "
        "(default: 1 GPU when there is one, else 1 CPU).", valid_min=0.0, automl_enabled=False,
    )
    search_space: Any = param("default", "A preset name in search_spaces/, a YAML file, or an inline mapping of ranges.")
    max_epochs: int = param(0, "Epochs of a full trial (0: train.num_epochs).", valid_min=0, valid_max=100000)
    grace_period: int = param(1, "Epochs a trial runs before a scheduler may stop it.", valid_min=1, valid_max=100000)
    reduction_factor: int = param(3, "Halving rate of ASHA/Hyperband.", valid_min=2, valid_max=10)
    seed: int = param(42, "Seed of the searcher and of every trial.", valid_min=0, valid_max=2**31 - 1)
    ray_address: str = param("", "Join an existing Ray cluster ('auto' or 'ray://host:port'); empty starts a local one.")
    storage_uri: str = param(
        "", "Where the sweep keeps trials' checkpoints and results: a folder every Ray node shares or an fsspec URI such as "
        "s3://bucket/sweeps (default: <results_dir>/automl). On object storage, MLflow artifacts go to <storage_uri>/mlartifacts.",
        is_path=True,
    )
    s3_endpoint_url: str = param(
        "", "Endpoint of an S3-compatible store (MinIO, SeaweedFS, Ceph) for every s3:// URI; empty: AWS. "
        "Credentials come from the AWS environment variables, never from the spec.",
    )
    tracking_uri: str = param("", "MLflow tracking URI (default: sqlite:///<results_dir>/mlflow.db).")
    experiment_name: str = param("", "MLflow experiment name (default: the spec file's name).")
    max_failures: int = param(1, "Retries of a crashed trial (from its last checkpoint).", valid_min=0, valid_max=100)
    trial_timeout_minutes: float = param(30.0, "Stop a trial that reports nothing for this long (0: never).", valid_min=0.0, valid_max=100000.0)
    keep_top_k: int = param(3, "Early-stopped trials that keep their checkpoints.", valid_min=0, valid_max=10000)
    export_best: bool = param(
        False, "Export the winner to ONNX (export.* settings) after the sweep and check it against PyTorch; its registered "
        "MLflow model gets alias 'champion' once the check passed."
    )
    baseline: bool = param(False, "Evaluate the starting weights on dataset.val before the sweep (logged on the parent run).")
    warm_start: str = param(
        "", "results_dir of an earlier sweep whose best configurations this sweep tries first (from its Optuna study).", is_path=True
    )


@dataclass
class WandbConfig:
    """Accepted so reference specs load; ignored (runs are tracked in MLflow)."""

    enable: bool = param(True, "Ignored.")
    project: str = param("TAO Toolkit", "Ignored.")
    entity: str = param("", "Ignored.")
    group: str = param("", "Ignored.")
    tags: List[str] = param(["tao-toolkit"], "Ignored.", automl_enabled=False)
    reinit: bool = param(False, "Ignored.")
    sync_tensorboard: bool = param(False, "Ignored.")
    save_code: bool = param(False, "Ignored.")
    name: str = param("TAO Toolkit Training", "Ignored.")
    run_id: str = param("", "Ignored.")


@dataclass
class ExperimentConfig:
    model_name: str = param("", "A name for the model (shown in MLflow).")
    encryption_key: str = param("", "Ignored: checkpoints are plain PyTorch files.")
    # Reference default '' has no meaning here: results go to ./results unless set.
    results_dir: str = param("results", "Root folder of every output (checkpoints, MLflow store, exports).", is_path=True)
    wandb: WandbConfig = section(WandbConfig, "Ignored; MLflow tracks runs.")
    model: ModelConfig = section(ModelConfig, "The network.")
    dataset: DatasetConfig = section(DatasetConfig, "Data and augmentation.")
    train: TrainConfig = section(TrainConfig, "Training.")
    evaluate: EvaluateConfig = section(EvaluateConfig, "Evaluation.")
    inference: InferenceConfig = section(InferenceConfig, "Inference.")
    export: ExportConfig = section(ExportConfig, "ONNX export.")
    gen_trt_engine: GenTrtEngineConfig = section(GenTrtEngineConfig, "TensorRT engine generation.")
    quantize: QuantizeConfig = section(QuantizeConfig, "Post-training quantisation.")
    automl: AutoMLConfig = section(AutoMLConfig, "Hyperparameter search (ours).")


ACTIONS = ["train", "evaluate", "inference", "export", "quantize", "gen_trt_engine"]
