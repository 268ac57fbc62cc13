"""Colour autoencoders at equal training seconds: which architecture the 20-minute colour demo
can afford on a 2-core CPU.

Each arm is a set of config overrides on an autoencoder preset (default `emoji64`, the one
the faces demo used before), trained through the library's `train_autoencoder` on a colour
dataset (default the DiceBear faces of `bld prepare-dicebear`) for a step count chosen so
that the arms take about the same seconds; reported: training seconds, seconds per step,
PSNR over the whole test split (one definition everywhere: 10 log10(4 / MSE), images in
[-1, 1]) and the latent's size. Run it under the AVX2 restriction to measure the CPU the
colour demo is budgeted for:

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 \\
        python benchmarks/colour_autoencoders.py --name colour_autoencoders_avx2
    python benchmarks/colour_autoencoders.py --quick     # 20 steps per arm, 200 test images
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (sys.path set-up; imported before bld on purpose)

log = logging.getLogger("bench")

# name -> (overrides, steps): the steps give each arm about 155 s in fp32 under the AVX2
# restriction on this project's CPU (timed training steps: 181 ms for the patch-4 arms,
# 260 ms for patch 2)
ARMS = {
    "patch4-w48-bits32": (["model.patch=4", "model.channels=48", "model.channel_mult=[1,2]"], 800),
    "patch4-w48-bits64": (["model.patch=4", "model.channels=48", "model.channel_mult=[1,2]",
                           "model.bits=64"], 800),
    "patch2-w32-bits32": (["model.patch=2", "model.channels=32", "model.channel_mult=[1,2,2]"],
                          560),
}


def main() -> None:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--preset", default="emoji64", help="autoencoder preset the arms override")
    p.add_argument("--data", default="dicebear", help="colour dataset (a bld data source)")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--name", default="colour_autoencoders", help="file name of the results")
    args = p.parse_args()
    bench = common.setup(args.name, args, "~3 min per arm")
    from bld.config import load_config_dict
    from bld.data import build_dataset
    from bld.evaluation import dataset_tensors
    from bld.inference import reconstruct
    from bld.loading import load_autoencoder
    from bld.train import train_autoencoder
    from bld.train_config import config_from_dict
    xt, _ = dataset_tensors(build_dataset(args.data, split="test"),
                            limit=200 if args.quick else None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bld-colour-ae-") as work:
        for name in args.arms:
            over, steps = ARMS[name]
            steps = 20 if args.quick else steps
            cfg = config_from_dict("autoencoder", load_config_dict(
                "autoencoder", args.preset, over + [
                    f"data.source={args.data}", f"optim.steps={steps}", f"run.seed={args.seed}",
                    "run.sample_every=0", "run.ckpt_every=0"]))
            out = Path(work) / name
            t0 = time.perf_counter()
            train_autoencoder(cfg, out)
            seconds = time.perf_counter() - t0
            ae = load_autoencoder(out, "cpu")
            rec = reconstruct(ae, xt)
            rows.append({"arm": name, "overrides": " ".join(over), "steps": steps,
                         "batch_size": cfg.optim.batch_size, "train_s": seconds,
                         "s_per_step": seconds / steps, "psnr": rec.psnr,
                         "latent": "x".join(map(str, ae.config.latent_shape)),
                         "bits_per_image": math.prod(ae.config.latent_shape),
                         "params_M": sum(q.numel() for q in ae.parameters()) / 1e6})
            log.info("%s", rows[-1])
            shutil.rmtree(out, ignore_errors=True)
    bench.results = {"preset": args.preset, "data": args.data, "test_images": len(xt),
                     "rows": rows}
    common.write_report(bench, "Colour autoencoders at equal training seconds", [
        f"Preset `{args.preset}` with each arm's overrides, trained on `{args.data}` (batch "
        f"{rows[0]['batch_size'] if rows else '?'}); PSNR over {len(xt)} test images. "
        "`train_s` includes loading the data and writing the checkpoint.", "",
        common.markdown_table(rows, ["arm", "overrides", "steps", "train_s", "s_per_step", "psnr",
                                     "latent", "bits_per_image", "params_M"])])


if __name__ == "__main__":
    main()
