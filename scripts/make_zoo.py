"""Put trained models and FD classifiers into the model zoo (src/bld/zoo), as the cards say.

    # the FD classifier of a built-in dataset (trained here, or copied from the folder the
    # same `bld train-classifier` command wrote; a `bld demo` run's classifier/ is not the
    # same bytes: measured, 0.8988 against the command's 0.8995 test accuracy)
    python3 scripts/make_zoo.py classifier --data fashion-mnist --steps 1200 --seed 0 \
        [--from DIR]
    # a trained `bld demo` run as a shipped model (fp16 EMA weights); --command repeats for
    # each command that made the run, exactly as run
    python3 scripts/make_zoo.py model --run runs/zoo-fashion-mnist --name fashion-mnist \
        --command "bld demo --minutes 0 --ae-steps 3200 --prior-steps 5600 --out runs/..."
    # the sampler's defaults of a shipped model, chosen after training by a measurement
    # (only the prior config's sample_* keys; the card says which and why)
    python3 scripts/make_zoo.py sampler --name faces64 --set sample_steps=32 --why "..."
    # after `bld eval --model NAME -n 1000 --out DIR`: the figures into the zoo and its card
    python3 scripts/make_zoo.py figures --name fashion-mnist --eval DIR/report.json

Maintainers' tool: users load the results by name (`bld models`, `--model NAME`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from bld.core.device import cpu_name
from bld.inference import zoo

ROOT = Path(__file__).resolve().parents[1]

LICENCES = {
    "fashion-mnist": "Fashion-MNIST (Zalando Research), MIT licence; the weights: MIT",
    "dicebear": "DiceBear avatar styles drawn from their npm packages (the styles' own "
                "licences, CC BY 4.0 or CC0 1.0 by style); the weights: MIT",
    "emoji-twitter": "Twemoji graphics (Twitter, Inc. and contributors), CC BY 4.0, from the "
                     "npm package emoji-datasource-twitter; the weights: MIT",
}


def ship_classifier(args) -> None:
    out = zoo.CLASSIFIERS_DIR / args.data
    command = zoo.classifier_command(args.data, args.steps, args.seed,
                                     out.relative_to(ROOT))
    if args.source:
        meta = json.loads((Path(args.source) / "config.json").read_text())["metadata"]
        if (meta.get("dataset"), meta.get("steps")) != (args.data, args.steps):
            sys.exit(f"{args.source} was trained on {meta.get('dataset')} for "
                     f"{meta.get('steps')} steps, not {args.data} for {args.steps}")
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(args.source, out)
    else:
        from bld.evaluation.evaluate import train_and_save_classifier
        train_and_save_classifier(args.data, out, steps=args.steps, seed=args.seed)
    meta = json.loads((out / "config.json").read_text())["metadata"]
    zoo.write_manifest(out, {"dataset": args.data, "command": command,
                             "test_accuracy": meta["test_accuracy"], "steps": args.steps,
                             "seed": args.seed, "machine": cpu_name(),
                             "trained_by": "the command, run apart and copied here"
                                           if args.source else "the command"},
                       ("config.json", "model.safetensors"))
    print(f"{out}: test accuracy {meta['test_accuracy']:.4f}")


def ship_model(args) -> None:
    from bld.inference.pipeline import BinaryLatentDiffusionPipeline
    run = Path(args.run)
    report = json.loads((run / "report.json").read_text())
    out = zoo.ZOO_DIR / args.name
    pipe = BinaryLatentDiffusionPipeline.from_run(run)
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_pretrained(tmp)
        zoo.to_half(Path(tmp), zoo.WEIGHT_FILES, args.dtype)
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for f in ("config.json", *zoo.WEIGHT_FILES):
            shutil.copyfile(Path(tmp) / f, out / f)
    provenance = {"commands": args.command, "dtype": args.dtype,
                  "machine": report.get("machine"), "precision": report.get("precision"),
                  "minutes": round((report["times"]["total_s"] - args.paused_s) / 60, 1),
                  "paused_s": args.paused_s,
                  "stage_seconds": report["times"], "bld_version": report.get("bld_version"),
                  # runs from before the time budget trained their configured steps
                  "autoencoder_steps": report["autoencoder"].get(
                      "trained_steps", report["autoencoder"]["steps"]),
                  "prior_steps": report["prior"].get("trained_steps", report["prior"]["steps"]),
                  "note": args.note,
                  "run_figures": report.get("figures", {})}
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    zoo.write_manifest(out, {"name": args.name}, zoo.WEIGHT_FILES)
    write_card(args.name)
    print(f"{out}: {sum((out / f).stat().st_size for f in zoo.WEIGHT_FILES) / 2**20:.1f} MB")


def write_card(name: str) -> None:
    """(Re)write zoo model ``name``'s card, with the licence of the data its config names."""
    config = json.loads((zoo.ZOO_DIR / name / "config.json").read_text())
    source = config.get("data", {}).get("source", "")
    zoo.write_card(name, LICENCES.get(source, "see the dataset"))


