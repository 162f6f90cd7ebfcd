"""Metrics of a snapshot: `python evaluate.py checkpoint=<snapshot> metrics=[fid50k_full] ref_stats=<npz>`."""

import hydra
from omegaconf import DictConfig

from stylenat.cli import user_errors_to_exit
from stylenat.evaluation import run_evaluate


@hydra.main(config_path="configs", config_name="evaluate", version_base=None)
@user_errors_to_exit
def main(cfg: DictConfig):
    run_evaluate(cfg)


if __name__ == "__main__":
    main()
