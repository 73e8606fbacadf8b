import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metricvision.data.scenes import SceneConfig, build_scenes
from metricvision.kb.model import ImageTextModel, ModelCard
from metricvision.localization.crops import crop_boxes
from metricvision.localization.detector import QueryDetector
from metricvision.localization.localizers import LOCALIZERS
from metricvision.localization.priming import (CropPrimer, background_boxes, load_primer, primer_examples, save_primer,
                                               train_primer)
from metricvision.localization.refine import paired_iou
from metricvision.localization.train import image_tensor, read_scenes, save_detector


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ImageTextModel(ModelCard(backbone="mobilenet_v2", image_size=32))


def tiny_scenes(path, seed: int, sides, distractors):
    """Six 96 px train scenes with one target each, and their image tensors."""
    cfg = SceneConfig(size=96, sides=sides, targets=(1, 1), distractors=distractors, blur=0.0)
    scenes = read_scenes(build_scenes(path / "s", "train", 6, seed=seed, cfg=cfg))
    return scenes, [image_tensor(p) for p in scenes.images]


def test_an_untrained_primer_is_the_unprimed_model_whatever_the_query(model):
    primer = CropPrimer(model.embedder, at=13).eval()
    crops = torch.rand(5, 3, 32, 32)
    plain = model.embedder.eval()(crops)
    primed = primer.primed(primer.trunk(crops), torch.randn(3, model.embedder.dim))
    assert primed.shape == (3, 5, model.embedder.dim)
    for q in range(3):
        assert torch.allclose(primed[q], plain, atol=1e-5)
    with torch.no_grad():  # a trained FiLM map makes the embedding depend on the query
        primer.film.weight.normal_(0, 0.05)
    primed = primer.primed(primer.trunk(crops), torch.randn(2, model.embedder.dim))
    assert (primed[0] - primed[1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"at must be a layer index in \[0, 17\]"):
        CropPrimer(model.embedder, at=18)


def test_priming_several_layers_starts_unprimed_and_each_film_map_counts(model, tmp_path):
    primer = CropPrimer(model.embedder, at=10, also_at=(13, 15)).eval()
    assert primer.also_at == (13, 15) and sorted(primer.later) == ["13", "15"]
    assert primer.later["13"].out_features == 2 * 96 and primer.later["15"].out_features == 2 * 160
    crops, queries = torch.rand(4, 3, 32, 32), torch.randn(2, model.embedder.dim)
    maps = primer.trunk(crops)
    assert torch.allclose(primer.primed(maps, queries)[0], model.embedder.eval()(crops), atol=1e-5)
    with torch.no_grad():  # only a later layer's FiLM map trained: the embedding depends on the query
        primer.later["15"].weight.normal_(0, 0.05)
    primed = primer.primed(maps, queries)
    assert (primed[0] - primed[1]).abs().max() > 1e-3
    save_primer(primer, tmp_path / "p.safetensors", side=32)
    loaded, _ = load_primer(tmp_path / "p.safetensors", model.embedder)
    assert loaded.at == 10 and loaded.also_at == (13, 15)
    assert torch.allclose(loaded.primed(maps, queries), primed, atol=1e-6)
    for bad in ((10,), (18,), (3,)):
        with pytest.raises(ValueError, match="also_at layers must lie between at = 10 and 18"):
            CropPrimer(model.embedder, at=10, also_at=bad)


def test_background_boxes_stay_off_the_objects():
    rng = np.random.default_rng(0)
    gt = np.array([[10.0, 10.0, 40.0, 40.0], [60.0, 50.0, 90.0, 80.0]])
    back = background_boxes(gt, (100, 120), 6, rng)
    assert len(back) == 6
    assert (back[:, :2] >= 0).all() and (back[:, 2] <= 120).all() and (back[:, 3] <= 100).all()
    iou = paired_iou(torch.from_numpy(back).repeat_interleave(2, 0), torch.from_numpy(gt).repeat(6, 1))
    assert iou.max() < 0.3


def test_a_trained_primer_separates_each_crops_identity_from_its_hard_negatives(model, tmp_path):
    scenes, images = tiny_scenes(tmp_path, 0, (28, 40), (1, 2))
    primer = CropPrimer(model.embedder, at=13)
    maps, ids, overlaps, scene = primer_examples(primer, images, scenes.boxes, scenes.identities, 32, jitters=3,
                                                 backgrounds=1)
    objects = sum(len(b) for b in scenes.boxes)
    assert maps.dtype == torch.float16 and len(maps) == len(ids) == len(overlaps) == len(scene)
    assert torch.equal(torch.bincount(scene), torch.tensor([3 * len(b) + 1 for b in scenes.boxes]))
    assert ((ids >= 0) & (overlaps >= 0.5)).sum() == 3 * objects  # the jittered crops; a background box overlaps < 0.3
    assert (ids == -1).sum() + ((ids >= 0) & (overlaps < 0.3)).sum() == len(scenes.images)
    # references: the unprimed embedding of each identity's exact crops, plus 12 random decoys
    ref_ids = torch.from_numpy(np.unique(np.concatenate(scenes.identities)))
    crops = [crop_boxes(im, torch.from_numpy(b).float(), 32) for im, b in zip(images, scenes.boxes)]
    plain = model.embedder.eval()(torch.cat(crops)).detach()
    who = torch.from_numpy(np.concatenate(scenes.identities))
    refs = torch.cat([F.normalize(torch.stack([plain[who == i].mean(0) for i in ref_ids]), dim=1),
                      F.normalize(torch.randn(12, plain.shape[1]), dim=1)])
    ref_ids = torch.cat([ref_ids, torch.arange(10**6, 10**6 + 12)])

    def margin() -> float:  # mean over object crops: cos with its own reference - best cos with another
        with torch.no_grad():
            e = primer.primed(maps[ids >= 0].float(), refs)  # (R, n, D)
            cos = torch.einsum("rnd,rd->nr", e, refs)
        own = (ids[ids >= 0, None] == ref_ids[None, :])
        return float((cos[own] - cos.masked_fill(own, -2).max(1).values).mean())

    before = margin()
    logs = train_primer(primer, maps, ids, ref_ids, [refs], steps=60, batch_size=16, negatives=2, hard=4, lr=2e-3,
                        log_every=20)
    assert logs[-1]["bce"] < logs[0]["bce"]
    assert margin() > before + 0.02
    save_primer(primer, tmp_path / "p.safetensors", side=32, image_model="tiny")
    loaded, side = load_primer(tmp_path / "p.safetensors", model.embedder)
    assert side == 32 and loaded.at == 13
    assert torch.allclose(loaded.primed(maps[:4].float(), refs[:2]), primer.eval().primed(maps[:4].float(), refs[:2]), atol=1e-6)
    with pytest.raises(ValueError, match="set side=32"):
        load_primer(tmp_path / "p.safetensors", model.embedder, side=48)
    with pytest.raises(FileNotFoundError, match="detector primer"):
        load_primer(tmp_path / "missing.safetensors", model.embedder)
    with pytest.raises(ValueError, match="hard >= negatives"):
        train_primer(primer, maps, ids, ref_ids, [refs], negatives=5, hard=4)


def test_proposals_are_labelled_by_overlap_and_a_piece_of_an_object_is_a_negative_for_it(model, tmp_path):
    scenes, images = tiny_scenes(tmp_path, 1, (36, 44), (0, 0))
    proposals = []
    for gt in scenes.boxes:  # per scene: the object's box, its left third, a box far from it
        x0, y0, x1, y1 = gt[0]
        far = [0.0, 0.0, 20.0, 20.0] if x0 > 30 or y0 > 30 else [70.0, 70.0, 90.0, 90.0]
        proposals.append(np.array([gt[0], [x0, y0, x0 + (x1 - x0) / 3, y1], far]))
    primer = CropPrimer(model.embedder, at=13)
    maps, ids, overlaps, _ = primer_examples(primer, images, scenes.boxes, scenes.identities, 32, jitters=1,
                                             backgrounds=0, proposals=proposals)
    assert len(maps) == 4 * len(images)  # per scene: 1 jittered box + 3 proposals
    who = torch.tensor([int(w[0]) for w in scenes.identities])
    assert torch.equal(ids.reshape(-1, 4), torch.stack([who, who, who, torch.full_like(who, -1)], 1))
    assert torch.allclose(overlaps.reshape(-1, 4)[:, 1:], torch.tensor([[1.0, 1 / 3, 0.0]]).expand(len(images), 3), atol=1e-4)
    with pytest.raises(ValueError, match="one \\(m, 4\\) array per scene"):
        primer_examples(primer, images, scenes.boxes, scenes.identities, 32, proposals=proposals[:2])

    ref_ids = torch.unique(who)
    plain = model.embedder.eval()(torch.cat([crop_boxes(im, torch.from_numpy(b[:1]).float(), 32)
                                             for im, b in zip(images, proposals)])).detach()
    refs = F.normalize(torch.stack([plain[who == i].mean(0) for i in ref_ids]), dim=1)
    piece = overlaps < 0.5

    def own_cos_on_pieces(p: CropPrimer) -> float:
        with torch.no_grad():
            e = p.primed(maps[piece].float(), refs)  # (R, n, D)
            cos = torch.einsum("rnd,rd->nr", e, refs)
        return float(cos[ids[piece, None] == ref_ids[None, :]].mean())

    scored = {}
    for name, given in (("overlaps", overlaps), ("none", None)):
        torch.manual_seed(0)
        p = CropPrimer(model.embedder, at=13)
        train_primer(p, maps, ids, ref_ids, [refs], steps=40, batch_size=12, negatives=1, hard=1, lr=3e-3,
                     overlaps=given)
        scored[name] = own_cos_on_pieces(p)
    assert scored["overlaps"] < scored["none"] - 0.05  # taught that a third of the object is not the object
    with pytest.raises(ValueError, match="one value per crop"):
        train_primer(primer, maps, ids, ref_ids, [refs], negatives=1, hard=1, overlaps=overlaps[:3])


def test_scene_negatives_teach_a_crop_apart_from_the_other_objects_of_its_scene(model, tmp_path):
    scenes, images = tiny_scenes(tmp_path, 2, (28, 36), (2, 2))
    primer = CropPrimer(model.embedder, at=13)
    maps, ids, overlaps, scene = primer_examples(primer, images, scenes.boxes, scenes.identities, 32, jitters=2,
                                                 backgrounds=0)
    who = torch.from_numpy(np.concatenate(scenes.identities))
    ref_ids = torch.unique(who)
    plain = model.embedder.eval()(torch.cat([crop_boxes(im, torch.from_numpy(b).float(), 32)
                                             for im, b in zip(images, scenes.boxes)])).detach()
    means = F.normalize(torch.stack([plain[who == i].mean(0) for i in ref_ids]), dim=1)
    # decoys next to every identity: the global hard negatives are all decoys, never another object of the scene
    decoys = F.normalize(means.repeat(2, 1) + 0.02 * torch.randn(2 * len(means), means.shape[1]), dim=1)
    refs, all_ids = torch.cat([means, decoys]), torch.cat([ref_ids, ref_ids + 10**6, ref_ids + 2 * 10**6])
    mates = torch.zeros(len(ids), len(all_ids), dtype=torch.bool)  # crop x reference: another object of its scene
    for k, (s, i) in enumerate(zip(scene.tolist(), ids.tolist())):
        for j in scenes.identities[s]:
            mates[k, int((all_ids == int(j)).nonzero())] = int(j) != i

    def cos_to_mates(p: CropPrimer) -> float:
        with torch.no_grad():
            e = p.primed(maps.float(), refs)  # (R, n, D)
            return float(torch.einsum("rnd,rd->nr", e, refs)[mates].mean())

    scored = {}
    for k in (0, 2):
        torch.manual_seed(0)
        p = CropPrimer(model.embedder, at=13)
        train_primer(p, maps, ids, all_ids, [refs], steps=40, batch_size=12, negatives=2, hard=2, lr=3e-3,
                     scenes=scene, scene_negatives=k)
        scored[k] = cos_to_mates(p)
    assert scored[2] < scored[0] - 0.05
    with pytest.raises(ValueError, match="scene_negatives must be in \\[0, negatives = 2\\]"):
        train_primer(primer, maps, ids, all_ids, [refs], negatives=2, hard=2, scenes=scene, scene_negatives=3)
    with pytest.raises(ValueError, match="one scene index per crop"):
        train_primer(primer, maps, ids, all_ids, [refs], negatives=2, hard=2, scene_negatives=1)


def test_category_cues_teach_a_crop_its_category_and_the_control_stays_unprimed(model, tmp_path):
    scenes, images = tiny_scenes(tmp_path, 3, (28, 40), (1, 2))
    primer = CropPrimer(model.embedder, at=13)
    maps, ids, overlaps, _ = primer_examples(primer, images, scenes.boxes, scenes.identities, 32, jitters=2, backgrounds=1)
    names = sorted(scenes.category_names)
    of = {int(i): names.index(int(c)) for x, y in zip(scenes.identities, scenes.categories) for i, c in zip(x, y)}
    cats = torch.tensor([of.get(int(i), -1) for i in ids.tolist()])
    torch.manual_seed(0)
    cat_refs = F.normalize(torch.randn(len(names), model.embedder.dim), dim=1)  # one cue per category
    ref_ids = torch.from_numpy(np.unique(np.concatenate(scenes.identities)))
    refs = F.normalize(torch.randn(len(ref_ids), model.embedder.dim), dim=1)
    whole = (cats >= 0) & (overlaps >= 0.5)

    def margin(p: CropPrimer) -> float:  # mean over whole objects: cos with its category's cue - best other cue
        with torch.no_grad():
            cos = torch.einsum("cnd,cd->nc", p.primed(maps[whole].float(), cat_refs), cat_refs)
        own = F.one_hot(cats[whole], len(names)).bool()
        return float((cos[own] - cos.masked_fill(own, -2).max(1).values).mean())

    before = margin(primer)
    kw = dict(steps=60, batch_size=16, negatives=2, hard=2, lr=3e-3, categories=cats, category_refs=cat_refs,
              category_share=1.0)
    train_primer(primer, maps, ids, ref_ids, [refs], **kw)
    assert margin(primer) > before + 0.05
    control = CropPrimer(model.embedder, at=13)
    train_primer(control, maps, ids, ref_ids, [refs], film=False, **kw)
    assert control.film.weight.abs().max() == 0 and control.film.bias.abs().max() == 0
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(control.top.parameters(), primer.top.parameters()))
    e = control.primed(maps[:3].float(), cat_refs[:2])
    assert torch.allclose(e[0], e[1], atol=1e-6)  # unprimed: the same embedding whatever the cue
    with pytest.raises(ValueError, match="more than negatives = 2 category references"):
        train_primer(primer, maps, ids, ref_ids, [refs], **{**kw, "category_refs": cat_refs[:2]})
    with pytest.raises(ValueError, match="category_share must be in"):
        train_primer(primer, maps, ids, ref_ids, [refs], **{**kw, "category_share": 1.5})


