"""Which colour dataset a 20-minute demo can learn and measure: the candidates side by side.

Candidates (issue 16, part 1), both at 64 px:
  * emoji-pool: the emoji of three openly licensed vendors (emoji-datasource-twitter and
    -google 16.0.0, openmoji 17.0.0) under one label set, the nine Unicode groups (the
    `component` group and OpenMoji's extras left out, no skin-tone variants), split by
    emoji: all vendors' drawings of one code point on the same side, 18 % of code points
    (by a hash) in the test split;
  * dicebear: a `bld prepare-dicebear` folder (one class per face style, the manifest's
    split); the published result used the ten styles earlier versions drew by default
    (`--faces DIR` with `bld prepare-dicebear --styles <all ten> --per-style 1200 --dest DIR`).
For each: images, classes, the smallest and largest class, train / test sizes, and the test
accuracy of the FD feature classifier (`bld.evaluation.classifier`, the one the demo trains) after
--steps steps, per class too: whether its labels can be learnt and measured (the issue asks
the classifier for >= 0.85).

    python benchmarks/colour_datasets.py --emoji-tarballs DIR   # DIR: the three npm .tgz
    python benchmarks/colour_datasets.py --quick ...            # 30 steps, 200 images each
"""

from __future__ import annotations

import hashlib
import logging
import random
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (sys.path set-up; imported before bld on purpose)
import torch

log = logging.getLogger("bench")

UNICODE_GROUPS = ("activities", "animals_nature", "flags", "food_drink", "objects",
                  "people_body", "smileys_emotion", "symbols", "travel_places")
POOL_TEST_FRACTION = 0.18


def _key(stem: str) -> str:
    """A file stem ('1f44d-1f3fb', '1F44D-FE0F') -> its code points without FE0F."""
    return "-".join(h for h in stem.upper().split("-") if h != "FE0F")


def _in_test(key: str) -> bool:
    digest = hashlib.sha1(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < POOL_TEST_FRACTION


def emoji_pool(tarballs: Path, work: Path) -> list[tuple[Path, str, str, bool]]:
    """(file, group, vendor, is test) of every pooled emoji, prepared under work/."""
    from bld.data import extract_emoji_tarball, extract_openmoji_tarball
    for vendor in ("twitter", "google"):
        extract_emoji_tarball(tarballs / f"emoji-datasource-{vendor}-16.0.0.tgz", vendor, work / vendor)
    extract_openmoji_tarball(tarballs / "openmoji-17.0.0.tgz", 64, work / "openmoji")
    return [(p, p.parent.name, vendor, _in_test(_key(p.stem)))
            for vendor in ("twitter", "google", "openmoji")
            for p in sorted((work / vendor).glob("*/*.png")) if p.parent.name in UNICODE_GROUPS]


def dicebear_faces(root: Path) -> list[tuple[Path, str, str, bool]]:
    from bld.data.folder import read_manifest_splits
    splits = read_manifest_splits(root)
    return [(root / rel, rel.split("/")[0], "dicebear", split == "test")
            for rel, split in sorted(splits.items())]


def measure(name: str, items: list, steps: int, seed: int) -> dict:
    from bld.data import load_image
    from bld.evaluation.classifier import ClassifierConfig, train_classifier
    classes = sorted({c for _, c, _, _ in items})
    index = {c: i for i, c in enumerate(classes)}
    x = torch.stack([load_image(p, 64, 3) for p, *_ in items])
    y = torch.tensor([index[c] for _, c, _, _ in items])
    test = torch.tensor([t for *_, t in items])
    counts = {c: sum(1 for _, k, _, _ in items if k == c) for c in classes}
    t0 = time.perf_counter()
    res = train_classifier(x[~test], y[~test], ClassifierConfig(in_channels=3, image_size=64,
                                                                num_classes=len(classes)),
                           steps=steps, seed=seed, test_images=x[test], test_labels=y[test],
                           hflip=True, progress=False)
    with torch.no_grad():
        pred = torch.cat([res.model(b).argmax(1) for b in x[test].split(256)])
    yt = y[test]
    per_class = {c: float((pred[yt == i] == i).float().mean()) for i, c in enumerate(classes)}
    row = {"dataset": name, "images": len(items), "classes": len(classes),
           "smallest_class": min(counts.values()), "largest_class": max(counts.values()),
           "train": int((~test).sum()), "test": int(test.sum()),
           "classifier_test_accuracy": res.test_accuracy,
           "worst_class": min(per_class, key=per_class.get),
           "worst_class_accuracy": min(per_class.values()),
           "classifier_seconds": time.perf_counter() - t0}
    log.info("%s", row)
    return {**row, "per_class_accuracy": per_class, "class_counts": counts}


def main() -> None:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--emoji-tarballs", type=Path, required=True,
                   help="folder holding emoji-datasource-{twitter,google}-16.0.0.tgz and "
                        "openmoji-17.0.0.tgz (from `npm pack`)")
    p.add_argument("--faces", type=Path, default=None,
                   help="`bld prepare-dicebear` folder (default ~/.cache/bld/dicebear6-64, the "
                        "default six styles)")
    p.add_argument("--steps", type=int, default=400, help="classifier steps (batch 128)")
    args = p.parse_args()
    bench = common.setup("colour_datasets", args, "~10 min (two classifiers of --steps steps)")
    from bld.data import default_dicebear_dir
    steps = 30 if args.quick else args.steps
    with tempfile.TemporaryDirectory(prefix="bld-pool-") as work:
        candidates = {"emoji-pool": emoji_pool(args.emoji_tarballs, Path(work)),
                      "dicebear": dicebear_faces(args.faces or default_dicebear_dir(64))}
        if args.quick:
            candidates = {k: random.Random(args.seed).sample(v, 200) for k, v in candidates.items()}
        rows = [measure(name, items, steps, args.seed) for name, items in candidates.items()]
    bench.results = {"steps": steps, "candidates": rows}
    columns = ["dataset", "images", "classes", "smallest_class", "largest_class", "train",
               "test", "classifier_test_accuracy", "worst_class", "worst_class_accuracy",
               "classifier_seconds"]
    per_class = [f"- {r['dataset']}: " + ", ".join(f"{c} {a:.3f}" for c, a in
                                                    r["per_class_accuracy"].items()) for r in rows]
    common.write_report(bench, "Colour dataset candidates", [
        f"FD classifier test accuracy after {steps} steps (batch 128, shifts and flips), "
        "trained on each candidate's train split, tested on its test split.", "",
        common.markdown_table(rows, columns), "", "Per class:", "", *per_class])


if __name__ == "__main__":
    main()
