#!/usr/bin/env python
"""An interpolation video over seeds (StyleGAN3's gen_video.py): a grid of loops, MP4 or GIF.

    python scripts/video.py checkpoint=<snapshot> seeds=0-7 grid=2x2 frames_per_transition=60 output=video.mp4

Keys (Hydra override syntax) are documented in configs/video.yaml; the work is stylenat.video.run_video.
"""

import sys

from stylenat import cli

USAGE = """\
usage: python scripts/video.py checkpoint=<snapshot> [seeds=0-7] [grid=WxH] [frames_per_transition=60]
                               [space=w|z] [truncation_psi=1.0] [output=video.mp4] [key=value ...] [--cfg] [--help]

Each of the W x H cells loops through its keyframes (seed i is keyframe i // (W*H) of cell i % (W*H)),
frames_per_transition frames from one to the next. MP4 through imageio-ffmpeg (pip install 'stylenat[viewer]'),
else a GIF. Keys are documented in configs/video.yaml."""


def video(cfg) -> None:
    from stylenat.video import run_video

    cli.setup_logging()
    path = run_video(cfg)
    print(f"wrote {path}")


@cli.user_errors_to_exit
def main(argv: list[str] | None = None) -> int:
    return cli.main_with_config(sys.argv[1:] if argv is None else argv, USAGE, "video", video)


if __name__ == "__main__":
    sys.exit(main())