def test_primed_crops_localizer_starts_as_the_unprimed_one_and_needs_a_primer(model, tmp_path):
    save_detector(QueryDetector(model.embedder, hidden=8), tmp_path / "det.safetensors")
    weights = str(tmp_path / "det.safetensors")
    save_primer(CropPrimer(model.embedder, at=13), tmp_path / "p.safetensors", side=32)
    refs = F.normalize(torch.randn(20, model.embedder.dim), dim=1)
    plain = LOCALIZERS.create("query_detector_model_crops", model=model, weights=weights, proposals=6, references=refs, hub=0.5)
    primed = LOCALIZERS.create("query_detector_primed_crops", model=model, weights=weights, proposals=6, references=refs,
                               hub=0.5, mix=1.0, primer=str(tmp_path / "p.safetensors"))
    torch.manual_seed(1)
    image, queries = torch.rand(3, 96, 96), F.normalize(torch.randn(2, model.embedder.dim), dim=1)
    a, b = plain.prepare(image), primed.prepare(image)
    assert torch.equal(a[0], b[0]) and b[2].maps.dim() == 4  # same proposals; crop maps at the primer's layer
    assert torch.allclose(plain.cosines(a[2], queries), primed.cosines(b[2], queries), atol=1e-5)
    for x, y in zip(plain.boxes(a, queries), primed.boxes(b, queries)):
        assert np.allclose(x, y, atol=1e-4)
    assert torch.allclose(b[2].plain, a[2][0], atol=1e-5)  # the unprimed embeddings, for a blend
    with pytest.raises(ValueError, match="needs primer=WEIGHTS"):
        LOCALIZERS.create("query_detector_primed_crops", model=model, weights=weights)
    with pytest.raises(ValueError, match="no refiner"):
        LOCALIZERS.create("query_detector_primed_crops", model=model, weights=weights, primer=str(tmp_path / "p.safetensors"),
                          refiner="r.safetensors")


