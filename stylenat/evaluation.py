"""evaluate.py's body: metrics of a snapshot against reference statistics, or the generator's throughput.
(Metrics of every snapshot of a training run: stylenat/training/run_metrics.py.)"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from stylenat.ops.precision import dtype_name
from stylenat.sampling import resolve_class, seeded_images_fn, seeded_labels_fn

logger = logging.getLogger(__name__)


def _real_source(cfg):
    """Where the real side comes from: a statistics file, or the dataset's images (statistics cached)."""
    if cfg.ref_stats:
        return {"ref_stats": cfg.ref_stats}
    dataset = cfg.get("dataset")
    if not dataset:
        raise ValueError("no real data: give ref_stats=<npz> or dataset=<name> dataset.path=<images>")
    path = dataset.get("path")
    if path is None and dataset.get("name") in ("demo", "demo_classes"):
        from stylenat.data.demo import dataset_path_or_demo

        path = dataset_path_or_demo(None, dataset.get("name"))
    if path is None:
        raise ValueError(f"dataset {dataset.get('name')!r} has no path: set dataset.path=<images>")
    if not Path(path).exists():
        raise FileNotFoundError(f"dataset path {path} does not exist")
    return {"real_data": str(path)}


def data_label_pool(G, real_data):
    """The labels a conditional G's metrics draw from: the real data set's dataset.json (checked against
    G's classes); None when it has none (``seeded_images_fn`` then asks for class_idx)."""
    from stylenat.data.labels import label_pool

    found = label_pool(real_data) if real_data is not None else None
    if found is None:
        return None
    pool, c_dim, _ = found
    if c_dim != G.c_dim:
        raise ValueError(f"the data set {real_data} has {c_dim} classes, the generator c_dim={G.c_dim}")
    return pool


def run_metrics(cfg, G, device, rank=0):
    from stylenat.metrics import append_jsonl, compute_metric, compute_ppl, get_metric, load_inception
    from stylenat.metrics.ppl import check_ppl_dtype

    specs = [get_metric(name) for name in cfg.metrics]  # unknown names fail before any work
    for spec in specs:
        if spec.kind == "ppl":  # PPL: fp32 only, and G itself (no real data, no truncation)
            check_ppl_dtype(spec.name, cfg.get("dtype", "fp32"))
    class_idx = resolve_class(G, cfg.get("class_idx"), cfg.get("class_name"))
    draws_labels = bool(G.c_dim) and class_idx is None  # a conditional G with no class: the data's labels
    # real data for the feature metrics, and for the labels a conditional G draws when no class is given
    needs_real = any(spec.kind != "ppl" for spec in specs) or draws_labels
    real = _real_source(cfg) if needs_real else {}
    needs_inception = any(spec.network == "inception" for spec in specs)
    extractor = load_inception(cfg.inception_weights, device=device) if needs_inception else None

    pool = data_label_pool(G, real.get("real_data")) if draws_labels else None
    generator_fn = seeded_images_fn(G, device, cfg.truncation_psi, class_idx=class_idx, label_pool=pool)
    labels_fn = seeded_labels_fn(G, device, class_idx=class_idx, label_pool=pool)

    results = []
    for spec in specs:
        if spec.kind == "ppl":
            record = compute_ppl(
                spec,
                G,
                vgg16=cfg.get("vgg16_weights"),
                num_gen=cfg.num_gen,
                batch_size=cfg.batch,
                device=device,
                seed_start=cfg.seed_start,
                labels=labels_fn if G.c_dim else None,
            )
        else:
            record = compute_metric(
                spec,
                generator_fn,
                extractor=extractor,
                num_gen=cfg.num_gen,
                batch_size=cfg.batch,
                device=device,
                seed_start=cfg.seed_start,
                real_seed=cfg.real_seed,
                allow_mismatch=cfg.allow_mismatch,
                vgg16_weights=cfg.get("vgg16_weights"),
                **real,
            )
        record.update(
            checkpoint=str(cfg.checkpoint),
            truncation_psi=cfg.truncation_psi if spec.kind != "ppl" else 1.0,  # PPL maps without truncation
            dtype=dtype_name(cfg.get("dtype", "fp32")),
            compute_dtype=dtype_name(G.compute_dtype),  # fp32 where bf16 fell back (a CPU without it)
        )
        if G.c_dim:  # a conditional G: one class, or labels drawn from the data's distribution
            record["class_idx"] = class_idx
            record["labels"] = "fixed class" if class_idx is not None else "drawn from the data set's labels"
        if rank == 0:
            out = (
                Path(cfg.results)
                if cfg.results
                else Path(cfg.checkpoint).parent / f"metric-{spec.name}.jsonl"
            )
            append_jsonl(out, record)
            shown = ("metric", "value", "precision", "recall", "protocol", "num_gen", "num_real", "label")
            print(json.dumps({k: record[k] for k in shown if k in record}))
        results.append(record)
    return results


@dataclass(frozen=True)
class ThroughputSettings:
    batch: int = 1
    warmup: int = 10
    reps: int = 500
    tf32: bool = True
    compile: bool = False


@dataclass(frozen=True)
class EvaluateConfig:
    """evaluate.py's keys (configs/evaluate.yaml), typed and checked; ``dataset`` is the composed group."""

    checkpoint: object
    metrics: list = field(default_factory=lambda: ["fid50k_full"])
    ref_stats: str | None = None
    dataset: dict | None = None
    num_gen: int | None = None
    truncation_psi: float = 1.0
    class_idx: int | None = None
    class_name: str | None = None
    batch: int = 32
    seed_start: int = 0
    real_seed: int = 0
    inception_weights: str | None = None
    vgg16_weights: str | None = None
    allow_mismatch: bool = False
    results: str | None = None
    device: str = "auto"
    dtype: str = "fp32"
    mode: str = "metrics"
    throughput: ThroughputSettings = ThroughputSettings()

    def get(self, name: str, default=None):
        """Mapping-style access, as run_metrics reads a plain config too."""
        return getattr(self, name, default)


def parse_evaluate_config(cfg) -> EvaluateConfig:
    """The composed evaluate config -> EvaluateConfig; one line naming the key on a bad value."""
    from stylenat.config_checks import ConfigError, typed

    if isinstance(cfg, EvaluateConfig):
        return cfg
    from omegaconf import DictConfig, OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    for group in ("model", "train", "discriminator", "logger"):  # composed only as dataset configs pick them
        plain.pop(group, None)
    config = typed(EvaluateConfig, plain)
    if config.mode not in ("metrics", "throughput"):
        raise ConfigError(f"mode must be metrics or throughput, got {config.mode!r}")
    return config


def run_evaluate(cfg):
    """Single process, or one shard of seeds per process under torchrun (features gathered on rank 0)."""
    from stylenat import distributed
    from stylenat.reference import load_generator

    cfg = parse_evaluate_config(cfg)
    env = distributed.init(cfg.device)
    device = env.device
    try:
        G = load_generator(cfg.checkpoint, device=device, dtype=cfg.dtype)
        if cfg.mode == "throughput":
            from stylenat.bench.generator import measure_generator_throughput

            t = cfg.throughput
            record = measure_generator_throughput(
                G,
                batch=t.batch,
                warmup=t.warmup,
                reps=t.reps,
                dtype=cfg.dtype,
                tf32=t.tf32,
                compile=t.compile,
            )
            print(json.dumps(record))
            return [record]
        return run_metrics(cfg, G, device, rank=env.rank)
    finally:
        distributed.shutdown()
