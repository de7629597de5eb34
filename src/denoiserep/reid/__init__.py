"""Person / vehicle re-identification: metrics, re-ranking, dataset readers, sampler."""

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
from denoiserep.reid.metrics import evaluate, evaluate_full
from denoiserep.reid.rerank import re_ranking
from denoiserep.reid.sampler import RandomIdentitySampler
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
]
