"""ray.data + Embedder actors write Parquet shards equal to in-process embeddings."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from metricvision.data.sample import Sample, SampleDataset
from metricvision.data.transforms import TRANSFORMS
from metricvision.models import Embedder

pytestmark = pytest.mark.distributed


def test_ray_embed_writes_parquet_equal_to_local_embeddings(tmp_path, ray_local) -> None:
    from metricvision.engine.ray_embed import parquet_shards, ray_embed, read_embeddings

    rng = np.random.default_rng(0)
    samples = []
    for i in range(40):
        path = tmp_path / "images" / f"{i:03d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(image=str(path), label=i % 7))
    torch.manual_seed(0)
    model = Embedder("small_cnn", dim=16).eval()
    info = ray_embed(model, samples, tmp_path / "emb", image_size=32, num_workers=2, batch_size=8)
    assert info["embedded"] == 40 and info["dim"] == 16 and info["shards"] >= 1
    rows, labels, emb = read_embeddings(tmp_path / "emb")
    data = SampleDataset(samples, TRANSFORMS.create("eval", size=32))
    ref = model.encode(torch.stack([data[i][0] for i in range(len(data))])).numpy()
    assert rows.tolist() == list(range(40))
    assert labels.tolist() == [s.label for s in samples]
    np.testing.assert_allclose(emb, ref, atol=1e-5)
    shards = parquet_shards(tmp_path / "emb")
    assert sorted(np.concatenate([ids for _, ids in shards]).tolist()) == list(range(40))
    assert not list(tmp_path.glob(".emb.*"))  # the temporary folder is gone
