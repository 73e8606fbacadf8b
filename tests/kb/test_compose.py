import pytest
import torch
import torch.nn.functional as F

from metricvision.kb.compose import Combiner, train_combiner, weighted_sum


def test_weighted_sum_formula():
    torch.manual_seed(0)
    a, b = F.normalize(torch.randn(4, 6), dim=1), F.normalize(torch.randn(4, 6), dim=1)
    assert torch.allclose(weighted_sum(a, b, 0.0), a) and torch.allclose(weighted_sum(a, b, 1.0), b)
    assert torch.allclose(weighted_sum(a, b, 0.3), F.normalize(0.7 * a + 0.3 * b, dim=1))
    with pytest.raises(ValueError, match="text_weight must be in"):
        weighted_sum(a, b, 2.0)


def test_untrained_combiner_is_the_weighted_sum_and_roundtrips(tmp_path):
    torch.manual_seed(0)
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    c = Combiner(8).eval()
    assert torch.allclose(c(a, b), weighted_sum(a, b, 0.5), atol=1e-6)
    c.save(tmp_path / "c.safetensors")
    assert torch.equal(Combiner.load(tmp_path / "c.safetensors")(a, b), c(a, b))


def test_trained_combiner_beats_the_weighted_sum_on_a_nonlinear_task():
    # gallery: items (object o, attribute t) = normalize(O_o + T_t); the query is the item with
    # attribute 0 plus the text of attribute t; the target is (o, t). The text's embedding is a fixed
    # rotation of T_t, so the plain sum cannot reach the target and a learned map can.
    torch.manual_seed(0)
    d, n_obj, n_att = 16, 40, 4
    O, T = torch.randn(n_obj, d), torch.randn(n_att, d)
    R = torch.linalg.qr(torch.randn(d, d))[0]
    gallery = F.normalize(O[:, None] + T[None], dim=-1).reshape(-1, d)
    ids = torch.arange(n_obj * n_att)
    o, t = torch.meshgrid(torch.arange(n_obj), torch.arange(1, n_att), indexing="ij")
    o, t = o.reshape(-1), t.reshape(-1)
    img, txt, target = gallery[o * n_att], F.normalize(T[t] @ R, dim=-1), o * n_att + t
    train, test = o < 30, o >= 30
    model, logs = train_combiner(img[train], txt[train], target[train], gallery, ids, epochs=60, batch_size=32, loss="infonce")
    assert logs[-1]["loss"] < logs[0]["loss"]

    def r1(q):
        return float(((q @ gallery.T).argmax(1) == target[test]).float().mean())

    with torch.no_grad():
        learned, plain = r1(model(img[test], txt[test])), r1(weighted_sum(img[test], txt[test]))
    assert learned > plain + 0.3