def ship_sampler(args) -> None:
    """Set a shipped model's sampler defaults (its prior config's sample_* keys), chosen
    after training from measurements; the card names them and why. The weights and every
    training setting stay as trained (tests/test_zoo.py replays the card's commands)."""
    out = zoo.ZOO_DIR / args.name
    settings = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in zoo.SAMPLER_KEYS:
            sys.exit(f"--set {item}: only the sampler's defaults may change ({zoo.SAMPLER_KEYS})")
        settings[key] = json.loads(value)
    config = json.loads((out / "config.json").read_text())
    from bld.core.config import config_from_dict
    config["prior_config"] = {**config["prior_config"], **settings}
    config_from_dict("prior", config["prior_config"])  # a clear error on a bad value
    (out / "config.json").write_text(json.dumps(config, indent=2))
    provenance = json.loads((out / "provenance.json").read_text())
    provenance["sampler"] = {"settings": settings, "why": args.why}
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    (out / zoo.EVAL_FILE).unlink(missing_ok=True)  # measured with the old defaults
    write_card(args.name)
    print(f"{out}: sampler defaults {settings}; measure again with bld eval --model "
          f"{args.name} -n 1000")


def ship_figures(args) -> None:
    out = zoo.ZOO_DIR / args.name
    shutil.copyfile(args.eval, out / zoo.EVAL_FILE)
    write_card(args.name)
    print(zoo.describe(args.name).summary())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("classifier")
    c.add_argument("--data", required=True)
    c.add_argument("--steps", type=int, required=True)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--from", dest="source", help="the folder `bld train-classifier` wrote with "
                   "these --data, --steps and --seed (not a demo run's classifier/)")
    m = sub.add_parser("model")
    m.add_argument("--run", required=True)
    m.add_argument("--name", required=True)
    m.add_argument("--command", action="append", required=True)
    m.add_argument("--note", default="", help="a line for the card under the commands")
    m.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16")
    m.add_argument("--paused-s", type=float, default=0.0, help="seconds the run was stopped "
                   "(SIGSTOP) while other work had the cores: left out of its minutes")
    s = sub.add_parser("sampler")
    s.add_argument("--name", required=True)
    s.add_argument("--set", action="append", required=True, metavar="KEY=JSON",
                   help="a sampler default, e.g. sample_steps=32")
    s.add_argument("--why", required=True, help="the measurement that chose it (for the card)")
    f = sub.add_parser("figures")
    f.add_argument("--name", required=True)
    f.add_argument("--eval", required=True)
    args = p.parse_args()
    {"classifier": ship_classifier, "model": ship_model, "sampler": ship_sampler,
     "figures": ship_figures}[args.what](args)


if __name__ == "__main__":
    main()
