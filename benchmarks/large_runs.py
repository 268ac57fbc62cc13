"""What large runs need, measured: activation checkpointing's memory and time, and the shard
format's write / read speed and memory.

1. Activation memory: the bytes autograd keeps for the backward pass of one training
   forward at batch 1 in fp32, with and without `model.grad_checkpointing`, for the
   `1024px` autoencoder (full width, 1024 x 1024 px) and the `original` 768 x 24 prior at
   the 256 px (16 x 16) and 1024 px (32 x 32) latents. Counted with
   `torch.autograd.graph.saved_tensors_hooks` on the meta device (shapes only: no memory
   is used and nothing is computed), so the figures are exact byte counts of what is saved,
   not of peak memory: the backward pass of a checkpointed model also holds the
   recomputed activations of one block / resolution stage at a time.
2. Checkpointing's time cost: forward + backward seconds with and without it on this CPU, at
   reduced sizes (the `1024px` autoencoder at width 8 and 256 px; the 'small' prior,
   192 x 6, on 16 x 16 x 64 latents at batch 8).
3. Shards: `bld shard`'s writer on the Fashion-MNIST training set (images/s, bytes on
   disk), then one epoch read back in a fresh process through `ShardBatchSampler` and a
   DataLoader (images/s), with the process's resident memory before opening the data and
   its largest value while reading, against a fresh process that reads the same epoch from
   the in-memory dataset.

    python benchmarks/large_runs.py            # ~2-4 min on 1 thread
    python benchmarks/large_runs.py --quick
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import torch

log = logging.getLogger("bench")


def saved_bytes(fn) -> int:
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def presets():
    from bld.core.config import config_from_dict, load_config_dict
    from bld.models.denoiser import PRESETS
    ae = config_from_dict("autoencoder", load_config_dict("autoencoder", "1024px", [])).model
    priors = {}
    for name, grid in (("256px", 16), ("1024px", 32)):
        cfg = config_from_dict("prior", load_config_dict("prior", name, []))
        w, d, h = PRESETS[cfg.preset]
        priors[name] = dataclasses.replace(cfg.model, width=w, depth=d, heads=h, bits=64,
                                           grid=grid, num_classes=0)
    return ae, priors


def activation_memory() -> list[dict]:
    from bld.models.autoencoder import BinaryAutoencoder
    from bld.models.denoiser import Denoiser
    ae, priors = presets()
    rows = []
    cases = [("autoencoder 1024px (factor 32, width 64)", lambda on: BinaryAutoencoder(
        dataclasses.replace(ae, grad_checkpointing=on)),
        lambda m: m(torch.empty(1, 3, 1024, 1024), deterministic=True).recon.sum())]
    for name, cfg in priors.items():
        cases.append((f"prior original 768 x 24, {name} latent ({cfg.grid * cfg.grid} tokens)",
                      lambda on, cfg=cfg: Denoiser(dataclasses.replace(cfg, grad_checkpointing=on)),
                      lambda m, cfg=cfg: m(torch.empty(1, 64, cfg.grid, cfg.grid),
                                           torch.empty(1)).sum()))
    for name, make, loss in cases:
        row = {"model": name}
        for on in (False, True):
            with torch.device("meta"):
                m = make(on).train()
                row["params_M" if not on else "_"] = sum(p.numel() for p in m.parameters()) / 1e6
                row[f"saved_GiB_{'on' if on else 'off'}"] = saved_bytes(lambda: loss(m)) / 2**30
        row.pop("_")
        row["ratio"] = row["saved_GiB_on"] / row["saved_GiB_off"]
        rows.append(row)
        log.info("%s", row)
    return rows


def checkpoint_time(quick: bool) -> list[dict]:
    from bld.models.autoencoder import BinaryAutoencoder
    from bld.models.denoiser import PRESETS, Denoiser
    ae, priors = presets()
    size = 64 if quick else 256
    ae_small = dataclasses.replace(ae, channels=8, hidden=16, bits=16, image_size=size)
    w, d, h = PRESETS["small"]
    prior_small = dataclasses.replace(priors["256px"], width=w, depth=d, heads=h)
    x = torch.rand(1, 3, size, size) * 2 - 1
    z = (torch.rand(8, 64, 16, 16) < 0.5).float()
    t = torch.rand(8)
    cases = [(f"autoencoder 1024px layout, width 8, {size} px, batch 1",
              lambda on: BinaryAutoencoder(dataclasses.replace(ae_small, grad_checkpointing=on)),
              lambda m: (m(x, deterministic=True).recon - x).abs().mean()),
             ("prior small 192 x 6, 16 x 16 x 64 latent, batch 8",
              lambda on: Denoiser(dataclasses.replace(prior_small, grad_checkpointing=on)),
              lambda m: m(z, t).square().mean())]
    rows = []
    for name, make, loss in cases:
        row = {"model": name}
        for on in (False, True):
            torch.manual_seed(0)
            m = make(on).train()

            def step():
                m.zero_grad(set_to_none=True)
                loss(m).backward()

            row[f"s_{'on' if on else 'off'}"] = common.time_fn(
                step, warmup=1, repeats=2 if quick else 5).median
        row["ratio"] = row["s_on"] / row["s_off"]
        rows.append(row)
        log.info("%s", row)
    return rows


def rss_mib() -> float:
    """This process's resident memory now (VmRSS), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def read_epoch(source: str, limit: int, batch_size: int) -> dict:
    """One epoch of batches (run in a fresh process): seconds, images, resident memory (MiB)
    before the dataset is opened and its largest value while reading (sampled per batch)."""
    torch.set_num_threads(1)
    from torch.utils.data import DataLoader

    from bld.data import ShardDataset, build_dataset
    from bld.training.batches import ShardBatchSampler, StepBatchSampler
    start_rss = peak = rss_mib()
    t0 = time.perf_counter()
    ds = build_dataset(source, "train")
    if isinstance(ds, ShardDataset):
        sampler = ShardBatchSampler(ds.counts, batch_size, 0, 0, 1, 0, 10**9)
    else:
        from torch.utils.data import Subset
        ds = Subset(ds, range(limit))
        sampler = StepBatchSampler(len(ds), batch_size, 0, 0, 1, 0, 10**9)
    sampler.total = sampler.per_epoch  # one epoch
    n = 0
    for x, _ in DataLoader(ds, batch_sampler=sampler):
        n += x.shape[0]
        peak = max(peak, rss_mib())
    return {"seconds": time.perf_counter() - t0, "images": n, "rss0": start_rss, "rss": peak}


