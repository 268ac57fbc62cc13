"""`bld shard`: tar shards of a dataset, read back one sample at a time, in an order that
depends only on (seed, step, rank), with distinct shards per process."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from bld.app.cli import main
from bld.data import ShardDataset, build_dataset
from bld.training.batches import ShardBatchSampler

pytestmark = pytest.mark.usefixtures("one_thread")


def written_order(n: int, seed: int = 0) -> list[int]:
    """The source index of each written sample (`bld shard` writes in a seeded order)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def test_shards_hold_the_dataset_exactly(shards):
    ds = build_dataset(str(shards), split="train")  # a shard folder is a dataset source
    assert isinstance(ds, ShardDataset) and len(ds) == 100 and ds.counts == [32, 32, 32, 4]
    src = build_dataset("fashion-mnist", "train")
    assert ds.classes == src.classes
    for i, j in enumerate(written_order(100)):
        x, y = ds[i]
        xs, ys = src[j]
        assert y == ys and torch.equal(x, xs), f"sample {i} is not source image {j}"
    # written shuffled: no shard is one class
    assert all(len({ds[i][1] for i in range(s, s + 32)}) > 3 for s in (0, 32, 64))
    with pytest.raises(ValueError, match="holds the 'train' split"):
        build_dataset(str(shards), split="test")
    assert build_dataset(str(shards), image_size=32, channels=3)[0][0].shape == (3, 32, 32)


def test_shards_read_by_webdataset(shards):
    """The layout is webdataset's: <key>.png + <key>.cls per sample."""
    import webdataset as wds
    ds = ShardDataset(shards)
    urls = [str(shards / n) for n in ds.names]
    got = [(key, int(cls), img) for key, img, cls in
           wds.WebDataset(urls, shardshuffle=False).decode("l8").to_tuple("__key__", "png", "cls")]
    assert [k for k, _, _ in got] == [f"{i:09d}" for i in range(100)]
    for i, (_, cls, img) in enumerate(got):
        x, y = ds[i]
        assert cls == y
        assert torch.equal(torch.tensor(img).float() / 127.5 - 1, x[0])


def test_reading_touches_only_the_sample_shard(shards, tmp_path):
    """Nothing is read up front: with shard 2 damaged, the other shards still read, and
    only the shards read so far are indexed."""
    root = tmp_path / "copy"
    shutil.copytree(shards, root)
    (root / "shard-000002.tar").write_bytes(b"not a tar file")
    ds = ShardDataset(root)
    for i in (0, 31, 32, 99):
        ds[i]
    assert sorted(ds._index) == [0, 1, 3]
    with pytest.raises(ValueError, match="shard-000002.tar"):
        ds[70]


def test_shard_refuses_a_folder_in_use(shards, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["shard", "fashion-mnist", str(out), "--limit", "10"]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]  # no temporary folder left
    assert main(["shard", str(tmp_path), str(tmp_path / "x")]) == 2
    assert "--image-size" in capsys.readouterr().err


def test_shard_batches_are_a_function_of_seed_step_and_rank(shards):
    counts = ShardDataset(shards).counts  # 32, 32, 32, 4
    starts = [0, 32, 64, 96]

    def shard_of(i: int) -> int:
        return max(j for j, s in enumerate(starts) if s <= i)

    ranks = [ShardBatchSampler(counts, 8, seed=1, rank=r, world=2, start_step=0, total_steps=12)
             for r in (0, 1)]
    per_epoch = ranks[0].per_epoch
    assert per_epoch == 36 // 8  # the shortest share: shards of 4 + 32
    by_rank = [list(s) for s in ranks]
    assert all(len(b) == 12 and all(len(x) == 8 for x in b) for b in by_rank)
    for e in range(3):
        steps = slice(e * per_epoch, (e + 1) * per_epoch)
        mine = [[i for b in by_rank[r][steps] for i in b] for r in (0, 1)]
        assert all(len(set(m)) == len(m) for m in mine)  # no sample twice in an epoch
        shards_of = [{shard_of(i) for i in m} for m in mine]
        assert not shards_of[0] & shards_of[1], f"epoch {e}: two ranks read one shard"
        for m in mine:  # a shard's samples are read together, not interleaved
            seen = [shard_of(i) for i in m]
            assert seen == sorted(seen, key=seen.index)
    assert by_rank[0][:per_epoch] != by_rank[0][per_epoch:2 * per_epoch]  # reshuffled
    # a sampler started at step 7 (a resume) gives the same batches from there on
    late = ShardBatchSampler(counts, 8, seed=1, rank=1, world=2, start_step=7, total_steps=12)
    assert list(late) == by_rank[1][7:]
    with pytest.raises(ValueError, match="fewer than the 5 processes"):
        ShardBatchSampler(counts, 8, 1, 0, 5, 0, 1)


def test_shard_loader_workers_give_the_same_batches(shards):
    ds = ShardDataset(shards)

    def batches(workers: int) -> list[torch.Tensor]:
        sampler = ShardBatchSampler(ds.counts, 16, 0, 0, 1, 0, 4)
        return [x for x, _ in DataLoader(ds, batch_sampler=sampler, num_workers=workers)]

    for a, b in zip(batches(0), batches(2)):
        assert torch.equal(a, b)


def test_shard_an_image_folder_leaves_unreadable_files_out(tmp_path, shards):
    """A folder of real images (the first Fashion-MNIST shard's, saved as PNG per class)
    plus a broken file: the broken one is left out, not replaced by a repeat."""
    from PIL import Image
    ds = ShardDataset(shards)
    root = tmp_path / "folder"
    for i in range(12):
        x, y = ds[i]
        (root / f"c{y}").mkdir(parents=True, exist_ok=True)
        img = ((x[0] + 1) * 127.5).round().byte().numpy()
        Image.fromarray(img, "L").save(root / f"c{y}" / f"{i}.png")
    (root / f"c{ds[0][1]}" / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    assert main(["shard", str(root), str(out), "--image-size", "28", "--channels", "1",
                 "--split", "all", "--shard-size", "5"]) == 0
    got = ShardDataset(out)
    assert len(got) == 12 and got.counts == [5, 5, 2]
    images = {got[i][0].numpy().tobytes() for i in range(12)}
    assert images == {ds[i][0].numpy().tobytes() for i in range(12)}  # each once