def test_blend_mixes_the_primed_and_unprimed_cosines_and_is_chosen_on_validation(model, tmp_path):
    save_detector(QueryDetector(model.embedder, hidden=8), tmp_path / "det.safetensors")
    weights = str(tmp_path / "det.safetensors")
    primer = CropPrimer(model.embedder, at=13)
    with torch.no_grad():  # a trained FiLM map: primed and unprimed cosines differ
        primer.film.weight.normal_(0, 0.2)
    save_primer(primer, tmp_path / "p.safetensors", side=32)
    refs = F.normalize(torch.randn(20, model.embedder.dim), dim=1)
    kw = dict(model=model, weights=weights, proposals=6, references=refs, hub=0.5, primer=str(tmp_path / "p.safetensors"))
    plain = LOCALIZERS.create("query_detector_model_crops", model=model, weights=weights, proposals=6, references=refs, hub=0.5)
    torch.manual_seed(2)
    image, queries = torch.rand(3, 96, 96), F.normalize(torch.randn(2, model.embedder.dim), dim=1)
    a = plain.prepare(image)
    full, none, half = (LOCALIZERS.create("query_detector_primed_crops", blend=w, **kw) for w in (1.0, 0.0, 0.5))
    assert full.prepare(image)[2].plain is None  # blend 1: no unprimed embeddings computed
    b = half.prepare(image)
    primed_cos, plain_cos = full.cosines(b[2], queries), plain.cosines(a[2], queries)
    assert (primed_cos - plain_cos).abs().max() > 1e-3
    assert torch.allclose(none.cosines(b[2], queries), plain_cos, atol=1e-5)
    assert torch.allclose(half.cosines(b[2], queries), (primed_cos + plain_cos) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="needs the unprimed embeddings"):
        half.cosines(full.prepare(image)[2], queries)
    with pytest.raises(ValueError, match=r"blend .* must be in \[0, 1\], got 1.5"):
        LOCALIZERS.create("query_detector_primed_crops", blend=1.5, **kw)
    chooser = LOCALIZERS.create("query_detector_primed_crops", **kw)
    assert chooser.fit_grid()["blend"] == (0.5, 0.75, 1.0) and "blend" not in half.fit_grid()
    gt = [b[0][:1].numpy().astype(np.float64)]
    chosen = chooser.fit([chooser.prepare(image)], queries[:1], gt)
    assert chosen["blend"] in (0.5, 0.75, 1.0) and chooser.blend == chosen["blend"]


