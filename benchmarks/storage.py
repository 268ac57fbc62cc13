"""Latent cache: bytes per image, packed bits against float32, and what the cache saves in
prior training.

1. Bytes per image: a cache of M Fashion-MNIST test images encoded to 7 x 7 x 16 bits is
   written with `bld.inference.generate.encode_dataset` (packed, 1 bit per element, `bld.models.packing`)
   and, for comparison, as a float32 latent tensor (safetensors); both file sizes are
   measured, and the in-memory sizes are listed for the larger latent shapes of the presets
   (256 px: 16 x 16 x 64, 1024 px: 32 x 32 x 64) by arithmetic.
2. Prior-training epoch time (60000 images) from the cache against encoding on the fly:
   K batches of each are timed and extrapolated to an epoch (stated in the report):
     - packed cache, unpacked per batch (`bld.models.packing.unpack_bits` on a batch slice),
     - packed cache through `bld.core.loading.LatentDataset` + DataLoader (unpacks per item, as
       `bld train-prior --latents` does),
     - float32 cache (batch slice),
     - on the fly: `BinaryAutoencoder.encode` of each image batch (as `bld train-prior`
       without --latents),
   each followed by the same prior training step (demo preset: width 256, depth 6,
   class-conditional, in the precision `auto` picks). The data-only time (no training step) is listed too.

With --run RUN_DIR the trained autoencoder of a demo run is used; without it an UNTRAINED
autoencoder of the demo architecture (its timings are the same; its bits are not
meaningful, and are used here only for sizes and timings).

    python benchmarks/storage.py [--run RUN_DIR]     # ~2-4 min on 1 thread
    python benchmarks/storage.py --quick
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path

import common
import torch
from tqdm.auto import tqdm

log = logging.getLogger("bench")

EPOCH = 60000  # Fashion-MNIST training images


def parse_args():
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=None,
                   help="a `bld demo` folder whose autoencoder to use (default: untrained)")
    p.add_argument("--images", type=int, default=None,
                   help="images encoded into the two caches (default 10000: the test set)")
    p.add_argument("--batches", type=int, default=None, help="timed batches per mode (default 20)")
    p.add_argument("--batch-size", type=int, default=128)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    q = args.quick
    m_images = args.images or (512 if q else 10000)
    k = args.batches or (2 if q else 20)
    bench = common.setup("storage", args,
                         expected_full="~2-4 min with 1 thread (encoding 10000 images ~0.5 min, "
                                       "4 x 21 training steps of the demo prior)")
    from safetensors.torch import save_file

    from bld.core.loading import LatentDataset, load_autoencoder
    from bld.data import TensorImageDataset, load_fashion_mnist
    from bld.inference.generate import encode_dataset
    from bld.models.autoencoder import AutoencoderConfig, BinaryAutoencoder
    from bld.models.denoiser import Denoiser, DenoiserConfig
    from bld.models.diffusion import BernoulliDiffusion, DiffusionConfig
    from bld.models.packing import unpack_bits

    if args.run is not None:
        ae = load_autoencoder(args.run / "autoencoder")
        ae_note = f"trained autoencoder of {args.run}"
    else:
        torch.manual_seed(0)
        ae = BinaryAutoencoder(AutoencoderConfig(in_channels=1, image_size=28, channels=32,
                                                 channel_mult=(1, 2, 2), hidden=64,
                                                 bits=16)).eval()
        ae_note = "UNTRAINED autoencoder of the demo architecture (sizes and timings only)"
    shape = ae.config.latent_shape
    images_u8, labels = load_fashion_mnist("test")
    images_u8, labels = images_u8[:m_images], labels[:m_images]
    ds = TensorImageDataset(images_u8, labels)

    # ----------------------------------------------------------------- 1. bytes per image
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        packed_path = encode_dataset(ae, ds, tmp / "packed.safetensors", batch_size=500,
                                     progress=True)
        encode_s = time.perf_counter() - t0
        from safetensors.torch import load_file
        cache = load_file(str(packed_path))
        packed, cache_labels = cache["packed"], cache["labels"]
        floats = unpack_bits(packed, shape)  # the same latents as float32
        save_file({"latents": floats.contiguous(), "labels": cache_labels},
                  str(tmp / "float32.safetensors"))
        size_packed = packed_path.stat().st_size
        size_float = (tmp / "float32.safetensors").stat().st_size
    n_el = math.prod(shape)
    size_rows = [
        {"latent": f"{shape[1]}x{shape[2]}x{shape[0]} (measured, {m_images} images)",
         "packed_file_bytes_per_image": size_packed / m_images,
         "float32_file_bytes_per_image": size_float / m_images,
         "ratio": size_float / size_packed}]
    for name, (c, h) in {"fashion-mnist 7x7x16": (16, 7), "emoji64 8x8x32": (32, 8),
                         "256px 16x16x64": (64, 16), "1024px 32x32x64": (64, 32)}.items():
        el = c * h * h
        size_rows.append({"latent": f"{name} (arithmetic, tensors only)",
                          "packed_file_bytes_per_image": math.ceil(el / 8),
                          "float32_file_bytes_per_image": 4 * el,
                          "ratio": 4 * el / math.ceil(el / 8)})
    log.info("packed %.1f B/image, float32 %.1f B/image (%d elements), encoding %.1f s",
             size_packed / m_images, size_float / m_images, n_el, encode_s)

    # --------------------------------------------------------------- 2. epoch time
    torch.manual_seed(0)
    prior = Denoiser(DenoiserConfig(bits=shape[0], grid=shape[1], width=32 if q else 256,
                                    depth=1 if q else 6, heads=4, num_classes=10))
    diffusion = BernoulliDiffusion(DiffusionConfig(timesteps=64))
    opt = torch.optim.AdamW(prior.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x_all = ds.images.float() / 127.5 - 1.0  # (M, 1, 28, 28) in [-1, 1]
    bs = args.batch_size
    n_batches = m_images // bs
    if n_batches < 1:
        raise SystemExit(f"--images {m_images} is smaller than one batch ({bs})")
    latent_ds = LatentDataset(packed, cache_labels, shape)
    loader = torch.utils.data.DataLoader(latent_ds, batch_size=bs, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))

    def batch_idx(i: int) -> slice:
        j = i % n_batches
        return slice(j * bs, (j + 1) * bs)

    def get_packed(i):
        s = batch_idx(i)
        return unpack_bits(packed[s], shape), cache_labels[s]

    loader_it = iter(loader)

    def get_loader(i):
        nonlocal loader_it
        try:
            return next(loader_it)
        except StopIteration:
            loader_it = iter(loader)
            return next(loader_it)

    def get_float(i):
        s = batch_idx(i)
        return floats[s], cache_labels[s]

    @torch.no_grad()
    def get_fly(i):
        s = batch_idx(i)
        with common.autocast():
            z = ae.encode(x_all[s], deterministic=True).float()
        return z, cache_labels[s]

    def train_step(z0, y):
        with common.autocast():
            loss = diffusion.training_losses(prior, z0, y, generator=g).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    modes = {"packed cache, unpack per batch": get_packed,
             "packed cache, LatentDataset + DataLoader (unpack per item)": get_loader,
             "float32 cache": get_float,
             "encode on the fly (autoencoder)": get_fly}
    epoch_batches = math.ceil(EPOCH / bs)
    time_rows = []
    for name, get in tqdm(modes.items(), desc="modes"):
        get(0)  # warm-up
        t0 = time.perf_counter()
        for i in range(k):
            get(i)
        data_s = (time.perf_counter() - t0) / k
        train_step(*get(0))  # warm-up
        t0 = time.perf_counter()
        for i in range(k):
            train_step(*get(i))
        step_s = (time.perf_counter() - t0) / k
        time_rows.append({"mode": name, "data_ms_per_batch": 1000 * data_s,
                          "step_ms_per_batch": 1000 * step_s,
                          "epoch_s_extrapolated": step_s * epoch_batches,
                          "data_epoch_s_extrapolated": data_s * epoch_batches})
        log.info("%s: data %.1f ms/batch, with training step %.1f ms/batch -> epoch ~%.0f s",
                 name, 1000 * data_s, 1000 * step_s, step_s * epoch_batches)
    base = time_rows[0]["epoch_s_extrapolated"]
    for r in time_rows:
        r["epoch_vs_packed"] = r["epoch_s_extrapolated"] / base

    bench.results = {"autoencoder": ae_note, "latent_shape": list(shape), "images": m_images,
                     "encode_seconds": encode_s, "sizes": size_rows, "timed_batches": k,
                     "batch_size": bs, "epoch_images": EPOCH, "epoch_batches": epoch_batches,
                     "times": time_rows}
    common.plot_bars(bench.path("_epoch.png"), [r["mode"] for r in time_rows],
                     {"data only": [r["data_epoch_s_extrapolated"] for r in time_rows],
                      "data + training step": [r["epoch_s_extrapolated"] for r in time_rows]},
                     xlabel=f"seconds per epoch (extrapolated; {EPOCH} images, batch {bs})",
                     title="prior training: latent cache vs encoding on the fly")
    prior_text = "a tiny stand-in (quick mode)" if q else "the demo preset (width 256, depth 6)"
    sections = [
        "## Settings", "",
        f"Autoencoder: {ae_note}; latent {shape[1]}x{shape[2]}x{shape[0]} = {n_el} bits per "
        f"image. Prior for the timing: {prior_text}, class-conditional, {common.precision_name()} "
        f"autocast, batch {bs}. Epoch times are EXTRAPOLATED from {k} timed batches per mode "
        f"(after one warm-up batch) to {epoch_batches} batches = {EPOCH} images.", "",
        "## Bytes per image", "", common.markdown_table(size_rows), "",
        "File sizes include the labels (8 bytes per image, int64) and the safetensors header "
        f"(amortised over {m_images} images).", "",
        "## Prior-training epoch: cache against encoding on the fly", "",
        common.markdown_table(time_rows), "",
        f"![epoch]({bench.path('_epoch.png').name})",
    ]
    common.write_report(bench, "Latent cache: storage and training time", sections)


if __name__ == "__main__":
    main()
