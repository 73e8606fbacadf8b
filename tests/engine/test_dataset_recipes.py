"""Every dataset recipe trains one tiny epoch through `metricvision train` on a copy of its dataset in
the native layout, and its protocol's metrics reach metrics.json and report.html."""
import json

import pytest
from native_datasets import (TINY, sets, write_cars196, write_class_folder, write_cub, write_inshop, write_lfw,
                             write_long_tail, write_miniimagenet, write_sop)

from metricvision.cli import main
RETRIEVAL = {"recall@1", "precision@1", "r_precision", "map@r"}


def data_at(writer):
    return lambda tmp: [f"data.path={writer(tmp / 'data')}"]


def faces(tmp):
    return [f"data.path={write_class_folder(tmp / 'identities', classes=4)}", f"eval.path={write_lfw(tmp / 'lfw')}"]


def fewshot(writer):
    return lambda tmp: [f"data.path={writer(tmp / 'data', classes=5, per_class=7)}", "supervision.params.n_way=2",
                        "supervision.params.n_query=2", "eval.params.n_query=2", "eval.params.episodes=5"]


def long_tail(prefix):
    # 10 / 6 / 2 training images per class: many, medium and few-shot with these thresholds
    return lambda tmp: [f"data.path={write_long_tail(tmp / 'data', prefix)}", "eval.params.many=8", "eval.params.few=3"]


CASES = [
    ("cub_reality_check", data_at(write_cub), RETRIEVAL | {"nmi"}),
    ("cars196_reality_check", data_at(write_cars196), RETRIEVAL),
    ("sop_reality_check", data_at(write_sop), RETRIEVAL),
    ("inshop", data_at(write_inshop), {"recall@1", "recall@10", "map@r"}),
    ("faces_arcface", faces, {"accuracy", "accuracy_std", "tar@far=0.001"}),
    ("faces_cosface", faces, {"accuracy", "tar@far=0.001"}),
    ("miniimagenet_1shot", fewshot(write_miniimagenet), {"accuracy", "ci95", "episodes"}),
    ("miniimagenet_5shot", fewshot(write_miniimagenet), {"accuracy", "ci95"}),
    ("imagenet_lt", long_tail("ImageNet_LT"), {"accuracy", "many_shot", "medium_shot", "few_shot"}),
    ("places_lt", long_tail("Places_LT"), {"accuracy", "many_shot", "medium_shot", "few_shot"}),
]


@pytest.mark.parametrize("recipe,layout,expected", CASES, ids=[c[0] for c in CASES])
def test_recipe_trains_one_epoch_and_reports_its_protocol(tmp_path, capsys, recipe, layout, expected):
    run = tmp_path / "run"
    overrides = TINY + layout(tmp_path)
    if recipe.startswith("miniimagenet"):  # an episode sets the batch; keep 5-shot's support within 7 images
        overrides += ["supervision.params.k_shot=1", f"eval.params.k_shot={1 if '1shot' in recipe else 5}"]
    assert main(["train", recipe, *sets(overrides), "--out", str(run), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads((run / "metrics.json").read_text())
    assert expected <= set(metrics) and printed == pytest.approx(metrics)
    html = (run / "report.html").read_text()
    assert all(f"<td>{k}</td>" in html for k in expected)
    assert html.count("data:image/png;base64") >= 2  # loss curve + Recall@K curve or scores chart
    assert ("alt='recall curve'" if "recall@1" in expected else "alt='scores chart'") in html
    record = json.loads((run / "splits.json").read_text())
    assert record["eval"]["protocol"] and record["train"]["samples"] > 0
