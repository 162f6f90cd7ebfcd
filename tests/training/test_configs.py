"""Every config composes, each data set picks its recipe, and every key is documented where defined."""

import re

import pytest

from stylenat.cli import ConfigError, compose_config
from stylenat.models.generator import GeneratorConfig
from stylenat.training.config import parse_config, resolve_config
from stylenat.training.options import TrainOptions
from tests.training.helpers import CONFIG_DIR

DATASETS = sorted(p.stem for p in (CONFIG_DIR / "dataset").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
TRAINS = sorted(p.stem for p in (CONFIG_DIR / "train").glob("*.yaml"))
DISCRIMINATORS = sorted(p.stem for p in (CONFIG_DIR / "discriminator").glob("*.yaml"))
LOGGERS = sorted(p.stem for p in (CONFIG_DIR / "logger").glob("*.yaml"))

RECIPES = {
    "demo": ("tiny", "demo", 32),
    "demo_classes": ("tiny", "demo", 32),
    "ffhq256": ("stylenat_256", "ffhq256", 256),
    "ffhq1024": ("stylenat_1024", "ffhq1024", 1024),
    "church256": ("stylenat_256", "church256", 256),
    "folder": ("stylenat_256", "folder", 256),
}


def compose(*overrides):
    return resolve_config(compose_config(CONFIG_DIR, ["run_dir=/tmp/x", "dataset.path=/data", *overrides]))


def test_the_groups_we_promise_exist():
    assert set(RECIPES) <= set(DATASETS)
    assert {"ffhq256", "ffhq1024", "church256", "demo"} <= set(TRAINS)
    assert {"jsonl", "wandb"} <= set(LOGGERS)


@pytest.mark.parametrize("dataset", DATASETS)
def test_each_dataset_selects_its_recipe(dataset):
    if dataset == "folder":  # read from the data by default (tests/training/test_init.py)
        assert compose("dataset=folder")["dataset"]["resolution"] == "auto"
    cfg = compose(f"dataset={dataset}", *(["dataset.resolution=256"] if dataset == "folder" else []))
    parse_config(cfg)
    TrainOptions.from_dict(cfg["train"])
    GeneratorConfig.from_dict(cfg["model"]).validate()
    model, train, resolution = RECIPES[dataset]
    assert cfg["dataset"]["resolution"] == cfg["model"]["resolution"] == resolution
    reference = compose(f"dataset={dataset}", f"model={model}", f"train={train}")
    if dataset == "folder":
        reference = compose("dataset=folder", "dataset.resolution=256", f"model={model}", f"train={train}")
    if dataset != "folder":  # folder adjusts the model's per-stage lists
        assert cfg["model"] == reference["model"]
    assert cfg["train"] == reference["train"]


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("model", MODELS)
def test_every_dataset_model_pair_composes(dataset, model):
    cfg = compose(f"dataset={dataset}", f"model={model}")
    assert cfg["model"]["z_dim"] > 0


@pytest.mark.parametrize("train", TRAINS)
@pytest.mark.parametrize("discriminator", DISCRIMINATORS)
@pytest.mark.parametrize("logger", LOGGERS)
def test_every_train_discriminator_logger_composes(train, discriminator, logger):
    cfg = compose(f"train={train}", f"discriminator={discriminator}", f"logger={logger}")
    opts = TrainOptions.from_dict(cfg["train"])
    assert opts.total_images > 0
    assert cfg["discriminator"]["name"] == discriminator
    assert ("wandb" in cfg["logger"] and cfg["logger"]["wandb"] is not None) == (logger == "wandb")


def test_recipe_numbers_from_the_spec():
    ffhq = compose("dataset=ffhq256")["train"]
    assert (
        ffhq["total_kimg"] == 64_000
        and ffhq["lr_decay_start_kimg"] == 49_600
        and ffhq["lr_decay_end_kimg"] == 64_000
    )
    assert compose("dataset=ffhq256")["dataset"]["xflip"] is True
    hi = compose("dataset=ffhq1024")
    assert (hi["train"]["batch"], hi["train"]["batch_per_gpu"], hi["train"]["bcr_real"]) == (16, 2, 0.0)
    assert hi["train"]["lr_decay_start_kimg"] == 600_000 * 16 / 1000
    church = compose("dataset=church256")["train"]
    assert (church["r1_gamma"], church["batch"], church["lr_decay_start_kimg"], church["total_kimg"]) == (
        5.0,
        32,
        41_600,
        48_000,
    )


def test_folder_follows_dataset_resolution():
    cfg = compose("dataset=folder", "dataset.resolution=64")
    assert cfg["model"]["resolution"] == 64
    GeneratorConfig.from_dict(cfg["model"]).validate()


def test_paper_recipes_keep_their_fixed_regularisation():
    for dataset in ("ffhq256", "ffhq1024", "church256"):
        train = compose(f"dataset={dataset}")["train"]
        assert train["augment"] == "none" and isinstance(train["r1_gamma"], float), dataset
    assert compose("dataset=ffhq256")["train"]["r1_gamma"] == 10.0


def _folder(tmp_path, count):
    import numpy as np
    from PIL import Image

    tmp_path.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((64, 64, 3), 40 * i % 256, np.uint8)).save(tmp_path / f"{i}.png")
    return tmp_path


