"""models.runtime: ONNX Runtime gives what eager PyTorch gives, for embedders, ensembles and the detector's pass."""
import numpy as np
import pytest
import torch

from metricvision.kb.model import ImageTextModel, ModelCard
from metricvision.localization.detector import Predictor, QueryDetector
from metricvision.localization.localizers import LOCALIZERS
from metricvision.localization.train import save_detector
from metricvision.models.embedder import Embedder
from metricvision.models.ensemble import EnsembleEmbedder
from metricvision.models.runtime import runner

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _randomized_norms(module):
    """Batch-norm statistics away from (0, 1), so that a runtime that dropped or misread them would show."""
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module.eval()


def test_an_embedder_gives_the_same_embeddings_for_any_batch_size():
    torch.manual_seed(0)
    model = _randomized_norms(Embedder("small_cnn", "gem", 16))
    run = runner(model, "onnx")
    for n in (1, 3, 7):  # exported once, at a batch of 2; the batch dimension stays free
        x = torch.rand(n, 3, 40, 40)
        with torch.no_grad():
            expected = model(x)
        got = run(x)
        assert got.shape == (n, 16) and torch.allclose(got, expected, atol=1e-5)
    assert list(run.sessions) == [(3, 40, 40)]
    assert run(torch.rand(0, 3, 40, 40)).shape == (0, 16)  # no crops: the module itself, no graph needed
    run(torch.rand(2, 3, 48, 48))  # another input size: a second graph
    assert list(run.sessions) == [(3, 40, 40), (3, 48, 48)]


def test_int8_is_calibrated_on_the_first_calls_and_then_approximates_the_float_embeddings():
    torch.manual_seed(0)
    model = _randomized_norms(Embedder("small_cnn", "gem", 16))
    run = runner(model, "onnx_int8", calibration=2)
    batches = [torch.rand(6, 3, 32, 32) for _ in range(3)]
    with torch.no_grad():
        expected = [model(b) for b in batches]
    got = [run(b) for b in batches]
    for g, e in zip(got[:2], expected):  # calibration calls run the float graph
        assert torch.allclose(g, e, atol=1e-5)
    assert not run.seen and not run.proto  # calibrated: the 8-bit graph replaced the float one
    cos = (torch.nn.functional.normalize(got[2], dim=1) * expected[2]).sum(1)
    assert cos.min() > 0.99 and not torch.allclose(got[2], expected[2], atol=1e-5)
    with pytest.raises(ValueError, match="calibration"):
        runner(model, "onnx_int8", calibration=-1)


def test_a_mixed_size_ensemble_resizes_inside_the_graph():
    torch.manual_seed(0)
    members = [_randomized_norms(Embedder("small_cnn", "gem", 8)) for _ in range(2)]
    ensemble = EnsembleEmbedder(members, sizes=[32, 48]).eval()
    x = torch.rand(5, 3, 48, 48)
    with torch.no_grad():
        expected = ensemble(x)
    assert torch.allclose(runner(ensemble, "onnx")(x), expected, atol=1e-5)


def test_a_localizer_under_onnx_finds_the_boxes_it_finds_under_torch(tmp_path):
    """MobileNetV2 (depthwise convolutions, batch norms, ReLU6) through the detector's pass and the crops' embedding."""
    torch.manual_seed(0)
    model = ImageTextModel(ModelCard(backbone="mobilenet_v2", image_size=32))
    _randomized_norms(model.embedder)
    detector = QueryDetector(model.embedder, hidden=8)
    for p in detector.parameters():  # a head that is not at its initial zeros
        p.data.add_(torch.randn_like(p) * 0.05)
    save_detector(detector, tmp_path / "det.safetensors")
    image = torch.rand(3, 96, 128)
    queries = torch.nn.functional.normalize(torch.randn(3, model.dim), dim=1)
    locs = {runtime: LOCALIZERS.create("query_detector_model_crops", model=model, weights=str(tmp_path / "det.safetensors"),
                                       max_boxes=5, runtime=runtime) for runtime in ("torch", "onnx")}
    expected, got = detector.predict(image[None]), locs["onnx"].predict(image[None])
    for a, b in zip(got, expected):  # objectness, boxes, region embeddings
        assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-4)
    found = {runtime: loc.localize(image, queries) for runtime, loc in locs.items()}
    assert sorted(locs["onnx"]._runners) == ["crops", "detector"] and not locs["torch"]._runners
    for a, b in zip(found["torch"], found["onnx"]):
        assert len(a) == len(b) > 0 and np.allclose(a, b, atol=1e-3)
    with pytest.raises(ValueError, match="primed"):
        Predictor(QueryDetector(model.embedder, hidden=8, prime=True))
    int8 = LOCALIZERS.create("query_detector_model_crops", model=model, weights=str(tmp_path / "det.safetensors"),
                             max_boxes=5, runtime="onnx_int8")
    for a, b in zip(int8.prepare(image)[:2], locs["torch"].prepare(image)[:2]):  # proposals from the float graph
        assert torch.allclose(a, b, atol=1e-3)
    with pytest.raises(ValueError, match="runtime must be one of"):
        LOCALIZERS.create("query_detector", model=model, weights=str(tmp_path / "det.safetensors"), runtime="tensorrt")