def test_cli_trains_a_primer(model, tmp_path, capsys):
    import json

    from metricvision.cli import main
    from metricvision.kb.model import save_image_model

    ckpt = tmp_path / "model.safetensors"
    save_image_model(model.embedder, ckpt, image_size=32)
    cfg = SceneConfig(size=96, sides=(28, 40), targets=(1, 1), distractors=(1, 2), blur=0.0)
    build_scenes(tmp_path / "train", "train", 3, seed=0, cfg=cfg)
    out = tmp_path / "p.safetensors"
    assert main(["detector", "primer", "--scenes", str(tmp_path / "train"), "--checkpoint", str(ckpt), "--out", str(out),
                 "--steps", "4", "--batch-size", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["side"] == 32 and result["at"] == [13] and result["crops"] >= 2 * sum(len(b) for b in read_scenes(tmp_path / "train").boxes)
    assert load_primer(out, model.embedder)[1] == 32
    assert main(["detector", "primer", "--scenes", str(tmp_path / "train"), "--checkpoint", str(ckpt), "--out", str(out),
                 "--detector-model", str(ckpt)]) == 2
    assert "give --detector too" in capsys.readouterr().err
    assert main(["detector", "primer", "--scenes", str(tmp_path / "train"), "--checkpoint", str(ckpt), "--out", str(out),
                 "--category-share", "0.5"]) == 2
    assert "has no text model" in capsys.readouterr().err
