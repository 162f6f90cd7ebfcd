"""Convert an official StyleNAT checkpoint (SHI-Labs/StyleNAT, e.g. FFHQ256_940k_flip.pt) to a stylenat snapshot.

python scripts/convert_checkpoint.py SRC DST [--dilations 1 1 1,2 1,4 ...] [--w-avg-samples N] [--seed S]
                                    [--training-state] [--overwrite]

The snapshot holds the reference `g_ema` weights under our names, the inferred model config and a w_avg
(the mean of the mapping of N seeded z's; the reference has none). Load it with
`stylenat.load_generator(DST)`; `G(z)` returns images in [-1, 1].
"""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

from stylenat import cli

USAGE = """\
usage: python scripts/convert_checkpoint.py SRC DST [--dilations 1 1 1,2 1,4 ...] [--w-avg-samples N] [--seed S]
                                            [--training-state] [--overwrite] [key=value ...] [--cfg] [--help]

Writes DST, an inference snapshot of the reference g_ema (and with --training-state DST.train.pt, the G, D and
G_ema weights to fine-tune from with train.py init=...). Keys and their flag aliases are documented in
configs/convert_checkpoint.yaml."""

FLAGS = cli.flag_aliases(
    values=("w_avg_samples", "seed"), switches=("training_state", "overwrite"), texts=("dilations",)
)


def parse_dilations(text):
    """`1 1 1,2 1,4` (one comma group per stage, 4x4 first) or one JSON list `[[1],[1],[1,2]]`."""
    if text is None:
        return None
    if not isinstance(text, str):  # a list given as a key (dilations=[[1],[1],[1,2]])
        text = json.dumps(text)
    text = text.strip()
    try:
        if text.startswith("["):
            value = json.loads(text)
        else:
            value = [[int(x) for x in group.split(",") if x] for group in text.replace(";", " ").split()]
        value = [[v] if isinstance(v, int) else [int(x) for x in v] for v in value]
    except (ValueError, TypeError):
        raise SystemExit(
            f"error: cannot parse --dilations {text!r}; write e.g. --dilations 1 1 1,2 1,4"
        ) from None
    if not value or any(not group or min(group) < 1 for group in value):
        raise SystemExit(f"error: --dilations {text!r} needs a non-empty list of positive integers per stage")
    return value


@cli.user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    argv = cli.translate_argv(sys.argv[1:] if argv is None else argv, positional=("src", "dst"), flags=FLAGS)
    return cli.main_with_config(argv, USAGE, "convert_checkpoint", convert)


def convert(cfg) -> None:
    from omegaconf import OmegaConf

    args = SimpleNamespace(**OmegaConf.to_container(cfg, resolve=True))
    args.src, args.dst = str(args.src), str(args.dst)
    if args.w_avg_samples < 0:
        raise SystemExit("error: --w-avg-samples must be >= 0")
    dilations = parse_dilations(args.dilations)
    dst = Path(args.dst)
    train_dst = dst.with_name(f"{dst.stem}.train{dst.suffix or '.pt'}")
    for out in [dst] + ([train_dst] if args.training_state else []):
        if out.exists() and not args.overwrite:
            raise SystemExit(f"error: {out} exists (pass --overwrite to replace it)")

    from stylenat.files import atomic_save
    from stylenat.reference import (
        read_reference_checkpoint,
        reference_to_snapshot,
        reference_to_training_weights,
    )
    from stylenat.snapshot import CheckpointError

    try:
        data = read_reference_checkpoint(args.src)
        snapshot = reference_to_snapshot(
            data, source=args.src, dilations=dilations, w_avg_samples=args.w_avg_samples, seed=args.seed
        )
        training = None
        if args.training_state:
            training = reference_to_training_weights(data, snapshot, source=args.src)
    except CheckpointError as err:
        raise SystemExit(f"error: {err}") from None
    try:
        atomic_save(snapshot, dst)
        if training is not None:
            atomic_save(training, train_dst)
    except OSError as err:
        raise SystemExit(f"error: cannot write {err.filename or dst}: {err.strerror or err}") from None
    cfg = snapshot["model_config"]
    meta = snapshot["meta"]
    print(
        f"wrote {dst}: {cfg['resolution']}x{cfg['resolution']} generator from {meta['reference_weights']} "
        f"({meta['reference_container']} container, {meta['reference_attention_layout']} attention layout), "
        f"dilations {cfg['dilations']} ({meta['dilations_from']}), w_avg from {meta['w_avg_samples']} samples"
    )
    if training is not None:
        print(f"wrote {train_dst}: G, G_ema and D weights ({training['meta']['discriminator']})")


if __name__ == "__main__":
    sys.exit(main())