def in_fresh_process(source: str, limit: int, batch_size: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--read-epoch", source, str(limit),
                          str(batch_size)], capture_output=True, text=True, timeout=1200,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def shards(quick: bool, tmp: Path) -> list[dict]:
    from bld.data import build_dataset, write_shards
    n = 2000 if quick else 60000
    size = 200 if quick else 1000
    ds = build_dataset("fashion-mnist", "train")
    res = write_shards(ds, tmp / "fmnist", size, indices=range(n), source="fashion-mnist",
                       split="train", progress=False)
    disk = sum(p.stat().st_size for p in res.root.iterdir())
    rows = [{"what": f"write {n} images, {res.num_shards} shards of {size}",
             "seconds": res.seconds, "images_per_s": n / res.seconds,
             "disk_MiB": disk / 2**20, "raw_uint8_MiB": n * 28 * 28 / 2**20}]
    for label, source in (("read one epoch from the shards", str(res.root)),
                          ("read one epoch from the in-memory dataset", "fashion-mnist")):
        r = in_fresh_process(source, n, 256)
        rows.append({"what": f"{label} (fresh process, batch 256)", "seconds": r["seconds"],
                     "images_per_s": r["images"] / r["seconds"],
                     "rss_before_MiB": r["rss0"], "rss_max_reading_MiB": r["rss"]})
    for r in rows:
        log.info("%s", r)
    return rows


def main() -> None:
    args = common.base_parser(__doc__.split("\n\n")[0]).parse_args()
    bench = common.setup("large_runs", args, expected_full="~2-4 min with 1 thread")
    memory = activation_memory()
    timing = checkpoint_time(args.quick)
    with tempfile.TemporaryDirectory() as tmp:
        shard_rows = shards(args.quick, Path(tmp))
    bench.results = {"activation_memory": memory, "checkpoint_time": timing,
                     "shards": shard_rows}
    common.write_report(bench, "Large runs: activation checkpointing and shards", [
        "## Activations saved for the backward pass (fp32, batch 1, one training forward)",
        "", common.markdown_table(memory), "",
        "Counted on the meta device (exact byte counts of the saved tensors; peak memory in "
        "the backward pass adds one recomputed block / resolution stage when checkpointing).",
        "", "## Checkpointing's time cost (forward + backward, this CPU, median seconds)", "",
        common.markdown_table(timing), "",
        "## Shards (Fashion-MNIST training images)", "",
        common.markdown_table(shard_rows, ["what", "seconds", "images_per_s", "disk_MiB",
                                           "raw_uint8_MiB", "rss_before_MiB",
                                           "rss_max_reading_MiB"])])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--read-epoch"]:
        print(json.dumps(read_epoch(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
    else:
        main()
