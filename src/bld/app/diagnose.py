"""Which stage limits a run's samples, read from the figures its report already has, with
plain next steps (`bld train`'s report ends with them).

The autoencoder bounds the prior: samples cannot name their class more often than the
reconstructions do, nor cover more of the test images' variety. So the reconstructions are
read against the FD classifier's own test accuracy, and the samples against the
reconstructions: class accuracy (how often the classifier names the class asked for) and
recall (the share of the test images' variety the generated set covers, method.md §5).

Imports nothing of bld.
"""

from __future__ import annotations

from typing import Any

# The thresholds sit between the published demo runs (their report.json files in docs/)
# that met most of their targets and those that did not. Reconstructions: the runs that met
# them kept 0.97-1.0 of the classifier's accuracy at recall 0.74-0.80 (demo_report.json,
# colour_demo_six_report.json); the faces' 20-minute run had recall 0.43
# (colour_demo_native_report.json), the ten styles' 0.85 of the accuracy and recall 0.24
# (colour_demo_ten_native_report.json).
RECON_ACCURACY_SHARE = 0.9
RECON_RECALL = 0.5
# Samples against reconstructions: the runs that met their targets reached 1.0-1.05 of the
# reconstructions' class accuracy and 0.46-0.50 of their recall; those that did not 0.77-0.86
# and 0.08-0.27 (colour_demo_native, demo_native, colour_demo_ten_native).
SAMPLE_ACCURACY_SHARE = 0.9
SAMPLE_RECALL_SHARE = 0.3
# A classifier below this test accuracy measures itself as much as the models (the emoji
# demo's reached 0.70 on 219 test images); chosen without a measurement of where it stops.
WEAK_CLASSIFIER = 0.8
# Fewer evaluated samples than this make recall and FD noisy (the published runs use 1000);
# chosen without a measurement.
FEW_SAMPLES = 100


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


def diagnose(f: dict[str, Any], *, more_bits: int | None = None, minutes: float | None = None
             ) -> list[str]:
    """Sentences on what limits the samples, from a report's ``figures`` ``f`` (the keys
    `bld.app.demo_report.evaluate_demo` writes). For the next steps suggested:
    ``more_bits``, the --bits that doubles the latent's bits per image (None: suggest none),
    and ``minutes``, the run's budget."""
    keys = ("classifier_test_accuracy", "reconstruction_class_accuracy", "reconstruction_recall",
            "sample_class_accuracy", "sample_recall")
    if any(f.get(k) is None for k in keys):
        return ["no diagnosis: the run has no class accuracy or recall figures (its "
                "evaluation was skipped: a folder without classes, or --eval-samples 0); "
                "look at samples.png and reconstructions.png"]
    clf, ra, rr, sa, sr = (float(f[k]) for k in keys)
    longer = f"--minutes {2 * minutes:g}" if minutes else "a longer --minutes"
    more_bits = f"--bits {more_bits}" if more_bits else ""
    out = []
    if clf < WEAK_CLASSIFIER:
        out.append(f"the FD classifier names the class of only {clf:.0%} of the test images, "
                   "so every class figure below is partly its error: classes that look alike, "
                   "or too few images per class to learn them (add images, or merge such "
                   "classes)")
    n = f.get("eval_n")
    if n is not None and n < FEW_SAMPLES:
        out.append(f"the figures come from {n} samples against as many test images (half the "
                   "test split), so recall and FD are noisy; more test images steady them")
    # the samples are read against the reconstructions only where those have some
    # accuracy / recall to compare with (where they have none, the autoencoder is the limit)
    ae_share = _ratio(ra, clf)
    pr_acc = sa / ra if ra > 0 else None
    pr_rec = sr / rr if rr > 0 else None
    ae_limit = ae_share < RECON_ACCURACY_SHARE or rr < RECON_RECALL
    prior_limit = ((pr_acc is not None and pr_acc < SAMPLE_ACCURACY_SHARE)
                   or (pr_rec is not None and pr_rec < SAMPLE_RECALL_SHARE))
    if ae_limit:
        out.append(f"the autoencoder is the limit: its reconstructions keep {rr:.1%} of the "
                   f"variety (recall {rr:.3f}) and {ae_share:.0%} of the classifier's accuracy "
                   f"({ra:.3f} against {clf:.3f}); try "
                   + (f"{more_bits} or {longer}" if more_bits else longer)
                   + (" (the prior cannot do better than its decoder)" if prior_limit else ""))
    if prior_limit:
        reach = [f"{pr_acc:.0%} of the reconstructions' class accuracy ({sa:.3f} against "
                 f"{ra:.3f})" if pr_acc is not None else "",
                 f"{pr_rec:.0%} of their recall ({sr:.3f} against {rr:.3f})"
                 if pr_rec is not None else ""]
        out.append(f"the prior is {'also a' if ae_limit else 'the'} limit: its samples reach "
                   f"{' and '.join(r for r in reach if r)}; try {longer}, which trains it for "
                   "more steps")
    if not (ae_limit or prior_limit):
        out.append(f"no stage stands out: the reconstructions keep {ae_share:.0%} of the "
                   f"classifier's accuracy at recall {rr:.3f}, and the samples reach "
                   f"{pr_acc:.0%} of the reconstructions' accuracy and {pr_rec:.0%} of their "
                   f"recall; {longer} trains both further")
    return out
