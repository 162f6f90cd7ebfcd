"""Evaluation metrics: NVIDIA's Inception-v3 features, FID/KID under two protocols, reference statistics.

Protocols (see :mod:`stylenat.metrics.protocols`): ``stylegan`` (StyleGAN2-ADA ``fid50k_full``) and
``pytorch_fid`` (the StyleNAT paper's pytorch-fid pipeline). Every statistics file and every result
records its protocol and the Inception weights' sha256. Precision/recall (k-NN manifolds, Kynkäänniemi
et al.) runs on Inception features or, as StyleGAN2-ADA's ``pr50k3_full``, on VGG16 features
(:func:`load_vgg16`, weights the user provides). Real images are read by ``stylenat.data``'s
reader (folder, zip, LMDB), so the metrics see exactly the files training sees.
"""

from stylenat.metrics.fid import frechet_distance, frechet_distance_from_features
from stylenat.metrics.inception import InceptionV3Features, build_inception
from stylenat.metrics.inception_convert import InceptionWeightsError
from stylenat.metrics.inception_weights import load_inception
from stylenat.metrics.kid import kernel_inception_distance
from stylenat.metrics.ppl import PPL_METRICS, compute_ppl
from stylenat.metrics.precision_recall import precision_recall
from stylenat.metrics.protocols import PROTOCOLS, get_protocol
from stylenat.metrics.records import append_jsonl
from stylenat.metrics.registry import (
    METRICS,
    MetricSpec,
    available_metrics,
    compute_metric,
    get_metric,
)
from stylenat.metrics.statistics import (
    FeatureStatistics,
    StatisticsMismatchError,
    check_statistics,
    compute_statistics,
    open_real_images,
    reference_statistics,
    select_indices,
)
from stylenat.metrics.vgg16 import VGG16WeightsError, load_vgg16

__all__ = [
    "METRICS",
    "PPL_METRICS",
    "PROTOCOLS",
    "FeatureStatistics",
    "InceptionV3Features",
    "InceptionWeightsError",
    "MetricSpec",
    "StatisticsMismatchError",
    "VGG16WeightsError",
    "append_jsonl",
    "available_metrics",
    "build_inception",
    "check_statistics",
    "compute_metric",
    "compute_ppl",
    "compute_statistics",
    "frechet_distance",
    "frechet_distance_from_features",
    "get_metric",
    "get_protocol",
    "kernel_inception_distance",
    "load_inception",
    "load_vgg16",
    "open_real_images",
    "precision_recall",
    "reference_statistics",
    "select_indices",
]
