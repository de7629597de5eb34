"""Meanings of configuration keys whose dataclass docstring does not describe them.

Read by :func:`denoiserep.docgen.field_meaning` after the dataclass's docstring and the field's
own comment; a test checks every entry against the dataclasses. A meaning belongs next to its
field: moving one into the dataclass's docstring and deleting it here is always welcome.
"""

from __future__ import annotations

# Meanings of keys whose dataclass docstring does not describe them, by "Class.field".
MEANINGS: dict[str, str] = {
    # ArmsConfig (every task)
    "ArmsConfig.baseline": "training of the baseline arm",
    "ArmsConfig.finetune": "training of the control and DenoiseRep arms after the baseline",
    "ArmsConfig.denoise": "the DenoiseRep conversion (targets, schedule, loss)",
    "ArmsConfig.seeds": "one baseline, control and DenoiseRep arm per seed",
    "ArmsConfig.arms": "arms run after the baseline: `control`, `denoiserep`",
    "ArmsConfig.latency_repeats": "timed forwards per model for the fused / baseline latency",
    "ArmsConfig.robustness": "corruption, feature-noise and quantized-feature scoring",
    "ArmsConfig.output": "output folder (results, checkpoints, logs; `--output` overrides)",
    "ArmsConfig.device": "`auto` (CUDA if available, else CPU), `cpu`, `cuda`, `cuda:N`",
    # TrainConfig
    "TrainConfig.epochs": "epochs of this arm (0: no training)",
    "TrainConfig.batch_size": "global batch size (split evenly over torchrun processes)",
    "TrainConfig.optimizer": "`adamw` or `sgd`",
    "TrainConfig.lr": "peak learning rate (cosine decay after warm-up)",
    "TrainConfig.weight_decay": "weight decay",
    "TrainConfig.momentum": "SGD momentum",
    "TrainConfig.warmup_epochs": "linear learning-rate warm-up, in epochs (may be fractional)",
    "TrainConfig.amp": "bf16 autocast on CUDA",
    "TrainConfig.grad_clip": "gradient-norm clipping (0: off)",
    "TrainConfig.denoiser_epochs": "label-free `denoiser` epochs before the schedule's phases",
    "TrainConfig.alternate_every": "`alternating`: epochs per denoiser / backbone switch",
    "TrainConfig.ckpt_every": "also checkpoint every this many steps (0: at epoch ends only)",
    "TrainConfig.workers": "training DataLoader processes",
    # RobustnessConfig
    "RobustnessConfig.corruptions": "ImageNet-C corruptions scored",
    "RobustnessConfig.severities": "corruption severities (1-5) scored",
    "RobustnessConfig.feature_sigmas": "feature-noise levels, relative to each input's std",
    "RobustnessConfig.calibration_images": "training images the static ranges are taken over",
    "RobustnessConfig.seed": "seed of the corruptions and the feature noise",
    "RobustnessConfig.feature_ranges": (
        "`per_sample` (each sample's own range, as dynamic quantization) or `static` (one "
        "calibrated range per layer, clipped, as post-training INT8 quantization)"
    ),
    # classify
    "ClassifyConfig.data": "the dataset",
    "ClassifyConfig.model": "the model and its weights",
    "ClassifyConfig.label_smoothing": "label smoothing of the cross-entropy loss",
    "denoiserep.classification.task.DataConfig.name": (
        "dataset reader: `digits`, `fashion_mnist`, `cifar10`, `cifar100`, `imagefolder`, "
        "`cub200`, `oxford_pet`, `flowers102`"
    ),
    "denoiserep.classification.task.DataConfig.root": (
        "dataset folder (None: the reader's default location)"
    ),
    "denoiserep.classification.task.DataConfig.options": (
        "keyword options of the reader (each reader's options: the table below); "
        "`subset` (keep some classes) only for the in-memory readers"
    ),
    "denoiserep.classification.task.DataConfig.pad": (
        "in-memory datasets: random translation by up to this many pixels"
    ),
    "denoiserep.classification.task.DataConfig.flip": (
        "in-memory datasets: random horizontal flips"
    ),
    "denoiserep.classification.task.DataConfig.eval_batch_size": "evaluation batch size",
    "denoiserep.classification.task.ModelConfig.name": (
        "timm model name, `tv:<name>` (torchvision), `hf:<hub id or folder>` (Hugging Face) "
        "or `vmamba_micro` / `_tiny` / `_small` / `_base`"
    ),
    "denoiserep.classification.task.ModelConfig.kwargs": (
        "keyword overrides passed to the model's constructor (e.g. `img_size`, `drop_path_rate`)"
    ),
    # ablate
    "AblationConfig.output": "output folder",
    # reid
    "SourceConfig.name": (
        "reader: `market1501`, `dukemtmcreid`, `msmt17`, `cuhk03`, `veri`, `vehicleid`"
    ),
    "SourceConfig.root": "dataset folder",
    "SourceConfig.options": "keyword options of the reader",
    "denoiserep.reid.task.DataConfig.merge_with": (
        "further datasets (`name`, `root`, `options`) whose training images the `merged` "
        "protocol adds to the denoisers' label-free data"
    ),
    "denoiserep.reid.task.DataConfig.preload": "decode all images into memory first",
    "denoiserep.reid.task.DataConfig.num_instances": "K of the P x K batches",
    "denoiserep.reid.task.ModelConfig.name": "backbone: timm name or `tv:<name>`",
    "denoiserep.reid.task.ModelConfig.kwargs": "keyword overrides passed to the backbone",
    "denoiserep.reid.task.DataConfig.flip": "random horizontal flips in training",
    "LossConfig.label_smoothing": "label smoothing of the identity loss",
    "LossConfig.triplet_margin": "batch-hard triplet margin (None: soft margin)",
    "denoiserep.reid.task.ModelConfig.last_stride": (
        "set the last stage's stride (1: the BoT trick for ResNets; None: as built)"
    ),
    "denoiserep.reid.task.ModelConfig.neck_feat": (
        "feature used for retrieval: `after` or `before` the BNNeck"
    ),
    "LossConfig.id_weight": "weight of the identity loss",
    "LossConfig.triplet_weight": "weight of the triplet loss",
    "EvalConfig.batch_size": "feature-extraction batch size",
    "EvalConfig.flip": "average the features of each image and its mirror",
    "EvalConfig.normalize": "L2-normalise features before the distance",
    "EvalConfig.distance": "`euclidean` or `cosine`",
    "EvalConfig.rerank": "k-reciprocal re-ranking",
    "EvalConfig.k1": "re-ranking k1",
    "EvalConfig.k2": "re-ranking k2",
    "EvalConfig.lambda_value": "re-ranking weight of the original distance",
    "EvalConfig.max_rank": "CMC computed up to this rank",
    "ReIDConfig.loss": "identity + triplet loss",
    "ReIDConfig.eval": "retrieval evaluation",
    "ReIDConfig.protocol": (
        "`label_augmented` (phases with labels), `label_free` (denoisers trained on the target "
        "training images, no label read) or `merged`"
    ),
    # detect / segment
    "CanvasConfig.root": "folder of the Fashion-MNIST canvas dataset (built there if missing)",
    "CanvasConfig.fmnist_dir": "Fashion-MNIST IDX files the canvases are composed from",
    "CanvasConfig.num_train": "training canvases",
    "CanvasConfig.num_val": "validation canvases",
    "CanvasConfig.canvas_size": "canvas side in pixels",
    "CanvasConfig.objects_per_image": "range of objects per canvas",
    "CanvasConfig.seed": "seed of the canvas composition",
    "denoiserep.dense.detection.DataConfig.canvas": "the canvas dataset (used without COCO paths)",
    "denoiserep.dense.detection.DataConfig.train_images": "COCO: training image folder",
    "denoiserep.dense.detection.DataConfig.train_annotations": "COCO: training annotation JSON",
    "denoiserep.dense.detection.DataConfig.val_images": "COCO: validation image folder",
    "denoiserep.dense.detection.DataConfig.val_annotations": "COCO: validation annotation JSON",
    "denoiserep.dense.detection.DataConfig.flip": "random horizontal flips in training",
    "denoiserep.dense.detection.DataConfig.eval_batch_size": "evaluation batch size",
    "denoiserep.dense.detection.DataConfig.figure_images": "validation images in predictions.png",
    "denoiserep.dense.detection.DataConfig.figure_score_threshold": (
        "boxes drawn in predictions.png score at least this"
    ),
    "denoiserep.dense.segmentation.DataConfig.canvas": (
        "the canvas dataset (used without `ade20k_root`)"
    ),
    "denoiserep.dense.segmentation.DataConfig.ade20k_root": "ADEChallengeData2016 folder",
    "denoiserep.dense.segmentation.DataConfig.num_classes": "ADE20K classes",
    "denoiserep.dense.segmentation.DataConfig.crop_size": "training crop (required for ADE20K)",
    "denoiserep.dense.segmentation.DataConfig.scale_range": "random rescaling range in training",
    "denoiserep.dense.segmentation.DataConfig.flip": "random horizontal flips in training",
    "denoiserep.dense.segmentation.DataConfig.eval_batch_size": "evaluation batch size",
    "denoiserep.dense.segmentation.DataConfig.boundary_dilation_ratio": (
        "boundary IoU's band width, relative to the image diagonal"
    ),
    "denoiserep.dense.segmentation.DataConfig.figure_images": (
        "validation images in predictions.png"
    ),
    "denoiserep.dense.detection.ModelConfig.arch": "`fasterrcnn` or `maskrcnn`",
    "denoiserep.dense.detection.ModelConfig.backbone": "ResNet of the ResNet-FPN backbone",
    "denoiserep.dense.detection.ModelConfig.min_size": "images resized to this short side",
    "denoiserep.dense.detection.ModelConfig.max_size": "long side at most this",
    "denoiserep.dense.detection.ModelConfig.anchor_sizes": "anchor size per FPN level (5)",
    "denoiserep.dense.detection.ModelConfig.trainable_layers": (
        "ResNet stages trained (0-5; the others frozen, as torchvision does)"
    ),
    "denoiserep.dense.detection.ModelConfig.frozen_bn": "FrozenBatchNorm2d in the backbone",
    "denoiserep.dense.detection.ModelConfig.pretrained": (
        "`true` or a torchvision weights name (COCO detector weights, or the backbone's)"
    ),
    "denoiserep.dense.detection.ModelConfig.checkpoint": "a local weights file",
    "denoiserep.dense.detection.ModelConfig.kwargs": "keyword arguments of torchvision's model",
    "denoiserep.dense.segmentation.ModelConfig.name": (
        "`fcn_resnet50`, `fcn_resnet101`, `deeplabv3_resnet50`, `deeplabv3_resnet101`, "
        "`deeplabv3_mobilenet_v3_large`, `lraspp_mobilenet_v3_large` or `segformer_b0` .. `_b5`"
    ),
    "denoiserep.dense.segmentation.ModelConfig.aux_loss": "train with the auxiliary head",
    "denoiserep.dense.segmentation.ModelConfig.bn_momentum": (
        "BatchNorm momentum (None: as built)"
    ),
    "denoiserep.dense.segmentation.ModelConfig.pretrained": "`true` or a weights name",
    "denoiserep.dense.segmentation.ModelConfig.checkpoint": "a local weights file",
    "denoiserep.dense.segmentation.ModelConfig.kwargs": "keyword arguments of the model",
    # bench
    "BenchConfig.models": "models measured (timm names, `tv:<name>`)",
    "BenchConfig.image_size": "input side in pixels",
    "BenchConfig.batch_sizes": "inference batch sizes",
    "BenchConfig.repeats": "timed forwards per variant, interleaved",
    "BenchConfig.warmup": "untimed forwards first",
    "BenchConfig.variants": "`baseline`, `fused`, `explicit`, `final_feature`",
    "BenchConfig.denoise": "the DenoiseRep conversion measured",
    "BenchConfig.denoiser_strength": "random denoisers move each input by about this fraction",
    "BenchConfig.train": "the training-step measurement",
    "BenchConfig.device": "`cpu`, `cuda`, or `auto` (CUDA if available)",
    "BenchConfig.bf16": "bf16 autocast",
    "BenchConfig.memory": "measure peak memory",
    "BenchConfig.export": "check ONNX (onnxruntime) and torch.export of the fused models",
    "BenchConfig.seed": "seed",
    "BenchConfig.output": "output folder",
    "TrainBenchConfig.enabled": "measure training steps",
    "TrainBenchConfig.batch_size": "training batch size",
    "TrainBenchConfig.steps": "timed steps per variant, interleaved",
    "TrainBenchConfig.warmup": "untimed steps first (the first counts FLOPs)",
    "TrainBenchConfig.phases": "phases measured: `denoiser`, `backbone`, `joint`",
    "TrainBenchConfig.lr": "learning rate",
    "TrainBenchConfig.weight_decay": "weight decay",
    "TrainBenchConfig.profile_top": "> 0: the top operators by self time of one step",
}
