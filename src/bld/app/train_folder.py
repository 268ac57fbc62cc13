"""`bld train FOLDER --out DIR`: from a folder of the user's images to a trained model in
one command.

1. Survey the folder (bld.data.survey): images per class, sizes, grey or colour,
   transparency, unreadable files; choose the training size and colours from them.
2. Prepare DIR/data: every image at that size (the shorter side resized, the centre
   cropped), transparency composited on --background, classes below --min-class-images
   merged into ``other`` or dropped, a manifest whose split is stratified by class.
3. Run the demo's job on DIR/data (bld.app.demo: the FD classifier, the time plan inside
   --minutes, autoencoder, encoding, prior, samples, report), with the autoencoder's grid
   and bits from a short probe of two or three settings at equal seconds
   (bld.app.probe), unless --bits or --no-probe fix them.
4. Add to the report what was found and done to the folder, the probe's table and which
   stage limits the samples, with next steps (bld.app.diagnose).

Every stage is recorded in DIR, so --resume reuses the finished ones.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..core.config import ConfigError

log = logging.getLogger("bld")


@dataclass
class TrainFolderSettings:
    folder: Path
    out: Path
    minutes: float = 20.0  # the whole job's budget (0: the presets' steps, no plan)
    size: int | None = None  # None: from the images (bld.data.survey.choose_size)
    background: str = "white"  # where transparency is composited: white, black, #rrggbb
    min_class_images: int = 8
    test_share: float = 0.1
    bits: int | None = None  # bits per grid position; given, no probe
    probe: bool = True
    probe_seconds: float | None = None  # each setting's; None: bld.app.probe.probe_seconds
    resume: bool = False
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    # the demo's step counts and evaluation (not on the command line's help: quick checks)
    ae_steps: int | None = None
    prior_steps: int | None = None
    classifier_steps: int | None = None
    eval_samples: int = 1000
    samples_per_class: int = 10


def _size_words(survey, size: int, given: bool) -> str:
    if given:
        return f"{size} px (--size)"
    return (f"{size} px: the images' median shorter side is {survey.median_short_side():g} "
            "px, rounded down to a supported size")


def _batch_overrides(preset: str, n_train: int) -> dict[str, list[str]]:
    """Both models' batch at most the training images (a small folder has fewer than the
    presets' 32 or 64)."""
    from ..core.config import load_config_dict
    out = {}
    for kind in ("autoencoder", "prior"):
        batch = load_config_dict(kind, preset, [])["optim"]["batch_size"]
        if n_train < batch:
            out[kind] = [f"optim.batch_size={n_train}"]
    return out


