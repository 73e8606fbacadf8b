import numpy as np
import torch
import torch.nn.functional as F

from metricvision.data import Sample
from metricvision.kb.experiments import composed_recall, tone_triplets


def test_tone_triplets_pair_default_with_each_tone_of_same_vendor():
    s = [Sample(image=None, label=1, meta={"vendor": "g", "tone": ""}),
         Sample(image=None, label=1, meta={"vendor": "g", "tone": "1F3FE"}),
         Sample(image=None, label=1, meta={"vendor": "t", "tone": "1F3FB"}),  # no default in vendor t
         Sample(image=None, label=1, meta={"vendor": "g", "tone": "1F3FB-1F3FC"}),  # two tones: skipped
         Sample(image=None, label=2, meta={"vendor": "g", "tone": ""})]
    q, texts, t = tone_triplets(s)
    assert q.tolist() == [0] and texts == ["medium-dark skin tone"] and t.tolist() == [1]


def test_composed_recall_excludes_the_reference_and_equals_a_loop():
    torch.manual_seed(0)
    gallery = F.normalize(torch.randn(20, 8), dim=1)
    text = F.normalize(torch.randn(6, 8), dim=1)
    q, t = np.arange(6), np.arange(6, 12)
    out = composed_recall(gallery, text, q, t, ks=(1, 3))
    for name, query in (("image only", gallery[q]), ("text only", text)):
        hits = []
        for i in range(6):
            order = [j for j in (query[i] @ gallery.T).argsort(descending=True).tolist() if j != q[i]]
            hits.append([order[:1].count(t[i]) > 0, t[i] in order[:3]])
        assert out[name] == {"recall@1": np.mean([h[0] for h in hits]), "recall@3": np.mean([h[1] for h in hits])}
    assert out["image only"]["recall@1"] < 1.0  # the reference itself never counts
