"""Person / vehicle re-identification: metrics, re-ranking, dataset readers, sampler,
the BoT model, the train step (``.step``), evaluation (``.features``) and the
``denoiserep reid`` task (``.task``)."""

from denoiserep.reid.datasets import (
    ReIDDataset,
    build_reid_dataset,
    merge_datasets,
    read_cuhk03,
    read_dukemtmcreid,
    read_market1501,
    read_msmt17,
    read_vehicleid,
    read_veri,
    vehicleid_split,
)
from denoiserep.reid.features import evaluate_reid, extract_features
from denoiserep.reid.metrics import evaluate, evaluate_full
from denoiserep.reid.model import ReIDModel, build_reid_model, set_last_stride
from denoiserep.reid.rerank import re_ranking
from denoiserep.reid.sampler import RandomIdentitySampler
from denoiserep.reid.step import ReIDImageDataset, ReIDStep, batch_hard_triplet, random_erasing
from denoiserep.reid.synth import build_fashion_reid

__all__ = [
    "RandomIdentitySampler",
    "ReIDDataset",
    "build_fashion_reid",
    "build_reid_dataset",
    "evaluate",
    "evaluate_full",
    "merge_datasets",
    "re_ranking",
    "read_cuhk03",
    "read_dukemtmcreid",
    "read_market1501",
    "read_msmt17",
    "read_vehicleid",
    "read_veri",
    "vehicleid_split",
    "ReIDModel",
    "build_reid_model",
    "set_last_stride",
    "ReIDImageDataset",
    "ReIDStep",
    "batch_hard_triplet",
    "evaluate_reid",
    "extract_features",
    "random_erasing",
]
