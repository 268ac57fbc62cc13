"""Image sets larger than memory: webdataset-style tar shards, written once, read per sample.

``bld shard SOURCE OUT_DIR --shard-size N`` writes any dataset ``build_dataset`` knows as

    OUT_DIR/shard-000000.tar, shard-000001.tar, ...   N samples each (the last may hold fewer)
    OUT_DIR/shards.json                                the manifest, written last

Each sample is two consecutive tar members sharing a key (the webdataset convention, so
``webdataset.WebDataset(".../shard-{000000..000003}.tar")`` reads them too):
``<key>.png`` (8-bit greyscale or RGB PNG at the written size) and ``<key>.cls`` (the class
index as ASCII digits). Samples are written in a seeded random order, so every shard mixes
the classes. The manifest holds the format tag, the source, split, image size, channels,
class names and each shard's name and sample count.

Reading (``ShardDataset``) never loads a shard into memory: the first access to a shard
reads its tar headers (member offsets, a few bytes per sample), then each sample is one
positional read of its PNG and label. Training draws batches with
``bld.training.batches.ShardBatchSampler``: each epoch the shards are shuffled and dealt out to the
processes (each reads its own shards), and each process reads its shards one after another,
in a shuffled order within each shard, so that reads stay within one file at a time.

Imports only `images.py` and `install.py` of this package.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
from bisect import bisect_right
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .images import SPLITS, image_to_tensor
from .install import install_dir

logger = logging.getLogger(__name__)

MANIFEST = "shards.json"
FORMAT = "bld-shards"


class ShardWriteResult(NamedTuple):
    root: Path
    num_samples: int
    num_shards: int
    seconds: float


def is_shard_folder(path: str | os.PathLike) -> bool:
    return (Path(path).expanduser() / MANIFEST).is_file()


def _png_bytes(x: torch.Tensor) -> bytes:
    """A float image in [-1, 1] (C, H, W) -> 8-bit PNG bytes (exact for 8-bit sources)."""
    a = ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    arr = a[0].numpy() if a.shape[0] == 1 else a.permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr, "L" if a.shape[0] == 1 else "RGB").save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def write_shards(dataset: Dataset, out_dir: str | os.PathLike, shard_size: int, *,
                 indices: Sequence[int] | None = None, seed: int = 0, source: str = "",
                 split: str = "", progress: bool = True) -> ShardWriteResult:
    """Write ``dataset`` (items (float image (C, H, W) in [-1, 1], label)), or its items
    ``indices``, as tar shards of ``shard_size`` samples into the new folder ``out_dir``,
    atomically: the shards are written under a temporary name beside it and renamed into
    place when all are done."""
    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {shard_size}")
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty folder; shards go into "
                              "a new folder (choose another OUT_DIR or delete that one)")
    items = list(range(len(dataset)) if indices is None else indices)
    n = len(items)
    if n == 0:
        raise ValueError("the dataset is empty; nothing to shard")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; shards are for every reader
    order = [items[i] for i in
             torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()]
    shards: list[dict] = []
    start = time.perf_counter()
    first, _ = dataset[order[0]]
    try:
        with tqdm(total=n, desc="shard", disable=not progress, mininterval=1.0) as bar:
            for s0 in range(0, n, shard_size):
                name = f"shard-{len(shards):06d}.tar"
                count = 0
                with tarfile.open(tmp / name, "w", format=tarfile.USTAR_FORMAT) as tar:
                    for pos in range(s0, min(n, s0 + shard_size)):
                        x, label = dataset[order[pos]]
                        if x.shape != first.shape:
                            raise ValueError(f"item {order[pos]} has shape {tuple(x.shape)}, item "
                                             f"{order[0]} {tuple(first.shape)}; pass --image-size")
                        key = f"{pos:09d}"
                        _add_member(tar, f"{key}.png", _png_bytes(x))
                        _add_member(tar, f"{key}.cls", str(int(label)).encode())
                        count += 1
                        bar.update(1)
                shards.append({"name": name, "count": count})
        manifest = {"format": FORMAT, "version": 1, "source": source, "split": split,
                    "num_samples": n, "image_size": int(first.shape[-1]),
                    "channels": int(first.shape[0]),
                    "classes": list(getattr(dataset, "classes", ())), "seed": seed,
                    "shards": shards}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if out.is_dir():
            out.rmdir()  # empty (checked above); install_dir keeps a folder someone filled
        install_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - start
    logger.info("wrote %d samples in %d shards to %s (%.0f images/s)", n, len(shards), out,
                n / max(seconds, 1e-9))
    return ShardWriteResult(out, n, len(shards), seconds)


class ShardDataset(Dataset):
    """Samples of a shard folder written by ``write_shards``, read one at a time.

    Items are (float image (C, S, S) in [-1, 1], int label), resized / converted like
    ``load_image`` (``image_to_tensor``) when ``image_size`` / ``channels`` differ from the written ones. Holds
    the manifest and, per shard read so far, its member offsets (16 bytes per sample); no
    image data is kept. Safe in DataLoader worker processes (positional reads).
    """

    def __init__(self, root: str | os.PathLike, image_size: int | None = None,
                 channels: int | None = None, split: str | None = None) -> None:
        self.root = Path(root).expanduser()
        path = self.root / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} cannot be read as a shard manifest ({e}); write the folder "
                             "again with `bld shard`") from e
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{path} is not a bld shard manifest (format {manifest.get('format')!r})")
        written = manifest.get("split") or "all"
        if split not in (None, "all", written):
            raise ValueError(f"{self.root} holds the {written!r} split of {manifest.get('source')!r}, "
                             f"not {split!r}; write that split with `bld shard ... --split {split}`"
                             + (f" (one of {SPLITS})" if split not in SPLITS else ""))
        self.manifest = manifest
        self.names = [s["name"] for s in manifest["shards"]]
        self.counts = [int(s["count"]) for s in manifest["shards"]]
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.classes: tuple[str, ...] = tuple(manifest.get("classes", ()))
        self.stored_size, self.stored_channels = manifest["image_size"], manifest["channels"]
        self.image_size = image_size or self.stored_size
        self.channels = channels or self.stored_channels
        self._index: dict[int, np.ndarray] = {}  # shard -> (count, 4) png / cls offset, size

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def shard_of(self, index: int) -> tuple[int, int]:
        """(shard, position in it) of sample ``index``."""
        shard = bisect_right(self.offsets, index) - 1
        return shard, index - int(self.offsets[shard])

    def _shard_index(self, shard: int) -> np.ndarray:
        if shard not in self._index:
            path = self.root / self.names[shard]
            rows: dict[str, list[int]] = {}
            try:
                with tarfile.open(path, "r:") as tar:  # headers only; data is skipped
                    for m in tar:
                        key, _, ext = m.name.partition(".")
                        if ext in ("png", "cls") and m.isfile():
                            rows.setdefault(key, [0, 0, 0, 0])
                            j = 0 if ext == "png" else 2
                            rows[key][j:j + 2] = [m.offset_data, m.size]
            except (OSError, tarfile.TarError) as e:
                raise ValueError(f"shard {path} cannot be read ({e}); write the folder again "
                                 "with `bld shard`") from e
            index = np.array([rows[k] for k in sorted(rows)], dtype=np.int64).reshape(-1, 4)
            if len(index) != self.counts[shard] or (index[:, 1] == 0).any():
                raise ValueError(f"shard {path} holds {len(index)} samples, the manifest says "
                                 f"{self.counts[shard]}; the folder is damaged, write it again")
            if len(self._index) >= 64:  # keep the offsets of at most 64 shards
                self._index.pop(next(iter(self._index)))
            self._index[shard] = index
        return self._index[shard]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        shard, pos = self.shard_of(index % n)
        png_at, png_size, cls_at, cls_size = self._shard_index(shard)[pos].tolist()
        fd = os.open(self.root / self.names[shard], os.O_RDONLY)
        try:
            png, cls = os.pread(fd, png_size, png_at), os.pread(fd, cls_size, cls_at)
        finally:
            os.close(fd)
        with Image.open(io.BytesIO(png)) as img:
            return image_to_tensor(img, self.image_size, self.channels), int(cls)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, n={len(self)}, "
                f"shards={len(self.names)}, image_size={self.image_size}, "
                f"channels={self.channels}, classes={len(self.classes)})")
