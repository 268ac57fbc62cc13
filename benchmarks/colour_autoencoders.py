"""Colour autoencoders at equal training seconds: which architecture the 20-minute colour demo
can afford on a 2-core CPU.

Each arm is a set of config overrides on an autoencoder preset, trained through the library's
`train_autoencoder` on a colour dataset (default the DiceBear faces of `bld prepare-dicebear`)
for a step count chosen so that the arms take about the same seconds; reported: training
seconds, seconds per step, PSNR over the whole test split (one definition everywhere:
10 log10(4 / MSE), images in [-1, 1]), the latent's size and, with an FD classifier of the
dataset (--classifier, e.g. a faces demo run's classifier/), the reconstructions' FD,
precision, recall and class accuracy at N = 1000 (the demo's definitions). Each finished arm
is kept in --work, so that two 1-thread processes can split the arms (`--arms A` and
`--arms B`) and a last call with every arm writes the report. Run it under the AVX2
restriction to measure the CPU the colour demo is budgeted for:

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 \\
        python benchmarks/colour_autoencoders.py --name colour_autoencoders_avx2
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 \\
        python benchmarks/colour_autoencoders.py --preset faces64 \\
        --classifier runs/demo-faces/classifier --name colour_autoencoders_faces_avx2
    python benchmarks/colour_autoencoders.py --quick     # 20 steps of 8 per arm, 200 test images
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

import common  # noqa: F401  (sys.path set-up; imported before bld on purpose)
import torch

log = logging.getLogger("bench")

# preset -> {name: (overrides, steps)}. emoji64's steps give each arm about 155 s in fp32 under
# the AVX2 restriction on this project's CPU (timed training steps: 181 ms for the patch-4
# arms, 260 ms for patch 2). faces64's give each about the demo's 365 s (2-thread fp32 steps
# timed under the AVX2 restriction: 152 ms for the preset, 197 ms for the 16x16 grid at width
# 64, 136 ms at width 48).
_W48 = ["model.channels=48", "model.channel_mult=[1]"]  # the faces64 preset's 16x16 grid
_B32 = _W48 + ["model.bits=32"]
# the faces64 preset trains with an edge term (loss.edge_weight 2) since stop 25: the arms
# measured before it pin the term off, as they were measured
_NO_EDGE = ["loss.edge_weight=0.0"]
ARMS = {
    "emoji64": {
        "patch4-w48-bits32": (["model.patch=4", "model.channels=48", "model.channel_mult=[1,2]"],
                              800),
        "patch4-w48-bits64": (["model.patch=4", "model.channels=48", "model.channel_mult=[1,2]",
                               "model.bits=64"], 800),
        "patch2-w32-bits32": (["model.patch=2", "model.channels=32", "model.channel_mult=[1,2,2]"],
                              560),
    },
    "faces64": {
        # the faces demo's first autoencoder (the preset faces64-grid8)
        "grid8-w48-bits64": (["model.channels=48", "model.channel_mult=[1,2]", "model.bits=64"]
                             + _NO_EDGE, 2400),
        "grid16-w64-bits16": (["model.channels=64", "model.channel_mult=[1]", "model.bits=16"]
                              + _NO_EDGE, 1850),
        "grid16-w48-bits16": (_W48 + ["model.bits=16"] + _NO_EDGE, 2680),
        "grid16-w48-bits32": (_B32 + _NO_EDGE, 2680),
        # grid16-w48-bits32 (the preset before the edge term) with an L1 loss instead of MSE,
        # and with a small PatchGAN (16 channels, 2 layers, adaptive weight) from step 1000:
        # its steps cost 1.46x (376 ms against 258 ms, 1 thread), so 2150 steps take the
        # 2680 steps' seconds
        # 64 bits per position: an autoencoder step costs the same (263 ms against 263 ms)
        "bits64": (_W48 + ["model.bits=64"] + _NO_EDGE, 2680),
        "bits32-l1": (_B32 + ["loss.l1_weight=1.0", "loss.mse_weight=0.0"] + _NO_EDGE, 2680),
        "bits32-gan16": (_B32 + ["loss.disc_weight=0.5", "loss.disc_start=1000",
                                 "loss.disc_channels=16", "loss.disc_layers=2"] + _NO_EDGE, 2150),
        # grid16-w48-bits32 with a gradient (edge) loss beside MSE (weight 2: the preset now):
        # the same cost per step (375 ms against 369 ms, 1 thread, AVX2)
        "bits32-edge": (_B32 + ["loss.edge_weight=1.0"], 2680),
        "bits32-edge2": (_B32 + ["loss.edge_weight=2.0"], 2680),
    },
}
EVAL_N = 1000  # reconstructions measured against the reference half, as `bld demo` does


def _signature(args, over: list[str], steps: int, seed: int, test_images: int,
               clf_meta) -> dict:
    """The settings an arm is kept with (`common.kept_result`): reused only if all match."""
    return {"preset": args.preset, "data": args.data, "overrides": over, "steps": steps,
            "seed": seed, "test_images": test_images,
            "classifier": clf_meta.get("path") if clf_meta else None}


def _other_seeds(work: Path, arms: dict, args, test_images: int, clf_meta) -> list[dict]:
    """Arms of this preset kept in ``work`` with another seed than ``args.seed`` (a call with
    ``--seed K --arms A``), measured as this call would: reported beside the rest."""
    rows = []
    for path in sorted(work.glob("*-s*.json")):
        name, _, k = path.stem.rpartition("-s")
        if name not in arms or not k.isdigit() or int(k) == args.seed:
            continue
        over, steps = arms[name]
        saved = common.kept_result(path, _signature(args, over, 20 if args.quick else steps,
                                                    int(k), test_images, clf_meta))
        if saved is not None:
            rows.append({**saved["row"], "seed": int(k)})
    return rows


def main() -> None:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--preset", default="emoji64", choices=list(ARMS),
                   help="autoencoder preset the arms override")
    p.add_argument("--data", default="dicebear", help="colour dataset (a bld data source)")
    p.add_argument("--arms", nargs="+", default=None,
                   help="arms to train (default: all of the preset's); the report needs all")
    p.add_argument("--name", default=None, help="file name of the results (default "
                   "colour_autoencoders, or colour_autoencoders_<preset> for a preset other "
                   "than emoji64)")
    p.add_argument("--work", type=Path, default=None,
                   help="where each finished arm is kept (default runs/<name>, runs/quick/<name> "
                   "with --quick)")
    args = p.parse_args()
    arms = ARMS[args.preset]
    chosen = args.arms or list(arms)
    unknown = [a for a in chosen if a not in arms]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown} for preset {args.preset}; its arms: "
                         f"{list(arms)}")
    args.name = args.name or ("colour_autoencoders" if args.preset == "emoji64"
                              else f"colour_autoencoders_{args.preset}")
    bench = common.setup(args.name, args, "~3 min per arm for emoji64, ~6 min for faces64 "
                                          "(2 threads, AVX2)")
    from bld.core.config import config_from_dict, load_config_dict
    from bld.core.loading import load_autoencoder
    from bld.data import build_dataset, dataset_tensors
    from bld.evaluation.evaluate import evaluate_autoencoder
    from bld.training.loop import train_autoencoder
    test_set = build_dataset(args.data, split="test")
    classes = list(test_set.classes)
    xt, yt = dataset_tensors(test_set, limit=200 if args.quick else None)
    clf = clf_meta = ref = None
    if args.classifier is not None:
        clf, clf_meta = common.get_classifier(bench, None, args.data)
        ref = common.FDReference(clf, xt, yt, min(EVAL_N, len(xt) // 2), seed=0)
    work = args.work or Path("runs") / ("quick" if args.quick else "") / args.name
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in chosen:
        over, steps = arms[name]
        steps = 20 if args.quick else steps
        # quick mode (a smoke test of the script): 20 steps of batch 8
        quick = ["optim.batch_size=8"] if args.quick else []
        signature = _signature(args, over, steps, args.seed, len(xt), clf_meta)
        kept = work / (f"{name}.json" if args.seed == 0 else f"{name}-s{args.seed}.json")
        saved = common.kept_result(kept, signature)
        if saved is not None:
            log.info("%s: kept in %s", name, kept)
            rows.append({**saved["row"], "seed": args.seed})
            continue
        cfg = config_from_dict("autoencoder", load_config_dict(
            "autoencoder", args.preset, over + [
                f"data.source={args.data}", f"optim.steps={steps}", f"run.seed={args.seed}",
                "run.sample_every=0", "run.ckpt_every=0"] + quick))
        out = work / f"{name}-model"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        train_autoencoder(cfg, out)
        seconds = time.perf_counter() - t0
        ae = load_autoencoder(out, "cpu")
        rec = evaluate_autoencoder(ae, xt)
        row = {"arm": name, "overrides": " ".join(over), "steps": steps,
               "batch_size": cfg.optim.batch_size, "train_s": seconds,
               "s_per_step": seconds / steps, "psnr": rec["psnr"], "ssim": rec["ssim"],
               "latent": "x".join(map(str, ae.config.latent_shape)),
               "bits_per_image": math.prod(ae.config.latent_shape),
               "params_M": sum(q.numel() for q in ae.parameters()) / 1e6,
               "threads": torch.get_num_threads(), "seed": args.seed}
        if ref is not None:
            # the demo's reconstruction figures: the floor half's reconstructions against the
            # reference half (`bld.evaluation.evaluate.evaluate_prior`)
            r = evaluate_autoencoder(ae, ref.floor, clf, ref.reference)
            from bld.evaluation.classifier import class_shares, predict, prediction_accuracy
            with torch.no_grad():
                recon = torch.cat([ae(ref.floor[i:i + 250], deterministic=True).recon.clamp(-1, 1)
                                   for i in range(0, len(ref.floor), 250)])
            pred = predict(clf, recon)  # classified once, for both figures
            per = class_shares(pred, ref.floor_labels, len(classes))
            worst = min((a, c) for a, c in zip(per, classes) if a is not None)
            row.update({"fd_recon": r["fd_recon"], "recon_precision": r["recon_precision"],
                        "recon_recall": r["recon_recall"],
                        "recon_class_accuracy": prediction_accuracy(pred, ref.floor_labels),
                        "worst_class": f"{worst[1]} {worst[0]:.3f}"})
        shutil.rmtree(out, ignore_errors=True)
        common.keep_result(kept, signature, row=row)
        rows.append(row)
        log.info("%s", row)
    missing = [a for a in arms if a not in chosen]
    if args.arms and missing:
        log.info("arms %s kept in %s; run without --arms to write the report", chosen, work)
        return
    rows += _other_seeds(work, arms, args, len(xt), clf_meta)
    bench.results = {"preset": args.preset, "data": args.data, "test_images": len(xt),
                     "classifier": clf_meta, "rows": rows}
    cols = ["arm", "seed", "overrides", "steps", "threads", "train_s", "s_per_step", "psnr", "ssim",
            "latent", "bits_per_image", "params_M"]
    if ref is not None:
        cols += ["fd_recon", "recon_precision", "recon_recall", "recon_class_accuracy",
                 "worst_class"]
    common.write_report(bench, "Colour autoencoders at equal training seconds", [
        f"Preset `{args.preset}` with each arm's overrides, trained on `{args.data}` (batch "
        f"{rows[0]['batch_size'] if rows else '?'}); PSNR and SSIM over {len(xt)} test images. "
        "`train_s` includes loading the data and writing the checkpoint."
        + (f" Reconstruction FD, precision, recall and class accuracy: N = {ref.n} test images "
           f"against the other half, in the features of the classifier at "
           f"`{clf_meta.get('path')}` (test accuracy {clf_meta.get('test_accuracy')})."
           if ref is not None else ""), "",
        common.markdown_table(rows, cols)])


if __name__ == "__main__":
    main()
