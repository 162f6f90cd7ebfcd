"""Sample images from a snapshot: `python generate.py checkpoint=<snapshot> seeds=0-15 outdir=out`."""

import hydra
from omegaconf import DictConfig

from stylenat.cli import user_errors_to_exit
from stylenat.sampling import run_generate


@hydra.main(config_path="configs", config_name="generate", version_base=None)
@user_errors_to_exit
def main(cfg: DictConfig):
    run_generate(cfg)


if __name__ == "__main__":
    main()