def test_folder_derives_r1_gamma_and_ada_from_the_data(tmp_path):
    import torch

    from stylenat.distributed import DistEnv
    from stylenat.training.run import prepare_run

    cpu = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    data = _folder(tmp_path / "data", 5)
    base = ["dataset=folder", f"dataset.path={data}", "dataset.resolution=64", f"run_dir={tmp_path / 'run'}"]
    setup = prepare_run(compose_config(CONFIG_DIR, base), cpu)
    opts = setup.config.train
    assert opts.r1_gamma == pytest.approx(0.0002 * 64**2 / 64)
    assert opts.augment == "ada"  # 5 images < 50k
    assert (
        setup.config.resolved["train"]["r1_gamma"] == opts.r1_gamma
    )  # what config.yaml and the state record
    assert setup.config.resolved["train"]["augment"] == "ada"
    overridden = prepare_run(
        compose_config(CONFIG_DIR, [*base, "train.r1_gamma=5", "train.augment=none"]), cpu
    )
    assert (overridden.config.train.r1_gamma, overridden.config.train.augment) == (5.0, "none")


def test_auto_augment_switches_off_for_large_data_sets():
    from stylenat.training.options import ADA_AUTO_BELOW_IMAGES

    opts = TrainOptions.from_dict(compose("dataset=folder")["train"])
    assert opts.resolve_auto(256, ADA_AUTO_BELOW_IMAGES - 1).augment == "ada"
    assert opts.resolve_auto(256, ADA_AUTO_BELOW_IMAGES).augment == "none"
    assert opts.resolve_auto(256, None).augment == "none"  # size unknown (no data set opened)
    assert opts.resolve_auto(512, 100).r1_gamma == pytest.approx(0.0002 * 512**2 / opts.batch)


def test_demo_has_no_required_path():
    cfg = resolve_config(compose_config(CONFIG_DIR, ["run_dir=/tmp/x"]))
    assert cfg["dataset"]["path"] is None and cfg["model"]["resolution"] == 32


def test_missing_path_is_one_line():
    with pytest.raises(ValueError, match=r"^dataset.path is required: pass dataset.path=<value>"):
        resolve_config(compose_config(CONFIG_DIR, ["run_dir=/tmp/x", "dataset=ffhq256"]))


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.bogus=1", "Could not override 'train.bogus'"),
        ("dataset=nope", r"Could not find 'dataset/nope' \(available: church256, demo"),
        ("train.batch", "Error parsing override 'train.batch'"),
    ],
)
def test_composition_errors_are_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        compose_config(CONFIG_DIR, [override])
    assert "\n" not in str(info.value)


KEY_LINE = re.compile(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*):(.*)$")


def _documented_keys(path):
    """key -> has a comment, for every key line of a YAML file (nested keys as a.b)."""
    out, stack = {}, []
    for line in path.read_text().splitlines():
        m = KEY_LINE.match(line)
        if not m or line.lstrip().startswith("#"):
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3)
        stack = [(i, k) for i, k in stack if i < indent]
        stack.append((indent, key))
        if key == "defaults":
            continue
        out[".".join(k for _, k in stack)] = "#" in rest or rest.strip() == ""
    return out


@pytest.mark.parametrize(
    "path, section",
    [
        ("config.yaml", None),
        ("train/ffhq256.yaml", "train"),
        ("dataset/demo.yaml", None),
        ("logger/jsonl.yaml", "logger"),
        ("logger/wandb.yaml", "logger"),
        ("evaluate_run.yaml", None),
    ],
)
def test_every_key_is_documented_where_it_is_defined(path, section):
    keys = _documented_keys(CONFIG_DIR / path)
    undocumented = [k for k, ok in keys.items() if not ok]
    assert not undocumented, f"{path}: keys without a comment: {undocumented}"
    if section == "train":
        assert set(keys) == set(compose()["train"]), "ffhq256.yaml must define every train key"
    if path == "dataset/demo.yaml":
        for dataset in DATASETS:
            assert {f"dataset.{k}" for k in compose(f"dataset={dataset}")["dataset"]} <= set(keys)
