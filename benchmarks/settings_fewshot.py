"""Few-shot: 5-way 1-shot and 5-shot on unseen emoji identities, 2000 episodes (implanting:
200), mean +- 95% interval; frozen MobileNetV2 features, heads trained on the training identities.

    python benchmarks/settings_fewshot.py [--episodes 2000] [--seed 0]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from metricvision.losses import create_loss
from metricvision.metrics import few_shot_accuracy
from metricvision.supervision import SUPERVISIONS
from metricvision.supervision.fewshot import (
    CosineClassifier, EpisodeSampler, dense_classification_loss, implant_episode, mean_and_interval,
)
from settings_common import Timer, emoji_features, embed, make_head, print_table, train_head


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--episodes", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    train, test = emoji_features("train"), emoji_features("test")
    g = torch.Generator().manual_seed(a.seed)
    sup = SUPERVISIONS.create("partial_labels")
    sup.bind(train["y"])
    n_batches = len(train["y"]) // 128
    t = Timer()
    ms = create_loss("multi_similarity")
    metric_head = train_head(make_head(seed=a.seed), train["x"], 15, lambda e, h: sup.batches(128, n_batches, g),
                             lambda e, idx: ms(e, train["y"][idx]).value)
    t_metric = t()
    # dense classification: the head's linear layer applied at every location of the maps
    t = Timer()
    dense_head = make_head(seed=a.seed)
    clf = CosineClassifier(int(train["y"].max()) + 1, 128)
    opt = torch.optim.Adam(list(dense_head.parameters()) + list(clf.parameters()), lr=1e-3)
    lin = dense_head[0]
    for _ in range(15):
        for b in sup.batches(128, n_batches, g):
            idx = torch.tensor(b)
            m = train["maps"][idx]
            d = F.normalize(torch.einsum("nchw,dc->ndhw", m, lin.weight) + lin.bias.view(1, -1, 1, 1), dim=1)
            loss = dense_classification_loss(d, train["y"][idx], clf)
            opt.zero_grad()
            loss.backward()
            opt.step()
    t_dense = t()
    heads = {"pretrained features": (None, 0.0), "metric head (multi-similarity)": (metric_head, t_metric),
             "dense classification head": (dense_head, t_dense)}
    rows = []
    for shots in (1, 5):
        for name, (head, secs) in heads.items():
            r = few_shot_accuracy(embed(head, test["x"]), test["y"].numpy(), 5, shots, 5, a.episodes, a.seed)
            rows.append({"shots": shots, "embedding": name, "classifier": "prototypical",
                         "accuracy": f"{100 * r['accuracy']:.1f} +- {100 * r['ci95']:.1f}", "train s": secs})
        # implanting on the dense head's embedding, fewer episodes (each trains an implant)
        t = Timer()
        base = embed(dense_head, test["x"])
        accs = []
        small = EpisodeSampler(test["y"], 5, shots, 5, max(1, a.episodes // 10), seed=a.seed)
        q_labels = torch.arange(5).repeat_interleave(5)
        for s, q in small:
            s, q = torch.from_numpy(s), torch.from_numpy(q)
            logits = implant_episode(test["maps"][s], base[s], test["maps"][q], base[q], 5, shots, dim=32, steps=10)
            accs.append(float((logits.argmax(1) == q_labels).float().mean()))
        r = mean_and_interval(torch.tensor(accs).numpy())
        rows.append({"shots": shots, "embedding": f"dense head + implanting ({len(accs)} episodes)", "classifier": "cosine",
                     "accuracy": f"{100 * r['accuracy']:.1f} +- {100 * r['ci95']:.1f}", "train s": t()})
    print_table(rows)


if __name__ == "__main__":
    main()
