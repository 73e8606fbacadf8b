"""Class-incremental (iCaRL, Rebuffi et al. 2017) vs plain fine-tuning on emoji identities.

    python benchmarks/settings_incremental.py [--tasks 10] [--budget 320] [--epochs 30] [--seed 0]

The 162 training identities with 12 or 52 renderings arrive in 10 tasks of ~16 new identities;
two thirds of each identity's renderings train, one third tests. The frozen MobileNetV2
features feed a trainable head (linear 1280 -> 128, L2-normalized) and a linear classifier
over the classes seen so far. After each task every method is scored on the test renderings
of all identities seen so far (a prediction among all of them), which gives the task
accuracy matrix -> average incremental accuracy and forgetting (metricvision.metrics).

- fine-tuning: cross-entropy on the new task's data only, classifier argmax (forgets);
- replay: fine-tuning on the new data + the exemplar memory (herding, fixed budget);
- iCaRL: exemplars + binary cross-entropy with distillation of the previous model's outputs
  on the old classes, nearest-mean-of-exemplars classifier (and its classifier argmax);
- joint: trained on all the data of the tasks so far (upper bound, not incremental);
- NME on the frozen features with the same exemplar memory (no training at all);
- metric: multi-similarity on new data + exemplars, RKD distance towards the previous model's
  embeddings, classified by NME and by class means moved by SDC (the method of the
  ``incremental_metric`` recipe, on frozen features).
"""
from __future__ import annotations

import argparse
import copy
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from metricvision.metrics import incremental_scores
from metricvision.losses import create_loss
from metricvision.metrics.classify import ncm_predict, ncm_scores
from metricvision.supervision.incremental import ExemplarMemory, class_incremental_tasks, icarl_loss
from metricvision.supervision.incremental_metric import drift_compensation
from settings_common import Timer, emoji_features, make_head, print_table


class Model(torch.nn.Module):
    """Head (features -> normalized embedding) + linear classifier over all classes, applied to
    10 x the embedding (unit vectors otherwise keep the sigmoid of iCaRL's loss from saturating:
    its first task reached 41% test accuracy instead of 100% in 30 epochs)."""

    def __init__(self, num_classes: int, seed: int) -> None:
        super().__init__()
        self.head = make_head(seed=seed)
        self.fc = torch.nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(10 * self.head(x))


