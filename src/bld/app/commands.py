"""What each ``bld`` sub-command does once `bld.app.cli` has parsed it: a few lines each that
call library functions (the training loop, the pipeline, evaluation, the web app).

Every import of the library is made inside the command that needs it, so a command loads
only its own modules (`bld sample` never loads the training code). Imports nothing of bld at
import time but config; `bld.app.cli` imports this module, never the other way round.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from ..core.config import ConfigError, load_config_dict

log = logging.getLogger("bld")


def cmd_train(args, kind: str, overrides: list[str]) -> None:
    """train-ae / train-prior: the config (preset or YAML, then ``overrides``), then the loop."""
    from ..core.config import config_from_dict
    from ..training.loop import train_autoencoder, train_prior
    cfg = config_from_dict(kind, load_config_dict(kind, args.config, overrides))
    fn = train_autoencoder if kind == "autoencoder" else train_prior
    path = fn(cfg, args.out, resume=args.resume, allow_config_change=args.allow_config_change)
    log.info("done: %s", path)


def load_teacher(teacher: str, device: str = "auto"):
    """The teacher pipeline of `bld distill`: a shipped model's name or any folder
    `from_run` takes, checked (`bld.training.student.check_teacher`)."""
    from ..inference.pipeline import BinaryLatentDiffusionPipeline
    from ..training.student import check_teacher
    pipe = BinaryLatentDiffusionPipeline.from_run(_named(teacher), device=device)
    check_teacher(pipe, teacher)
    return pipe


def cmd_distill(args) -> None:
    """distill: the teacher's pairs, then the student, in the one training loop."""
    from ..models.sampling import check_student
    from ..training.student import distill
    check_student(args.design, args.steps)
    overrides = list(args.overrides)
    for flag, key in (("pair_dir", "student.pair_dir"), ("pair_sampler", "student.pair_sampler"),
                      ("mixture", "student.mixture")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    path = distill(load_teacher(args.teacher, args.device), args.teacher, args.design,
                   args.steps, args.out, pairs=args.pairs,
                   train_steps=args.train_steps, minutes=args.minutes, seed=args.seed,
                   device=args.device, precision=args.precision, batch_size=args.batch_size,
                   overrides=overrides, resume=args.resume,
                   allow_config_change=args.allow_config_change,
                   pairs_only=args.pairs_only)
    log.info("done: %s%s", path, "" if args.pairs_only else
             f" (sample it with `bld sample --prior {args.out}`)")


def _autoencoder_data(path: str):
    """The DataConfig an autoencoder was trained with (its checkpoint's config)."""
    from ..core import checkpoint as ckpt
    from ..core.config import config_from_dict
    return config_from_dict("autoencoder", ckpt.load_checkpoint(path, "autoencoder").config).data


def _device(name: str):
    from ..core.device import resolve_device
    return resolve_device(name)


def _load_pipeline(args):
    from ..inference.pipeline import BinaryLatentDiffusionPipeline
    return BinaryLatentDiffusionPipeline.from_run(_model(args), autoencoder=args.autoencoder,
                                                  device=args.device, precision=args.precision)


def _model(args) -> Path:
    """The folder --model (a shipped model's name, or a folder) or --prior names."""
    return _named(args.model) if args.model else Path(args.prior)


def _named(name_or_folder: str) -> Path:
    """A shipped model's folder for its name, or the folder given."""
    from ..inference.zoo import ZooError, resolve_model
    try:
        return resolve_model(name_or_folder)
    except ZooError as e:
        raise ConfigError(str(e)) from None


def cmd_models(args) -> None:
    import json

    from ..inference import zoo
    models = zoo.list_models()
    classifiers = zoo.classifier_names()
    if args.json:
        print(json.dumps({"models": [{"name": m.name, "dataset": m.dataset,
                                      "classes": m.classes, "size_mb": round(m.size_mb, 2),
                                      "figures": m.figures, "path": str(m.path)}
                                     for m in models], "classifiers": classifiers}, indent=2))
        return
    print(f"shipped models ({zoo.ZOO_DIR}):")
    print("\n".join(f"  {m.summary()}" for m in models) or "  none")
    print(f"shipped FD classifiers: {', '.join(classifiers) or 'none'}")
    if models:
        print(f"load one: bld sample --model {models[0].name} -n 16 --out samples.png")


def _sampling_kwargs(args) -> dict:
    return dict(class_labels=args.classes, n=args.num, steps=args.steps,
                temperature=args.temperature, evidence_weight=args.evidence_weight,
                guidance=args.guidance, guidance_interval=_interval(args), seed=args.seed,
                output_type="pt")


def _interval(args) -> tuple[float, float] | None:
    """--guidance-interval LO HI as a tuple (None: the prior's own)."""
    if args.guidance_interval is None:
        return None
    from ..models.sampling import check_guidance_interval
    try:
        return check_guidance_interval(args.guidance_interval, "--guidance-interval")
    except ValueError as e:
        raise ConfigError(str(e)) from None


def cmd_sample(args) -> None:
    from ..core.plots import image_grid, save_image
    pipe = _load_pipeline(args)
    res = pipe(**_sampling_kwargs(args), batch_size=args.batch_size, progress=True)
    save_image(image_grid(res.images, nrow=args.nrow), args.out, scale=args.scale)
    if args.individual:
        for i, img in enumerate(res.images):
            save_image(img, Path(args.individual) / f"{i:05d}.png")
    log.info("wrote %s (%d images, %d steps, %.3f s/image)", args.out, args.num,
             args.steps or pipe.default_steps, res.seconds / args.num)


def _check_mask(mask_path: str, image_path: str) -> None:
    """The mask must be black-and-white (mode 1 or L) and the size of the image."""
    from ..data import open_image
    with open_image(mask_path) as mask, open_image(image_path) as image:
        if mask.mode not in ("1", "L"):
            raise ValueError(f"mask {mask_path} is a {mask.mode} image; save it as black-and-white "
                             "(greyscale, white = keep, black = fill in)")
        if mask.size != image.size:
            raise ValueError(f"mask {mask_path} is {mask.size[0]}x{mask.size[1]} but image "
                             f"{image_path} is {image.size[0]}x{image.size[1]}; make them the "
                             "same size")


def cmd_inpaint(args) -> None:
    import torch

    from ..core.plots import image_grid, save_image
    from ..data import load_image
    pipe = _load_pipeline(args)
    c = pipe.autoencoder.config
    image = load_image(args.image, c.image_size, c.in_channels)
    _check_mask(args.mask, args.image)
    keep = load_image(args.mask, c.image_size, 1)[0] > 0  # white = keep
    res = pipe.inpaint(image, ~keep, **_sampling_kwargs(args), paste=True)
    masked = torch.where(keep, image, torch.zeros_like(image))
    save_image(image_grid(torch.cat([image[None], masked[None], res.images]),
                          nrow=args.num + 2), args.out)
    log.info("wrote %s (input, masked input, %d completions)", args.out, args.num)


def cmd_reconstruct(args) -> None:
    import torch

    from ..core.loading import load_autoencoder
    from ..core.plots import image_grid, save_image
    from ..data import build_dataset, load_image
    from ..inference.generate import reconstruct
    device = _device(args.device)
    ae = load_autoencoder(args.autoencoder, device)
    c = ae.config
    if args.images:
        images = torch.stack([load_image(p, c.image_size, c.in_channels) for p in args.images])
    else:
        source = args.data or _autoencoder_data(args.autoencoder).source
        ds = build_dataset(source, split="test", image_size=c.image_size, channels=c.in_channels,
                           data_dir=args.data_dir)
        images = torch.stack([ds[i][0] for i in range(min(args.num, len(ds)))])
    res = reconstruct(ae, images, precision=args.precision)
    save_image(image_grid(torch.cat([images, res.recon]), nrow=len(images)), args.out)
    print(f"L1 {res.l1:.4f}  MSE {res.mse:.5f}  PSNR {res.psnr:.2f} dB  ({len(images)} images)")


def cmd_encode(args) -> None:
    from ..core.loading import load_autoencoder
    from ..data import LimitedDataset, build_dataset
    from ..inference.generate import encode_dataset
    device = _device(args.device)
    ae = load_autoencoder(args.autoencoder, device)
    ae_data = _autoencoder_data(args.autoencoder)
    source = args.data or ae_data.source
    ds = build_dataset(source, split=args.split, image_size=ae.config.image_size,
                       channels=ae.config.in_channels,
                       data_dir=args.data_dir or ae_data.data_dir or None)
    if 0 < args.limit < len(ds):
        ds = LimitedDataset(ds, args.limit)
    path = encode_dataset(ae, ds, args.out, batch_size=args.batch_size, device=device,
                          precision=args.precision,
                          metadata={"source": source, "split": args.split,
                                    "autoencoder": args.autoencoder})
    log.info("wrote %s (%d latents of shape %s, %d bytes each)", path, len(ds),
             ae.config.latent_shape, (ae.config.bits * ae.config.grid ** 2 + 7) // 8)


def cmd_shard(args) -> None:
    from ..data import DATASET_SOURCES, build_dataset, write_shards
    if args.source not in DATASET_SOURCES and Path(args.source).is_dir() and not args.image_size:
        raise ConfigError(f"pass --image-size for the image folder {args.source}")
    ds = build_dataset(args.source, split=args.split, image_size=args.image_size,
                       channels=args.channels, data_dir=args.data_dir)
    if hasattr(ds, "scan"):  # an image folder: unreadable files are left out, not repeated
        ds.scan()
    keep = [i for i in range(len(ds)) if i not in getattr(ds, "unreadable", ())]
    res = write_shards(ds, args.out_dir, args.shard_size, indices=keep[:args.limit or None],
                       seed=args.seed, source=args.source, split=args.split)
    print(f"{res.num_samples} samples in {res.num_shards} shards at {res.root} "
          f"({res.num_samples / max(res.seconds, 1e-9):.0f} images/s); train with --data {res.root}")


def cmd_prepare_emoji(args) -> None:
    from ..data import prepare_emoji
    res = prepare_emoji(args.vendor, args.dest)
    print(f"{res.num_images} images in {len(res.categories)} categories at {res.root}")


def cmd_prepare_openmoji(args) -> None:
    from ..data import prepare_openmoji
    r = prepare_openmoji(args.size, args.dest, skin_tones=args.skin_tones, tarball=args.tarball)
    print(f"{r.num_images} images of {args.size} px in {len(r.categories)} classes at {r.root}: "
          + ", ".join(f"{k} {v}" for k, v in r.categories.items())
          + (f"; {r.skipped} SVG{'s' if r.skipped > 1 else ''} could not be drawn and skipped" if r.skipped else ""))


def cmd_prepare_dicebear(args) -> None:
    from ..data import DICEBEAR_DEFAULT_STYLES, prepare_dicebear
    from ..data.folder import read_manifest_splits
    r = prepare_dicebear(args.size, args.dest, per_style=args.per_style, tarballs=args.tarballs,
                         styles=tuple(args.styles or DICEBEAR_DEFAULT_STYLES))
    test = sum(v == "test" for v in read_manifest_splits(r.root).values())
    print(f"{r.num_images} faces of {args.size} px in {len(r.categories)} classes "
          f"({r.num_images - test} train, {test} test) at {r.root}: "
          + ", ".join(f"{k} {v}" for k, v in r.categories.items())
          + (f"; {r.skipped} SVG{'s' if r.skipped > 1 else ''} could not be drawn and skipped" if r.skipped else ""))


def cmd_train_classifier(args) -> None:
    from ..evaluation.evaluate import train_and_save_classifier
    res = train_and_save_classifier(args.data, args.out, steps=args.steps, seed=args.seed,
                                    data_dir=args.data_dir, image_size=args.image_size,
                                    channels=args.channels)
    print(f"classifier test accuracy {res.test_accuracy:.4f}; saved to {args.out}")


def cmd_eval(args) -> None:
    import dataclasses

    from ..core.loading import load_autoencoder
    from ..core.plots import image_grid, save_image
    from ..data import build_dataset, dataset_tensors
    from ..evaluation.evaluate import (evaluate_autoencoder, evaluate_prior, load_classifier,
                                       real_reference, shipped_classifier, write_report)
    device = _device(args.device)
    prior = None
    if args.model or args.prior:  # a run, a save_pretrained folder or a shipped model
        pipe = _load_pipeline(args)
        prior, ae, ae_data = pipe.prior, pipe.autoencoder, dict(pipe.data)
    elif args.autoencoder:
        ae = load_autoencoder(args.autoencoder, device)
        ae_data = dataclasses.asdict(_autoencoder_data(args.autoencoder))
    else:
        raise ConfigError("pass --model NAME, --prior FOLDER or --autoencoder FOLDER")
    source, data_dir = args.data or ae_data.get("source"), args.data_dir or ae_data.get("data_dir")
    test = build_dataset(source, "test", ae.config.image_size, ae.config.in_channels,
                         data_dir or None)
    xt, _ = dataset_tensors(test)
    classifier = args.classifier or shipped_classifier(source, data_dir)
    if classifier is None:
        raise ConfigError(f"no FD classifier ships for {source!r} (`bld models` lists those "
                          "that do): train one with `bld train-classifier --data ... --out DIR` "
                          "and pass --classifier DIR")
    clf, meta = load_classifier(classifier, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"classifier": {"path": str(classifier), "shipped": not args.classifier, **meta}}
    if prior is None:
        reference, floor = real_reference(xt, min(args.num, len(xt) // 2), seed=args.seed)
        report["autoencoder"] = evaluate_autoencoder(ae, floor, clf, reference)
    else:
        steps = args.steps or pipe.default_steps
        ev = evaluate_prior(prior, ae, clf, xt, n=args.num, steps=steps,
                            temperature=(prior.config.sample_temperature if args.temperature is None
                                         else args.temperature),
                            evidence_weight=args.evidence_weight,
                            guidance=(prior.config.sample_guidance if args.guidance is None
                                      else args.guidance),
                            guidance_interval=_interval(args) or
                            tuple(prior.config.sample_guidance_interval),
                            seed=args.seed, conditional=not args.unconditional,
                            precision=args.precision)
        images, per_class = ev.pop("images"), ev.pop("samples_per_class")
        ev.pop("labels")
        save_image(image_grid(images[:100], nrow=10), out / "samples.png")
        _eval_figures(prior, ae, ae_data, test, xt, out, args, steps)
        report.update(ev)
        if per_class is not None:  # which classes the samples miss
            names = list(prior.classes) or [str(c) for c in range(len(per_class))]
            report["samples_classified_as_asked_per_class"] = dict(zip(names, per_class))
    print(write_report(report, out))


def _eval_figures(prior, ae, ae_data, test, xt, out: Path, args, steps: int) -> None:
    """The denoising trajectory and, for a conditional prior, per-class rows of samples
    beside real test images."""
    from ..data import dataset_tensors
    from ..inference.pipeline import BinaryLatentDiffusionPipeline
    from .figures import class_rows_figure, trajectory_figure
    pipe = BinaryLatentDiffusionPipeline(ae, prior, ae_data, args.precision)
    sampling = dict(steps=steps, temperature=args.temperature, seed=args.seed,
                    evidence_weight=args.evidence_weight, guidance=args.guidance,
                    guidance_interval=_interval(args))
    trajectory_figure(pipe, out / "trajectory.png", **sampling)
    if pipe.num_classes and not args.unconditional:
        class_rows_figure(pipe, xt, dataset_tensors(test)[1], out / "class_rows.png", **sampling)


def cmd_serve(args) -> None:
    from .serve import Limits, is_loopback, logins, serve
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port must be 1..65535, got {args.port}")
    auth = logins(args.host, args.auth, args.auth_file, args.no_auth)
    import importlib.util
    if importlib.util.find_spec("gradio") is None:  # not imported yet: serve sets its folders
        raise ConfigError("bld serve needs gradio: pip install 'binary-latent-diffusion[web]'")
    if auth is None and not is_loopback(args.host):
        print(f"bld serve: warning: serving {args.host}:{args.port} without a login "
              "(--no-auth): anyone who can reach it can use the app", file=sys.stderr)
    if (args.run_dir is None) == (args.model is None):
        raise ConfigError("bld serve takes a run folder or --model NAME_OR_FOLDER (one of them)")
    serve(_named(args.model or args.run_dir), host=args.host, port=args.port, device=args.device, auth=auth,
          precision=args.precision,
          limits=Limits(max_images=args.max_images, keep_files=args.keep_files))


def cmd_doctor(args) -> None:
    import json

    from .doctor import collect, render
    level = log.level
    if not args.verbose:  # the precision's reason is in the report: no log line beside it
        log.setLevel(logging.WARNING)
    try:
        report = collect(args.dataset)
    finally:
        log.setLevel(level)
    print(json.dumps(report, indent=2) if args.json else render(report))


def cmd_demo(args) -> None:
    from .demo import run_demo
    run_demo(demo_settings(args))


def demo_settings(args):
    """`bld demo`'s parsed arguments as settings."""
    from .demo import DEMO_DATASETS, DemoSettings
    s = DemoSettings(out=Path(args.out or DEMO_DATASETS[args.dataset][2]), dataset=args.dataset,
                     device=args.device, precision=args.precision, minutes=args.minutes,
                     seed=args.seed, limit=args.limit, eval_samples=args.eval_samples,
                     resume=args.resume, samples_per_class=args.samples_per_class,
                     classifier_steps=args.classifier_steps, classifier=args.classifier or "",
                     evidence_weight=args.evidence_weight, guidance=args.guidance,
                     guidance_interval=_interval(args), temperature=args.temperature,
                     data_dir=args.data_dir or "", autoencoder=args.autoencoder or "",
                     train_autoencoder=args.train_autoencoder)
    s.ae_steps, s.prior_steps = args.ae_steps, args.prior_steps
    return s


def cmd_train_folder(args) -> None:
    """`bld train FOLDER --out DIR` (bld.app.train_folder)."""
    from .train_folder import TrainFolderSettings, train_folder
    train_folder(TrainFolderSettings(
        folder=Path(args.folder), out=Path(args.out), minutes=args.minutes, size=args.size,
        background=args.background, min_class_images=args.min_class_images,
        test_share=args.test_share, bits=args.bits, probe=not args.no_probe,
        probe_seconds=args.probe_seconds, resume=args.resume, seed=args.seed,
        device=args.device, precision=args.precision, ae_steps=args.ae_steps,
        prior_steps=args.prior_steps, classifier_steps=args.classifier_steps,
        eval_samples=args.eval_samples, samples_per_class=args.samples_per_class))