def train_folder(t: TrainFolderSettings) -> dict[str, Any]:
    """Run `bld train` (see the module's docstring). -> the report."""
    from ..data.survey import (choose_channels, choose_size, parse_background, prepare_folder,
                               survey_folder)
    from .demo import DemoSettings, run_demo
    from .diagnose import diagnose
    from .probe import (Capacity, capacities, capacity_overrides, preset_for, probe_seconds,
                        run_probe)
    started = time.perf_counter()
    out = Path(t.out)
    if out.exists() and any(out.iterdir()) and not t.resume:
        raise ConfigError(f"{out} is not empty; pass --resume to reuse its finished stages "
                          "or choose another --out")
    parse_background(t.background)  # a bad colour fails before the survey
    if t.probe_seconds is not None and t.probe_seconds <= 0:
        raise ConfigError(f"--probe-seconds must be above 0, got {t.probe_seconds:g}")
    log.info("surveying %s", t.folder)
    survey = survey_folder(t.folder)
    channels = choose_channels(survey, t.background)
    size = t.size or choose_size(survey, channels)
    summary = survey.summary()
    log.info("%d readable images%s; %d distinct sizes (commonest %s); %s; %d with "
             "transparency; %d unreadable", summary["images"],
             f" in {len(summary['classes'])} classes" if survey.labelled else ", no classes",
             summary["distinct_sizes"], next(iter(summary["sizes"])),
             "all greyscale" if survey.grey else "colour", survey.transparent,
             summary["unreadable"])
    log.info("training at %s, %s", _size_words(survey, size, t.size is not None),
             "greyscale" if channels == 1 else "RGB")
    prepared = prepare_folder(survey, out / "data", image_size=size, channels=channels,
                              background=t.background, min_class_images=t.min_class_images,
                              test_share=t.test_share)
    for note in prepared.notes():
        log.info("%s", note)
    caps = capacities(size)
    preset = preset_for(size)
    batch = _batch_overrides(preset, prepared.split_counts["train"])

    def overrides_for(cap: Capacity) -> dict[str, list[str]]:
        over = capacity_overrides(size, channels, cap)
        return {k: v + batch.get(k, []) for k, v in over.items()}

    fixed = None
    if t.bits is not None or not t.probe:
        fixed = Capacity(caps[0].grid, t.bits or caps[0].bits)
    conditional = bool(prepared.classes)
    if not conditional and t.eval_samples:
        log.info("no classes: no FD classifier, so the report has no class accuracy, FD or "
                 "recall, only the reconstructions' PSNR and colour error")
    s = DemoSettings(out=out, dataset="folder", source=str((out / "data").resolve()),
                     preset=preset, image_size=size, channels=channels,
                     overrides=overrides_for(fixed or caps[0]),
                     compact="faces" if preset == "faces64" else "", minutes=t.minutes,
                     seed=t.seed, device=t.device, precision=t.precision,
                     eval_samples=t.eval_samples if conditional else 0,
                     samples_per_class=t.samples_per_class,
                     classifier_steps=t.classifier_steps, started=started,
                     resume=True)  # this folder was checked above; it may hold data/ now
    s.ae_steps, s.prior_steps = t.ae_steps, t.prior_steps
    probe: dict[str, Any] = {}

    def before_plan(train_set, test_set, clf, device, precision) -> None:
        if fixed is not None:
            log.info("autoencoder latent %s (%s): no probe", fixed.name,
                     "--bits" if t.bits is not None else "--no-probe")
            return
        seconds = t.probe_seconds or probe_seconds(t.minutes, len(caps))
        probe.update(run_probe(s, out, caps, overrides_for, seconds, train_set, test_set, clf,
                               device, precision))
        s.overrides = overrides_for(Capacity(probe["grid"], probe["bits"]))
        s.timings["probe_s"] = probe["total_s"]

    report = run_demo(s, before_plan)
    report["command"] = "train"
    report["settings"]["resume"] = t.resume
    report["train"] = {**{k: str(v) if isinstance(v, Path) else v for k, v in asdict(t).items()},
                       "image_size": size, "channels": channels,
                       "size_reason": _size_words(survey, size, t.size is not None),
                       "latent": (fixed.name if fixed else probe.get("picked"))}
    report["folder"] = summary
    report["prepared"] = prepared.as_dict()
    report["probe"] = probe or None
    # --bits B trains the presets' grid (caps[0]'s): the B that doubles this latent's bits
    bits, grid = report["autoencoder"]["latent_shape"][:2]
    more_bits = 2 * bits * grid ** 2 // caps[0].grid ** 2
    report["diagnosis"] = diagnose(report["figures"], minutes=t.minutes or None,
                                   more_bits=more_bits if more_bits <= 1024 else None)
    from .demo_report import report_markdown
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(report_markdown(report, train_sections(report)))
    for line in report["diagnosis"]:
        log.info("diagnosis: %s", line)
    first = f" --class {prepared.classes[0]}" if prepared.classes else ""
    log.info("next: bld sample --prior %s%s -n 16 --out samples.png; bld serve %s", out, first,
             out)
    return report


def train_sections(r: dict[str, Any]) -> list[str]:
    """The Markdown `bld train` adds to the demo's report: the diagnosis, the folder and
    what was done to it, the probe."""
    from .probe import probe_markdown
    f, p, t = r["folder"], r["prepared"], r["train"]
    classes = ", ".join(f"{c} {n}" for c, n in f["classes"].items()) or "none (unconditional)"
    sizes = ", ".join(f"{k} ({n})" for k, n in f["sizes"].items())
    lines = ["## Diagnosis", "", *[f"- {line}" for line in r["diagnosis"]], "",
             "## Your folder", "",
             f"`{f['folder']}`: {f['images']} readable images; classes: {classes}. Sizes "
             f"seen ({f['distinct_sizes']} distinct, commonest first): {sizes}. "
             f"{'All greyscale' if f['grey'] else 'Colour'}; {f['transparent_images']} with "
             f"transparency; {f['unreadable']} unreadable.", "",
             f"Training at {t['size_reason']}, {'greyscale' if t['channels'] == 1 else 'RGB'}; "
             "every image's shorter side resized to it and the centre cropped.", "",
             *[f"- {note}" for note in p["notes"]], ""]
    if r.get("probe"):
        lines += probe_markdown(r["probe"])
    else:
        lines += [f"Autoencoder latent {t['latent']} (grid x grid x bits): "
                  f"{'--bits' if t['bits'] else '--no-probe'}, no probe.", ""]
    return lines
