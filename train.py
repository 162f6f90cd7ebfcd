"""Train StyleNAT: `python train.py [group=option ...] [key=value ...]`; `--help` lists the config groups.

`python train.py` runs the CPU demo; `python train.py dataset=ffhq256 dataset.path=/data/ffhq` the paper
recipe; `torchrun --nproc_per_node=8 train.py ...` the same on 8 GPUs. Keys: configs/config.yaml and groups.
"""

import sys
from pathlib import Path

from stylenat.cli import user_errors_to_exit
from stylenat.training.config import cli_main

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@user_errors_to_exit
def main(argv):
    return cli_main(CONFIG_DIR, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