def split_renderings(y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) indices: per identity with >= 12 renderings, 2/3 train and 1/3 test."""
    rng = np.random.default_rng(seed)
    tr, te = [], []
    for c in torch.unique(y).tolist():
        idx = rng.permutation(np.flatnonzero(y.numpy() == c))
        if len(idx) >= 12:
            cut = (2 * len(idx)) // 3
            tr += idx[:cut].tolist()
            te += idx[cut:].tolist()
    return torch.tensor(sorted(tr)), torch.tensor(sorted(te))


def run(method: str, x: torch.Tensor, y: torch.Tensor, train_idx: torch.Tensor, test_idx: torch.Tensor,
        tasks: List[np.ndarray], budget: int, epochs: int, seed: int) -> Dict[str, Dict[str, float]]:
    """Train through the tasks; returns {classifier: incremental scores}."""
    order = np.concatenate(tasks)
    relabel = torch.full((int(y.max()) + 1,), -1, dtype=torch.int64)
    relabel[torch.from_numpy(order)] = torch.arange(len(order))  # classes numbered in arrival order
    yy = relabel[y]
    model = Model(len(order), seed)
    memory = ExemplarMemory(budget)
    g = torch.Generator().manual_seed(seed)
    classifiers = ["nme", "sdc"] if method == "metric" else ["classifier"] + (["nme"] if method in ("icarl", "frozen") else [])
    ms, rkd = create_loss("multi_similarity"), create_loss("rkd_distance")
    means: Dict[int, torch.Tensor] = {}  # SDC class means (method "metric")
    acc = {c: np.full((len(tasks), len(tasks)), np.nan) for c in classifiers}
    seen_acc: Dict[str, List[float]] = {c: [] for c in classifiers}
    seen = 0
    for t, task in enumerate(tasks):
        old: Optional[torch.nn.Module] = copy.deepcopy(model).eval() if t > 0 and method in ("icarl", "metric") else None
        old_classes, seen = seen, seen + len(task)
        new = train_idx[(yy[train_idx] >= old_classes) & (yy[train_idx] < seen)]
        if method == "joint":
            data = train_idx[yy[train_idx] < seen]
        elif method in ("replay", "icarl", "metric"):
            data = torch.cat([new, memory.indices()])
        else:
            data = new
        if method != "frozen":
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            for _ in range(epochs):
                for b in data[torch.randperm(len(data), generator=g)].split(64):
                    if method == "metric":  # metric loss + RKD distance towards the previous model's embeddings
                        e = model.head(x[b])
                        loss = ms(e, yy[b]).value + (rkd(e, old.head(x[b])).value if old is not None else 0.0)
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                        continue
                    logits = model(x[b])[:, :seen]
                    if method == "icarl":
                        with torch.no_grad():
                            old_logits = old(x[b])[:, :old_classes] if old is not None else None
                        loss = icarl_loss(logits, yy[b], old_logits)
                    else:
                        loss = F.cross_entropy(logits, yy[b])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        model.eval()
        with torch.no_grad():
            emb = F.normalize(x, dim=1) if method == "frozen" else model.head(x)
            memory.update(emb[new], yy[new], new)
            te = test_idx[yy[test_idx] < seen]
            preds = {"classifier": model(x[te])[:, :seen].argmax(1).numpy()} if "classifier" in classifiers else {}
            if method == "metric":
                if old is not None and means:
                    keys = list(means)
                    moved = drift_compensation(torch.stack([means[k] for k in keys]), old.head(x[new]), emb[new], 0.3)
                    means.update(zip(keys, moved))
                means.update({c: emb[new][yy[new] == c].mean(0) for c in range(old_classes, seen)})
                keys = sorted(means)
                preds["sdc"] = np.array(keys)[ncm_scores(emb[te], F.normalize(torch.stack([means[k] for k in keys]), dim=1)).argmax(1).numpy()]
            if "nme" in classifiers:
                mem = memory.indices()
                preds["nme"] = ncm_predict(emb[mem], yy[mem].numpy(), emb[te])
        task_of = np.searchsorted(np.cumsum([len(k) for k in tasks]), yy[te].numpy(), side="right")
        for c, p in preds.items():
            correct = p == yy[te].numpy()
            seen_acc[c].append(float(correct.mean()))
            for j in range(t + 1):
                acc[c][t, j] = float(correct[task_of == j].mean())
    return {c: incremental_scores(acc[c], seen_acc[c]) for c in classifiers}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--budget", type=int, default=320)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    train = emoji_features("train")
    x, y = train["x"], train["y"]
    train_idx, test_idx = split_renderings(y, a.seed)
    tasks = class_incremental_tasks(torch.unique(y[train_idx]).tolist(), a.tasks, a.seed)
    rows = []
    names = {"frozen": "frozen features, exemplars", "finetune": "fine-tuning", "replay": "fine-tuning + exemplar replay",
             "icarl": "iCaRL (exemplars + distillation)", "metric": "metric (MS + replay + RKD self-distillation)",
             "joint": "joint training (upper bound)"}
    for method, name in names.items():
        t = Timer()
        out = run(method, x, y, train_idx, test_idx, tasks, a.budget, a.epochs, a.seed)
        secs = t()
        for clf, s in out.items():
            if method == "frozen" and clf == "classifier":
                continue
            rows.append({"method": name, "classifier": {"nme": "NME", "sdc": "SDC means"}.get(clf, "linear"),
                         "avg incr. acc": 100 * s["average_incremental_accuracy"], "final acc": 100 * s["final_accuracy"],
                         "forgetting": 100 * s["forgetting"], "seconds": secs})
    print(f"{len(tasks)} tasks, {len(torch.unique(y[train_idx]))} identities, {len(train_idx)} train / "
          f"{len(test_idx)} test renderings, budget {a.budget} exemplars")
    print_table(rows)


if __name__ == "__main__":
    main()
