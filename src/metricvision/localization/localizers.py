"""The registry of localizers: methods that put scored boxes on the objects a query embedding names.

Every localizer has ``localize(image, queries) -> [(n, 5) x0 y0 x1 y1 score per query]``,
split into ``prepare(image)`` (the query-independent work, shareable between localizers
of the same kind) and ``boxes(prepared, queries)``; and ``fit(prepared, queries, gt_boxes)``,
which chooses its thresholds on validation scenes (never on the scenes it is scored on).
Queries are embeddings in the image model's space: another rendering (``encode_images``)
or a name (``encode_text``).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from metricvision._registry import Registry
from metricvision.kb.model import ImageTextModel
from metricvision.localization.detector import Predictor
from metricvision.models.ensemble import EnsembleEmbedder
from metricvision.models.runtime import RUNTIMES, runner

LOCALIZERS: Registry = Registry("localizer")


@LOCALIZERS.register("query_detector")
class DetectorLocalizer:
    """One-shot, query-conditioned detection (``localization.detector.QueryDetector``) with trained head weights.

    Args:
        model: the image(-text) model the head was trained on (unless ``detector_model`` is given).
        weights: head weights from ``metricvision detector train``.
        max_boxes: boxes per query.
        nms_iou: NMS threshold (``fit`` chooses it).
        detector_model: checkpoint of the image model the head was trained on, when the queries and crops are
            embedded by another ``model`` (``query_detector_model_crops`` only: the other localizers score with
            embeddings in the head's own space).
        runtime: what runs the detector's query-independent pass (and, in ``query_detector_model_crops``, the
            image model on the crops): "torch" (eager), "onnx" (ONNX Runtime, the same outputs to float rounding,
            faster on CPU) or "onnx_int8" (the crops' embeddings in 8 bits, calibrated on the first 8 images' crops;
            the detector's pass as "onnx"); see ``models.runtime``. With a box refiner the crops' maps, which the
            refiner reads, are computed in torch whatever the runtime.
    """

    own_space = True  # scores compare the query with embeddings trained in the detector model's space

    def __init__(self, model: ImageTextModel, weights: str, max_boxes: int = 20, nms_iou: float = 0.5,
                 detector_model: Optional[str] = None, runtime: str = "torch") -> None:
        from metricvision.localization.train import load_detector

        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        if detector_model and self.own_space:
            raise ValueError(f"detector_model is for query_detector_model_crops only; {type(self).__name__} scores with "
                             "the head's own embeddings, which live in the space of the model it was trained on")
        base = ImageTextModel.from_checkpoint(detector_model).embedder if detector_model else model.embedder
        if isinstance(base, EnsembleEmbedder):
            raise ValueError("a detector head runs over one backbone, not an ensemble's: give query_detector_model_crops "
                             "the single model it was trained on as detector_model, and the ensemble as the model")
        self.detector, self.crop = load_detector(weights, base)
        self.max_boxes, self.nms_iou = max_boxes, nms_iou
        self.runtime = runtime
        self._runners: Dict[str, Callable[[torch.Tensor], Any]] = {}

    def run(self, name: str, module: Callable[[], torch.nn.Module], x: torch.Tensor, runtime: Optional[str] = None) -> Any:
        """``module()``'s forward on ``x`` under ``runtime`` (default: the localizer's); the runner is made on first use
        and kept as ``name``."""
        if name not in self._runners:
            self._runners[name] = runner(module(), runtime or self.runtime)
        return self._runners[name](x)

    def predict(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) in [0, 1] -> ``QueryDetector.predict``'s objectness, boxes and embeddings, under ``runtime``."""
        if self.runtime == "torch":
            return self.detector.predict(images)
        return self.run("detector", lambda: Predictor(self.detector), images, runtime="onnx")  # proposals in float

    def prepare(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(3, H, W) image in [0, 1] -> the detector's query-independent outputs."""
        return self.predict(image[None])

    def boxes(self, prepared: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], queries: torch.Tensor) -> List[np.ndarray]:
        """Prepared image, (Q, D) queries -> per query (n, 5) boxes with scores, best first."""
        return self.detector.select(prepared, queries, max_boxes=self.max_boxes, nms_iou=self.nms_iou)[0]

    def localize(self, image: torch.Tensor, queries: torch.Tensor) -> List[np.ndarray]:
        """(3, H, W), (Q, D) -> per query (n, 5) boxes with scores, best first."""
        return self.boxes(self.prepare(image), queries)

    def fit(self, prepared: Sequence[Any], queries: torch.Tensor, gt_boxes: Sequence[np.ndarray]) -> Dict[str, Any]:
        """Choose the NMS threshold by AP50 on prepared validation images, one (D,) query row each; returns it."""
        return self._grid(prepared, queries, gt_boxes, {"nms_iou": (0.3, 0.5, 0.7)})

    def _grid(self, prepared: Sequence[Any], queries: torch.Tensor, gt_boxes: Sequence[np.ndarray],
              grid: Dict[str, Sequence[float]]) -> Dict[str, Any]:
        """Set the attributes of ``grid`` to the combination of best AP50 on the prepared images; returns it."""
        import itertools

        from metricvision.metrics.detection import detection_ap

        best: Tuple[float, Dict[str, Any]] = (-np.inf, {})
        for values in itertools.product(*grid.values()):
            self.__dict__.update(dict(zip(grid, values)))
            found = [self.boxes(p, q[None])[0] for p, q in zip(prepared, queries)]
            ap = detection_ap([f[:, :4] for f in found], [f[:, 4] for f in found], gt_boxes)["AP50"]
            if ap > best[0]:
                best = (ap, dict(zip(grid, values)))
        self.__dict__.update(best[1])
        return best[1]


@LOCALIZERS.register("query_detector_primed")
class PrimedDetectorLocalizer(DetectorLocalizer):
    """The query-conditioned detector primed by the query: FiLM of its input features (``QueryDetector(prime=True)``)
    or of backbone layers (``prime_at``), as the weights say.

    Args:
        model: the image(-text) model the head was trained on.
        weights: weights from ``metricvision detector train --prime`` or ``--prime-at``.
        max_boxes: boxes per query.
        nms_iou: NMS threshold (``fit`` chooses it).
    """

    def __init__(self, model: ImageTextModel, weights: str, max_boxes: int = 20, nms_iou: float = 0.5) -> None:
        super().__init__(model, weights, max_boxes=max_boxes, nms_iou=nms_iou)
        if not self.detector.primed:
            raise ValueError(f"{weights} holds an unprimed detector; train one with `metricvision detector train --prime`")

    def prepare(self, image: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """(3, H, W) image in [0, 1] -> the query-independent features (``QueryDetector.features``) and the image size."""
        return self.detector.features(image[None]), tuple(image.shape[-2:])

    def boxes(self, prepared: Tuple[torch.Tensor, Tuple[int, int]], queries: torch.Tensor) -> List[np.ndarray]:
        """Prepared image, (Q, D) queries -> per query (n, 5) boxes with scores, best first."""
        feats, size = prepared
        return self.detector.select_primed(feats, size, queries, max_boxes=self.max_boxes, nms_iou=self.nms_iou)


@LOCALIZERS.register("peak_response")
class PeakResponseLocalizer(DetectorLocalizer):
    """Weakly supervised: instances from the query's peak response map (``localization.prm``, a simplified PRM).

    Args:
        model: the image(-text) model the head was trained on.
        weights: weights from ``metricvision detector train --weak`` (image-level labels only).
        max_boxes: peaks traced back per query.
        rel_threshold: fraction of a peak's back-propagated maximum that its mask keeps (``fit`` chooses it).
    """

    def __init__(self, model: ImageTextModel, weights: str, max_boxes: int = 20, rel_threshold: float = 0.2) -> None:
        super().__init__(model, weights, max_boxes=max_boxes)
        self.rel_threshold = rel_threshold

    def prepare(self, image: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """(3, H, W) image in [0, 1] -> the frozen features (1, D + C, h, w) and the image size."""
        return self.detector.features(image[None]), tuple(image.shape[-2:])

    def instances(self, prepared: Tuple[torch.Tensor, Tuple[int, int]], queries: torch.Tensor
                  ) -> List[Tuple[np.ndarray, np.ndarray]]:
        """Prepared image, (Q, D) queries -> per query masks (n, H, W) and boxes (n, 5), best first."""
        from metricvision.localization.prm import peak_instances

        feats, size = prepared
        return [peak_instances(self.detector, feats, size, q, self.max_boxes, self.rel_threshold) for q in queries]

    def boxes(self, prepared: Tuple[torch.Tensor, Tuple[int, int]], queries: torch.Tensor) -> List[np.ndarray]:
        """Prepared image, (Q, D) queries -> per query (n, 5) boxes with scores, best first."""
        return [b for _, b in self.instances(prepared, queries)]

    def fit(self, prepared: Sequence[Any], queries: torch.Tensor, gt_boxes: Sequence[np.ndarray]) -> Dict[str, Any]:
        """Choose the mask threshold by box AP50 on prepared validation images, one (D,) query row each."""
        return self._grid(prepared, queries, gt_boxes, {"rel_threshold": (0.1, 0.2, 0.35, 0.5)})


@LOCALIZERS.register("query_detector_crops")
class CropDetectorLocalizer(DetectorLocalizer):
    """Two stages: the QueryDetector's class-agnostic proposals, then each proposal's crop embedded (``CropEmbedder``).

    A proposal's score for a query is sigmoid(objectness) ** ``gamma`` * exp(``temperature`` * (cos - 1)),
    cos between the crop's and the query's embeddings; ``fit`` chooses ``gamma`` and the NMS threshold. With box
    voting (Gidaris & Komodakis, ICCV 2015), each box that NMS keeps is replaced by the mean of all proposals at IoU
    >= ``vote`` with it, weighted by their scores for the query; its score stays its own.

    Args:
        model: the image(-text) model the head was trained on.
        weights: weights from ``metricvision detector train`` with a crop embedder (``--crop-steps`` > 0).
        max_boxes: boxes per query.
        nms_iou: NMS threshold between a query's boxes.
        proposals: proposals kept per image (class-agnostic NMS at 0.7 over the best 200 locations).
        gamma: weight of the objectness.
        temperature: scale of the cosine similarity.
        vote: IoU threshold of box voting, in (0, 1]; 0 turns it off; None (default): off until ``fit`` chooses it
            among ``VOTES``.
    """

    needs_crop_embedder = True

    def __init__(self, model: ImageTextModel, weights: str, max_boxes: int = 20, nms_iou: float = 0.5,
                 proposals: int = 40, gamma: float = 1.0, temperature: float = 10.0,
                 detector_model: Optional[str] = None, vote: Optional[float] = None, runtime: str = "torch") -> None:
        super().__init__(model, weights, max_boxes=max_boxes, nms_iou=nms_iou, detector_model=detector_model,
                         runtime=runtime)
        if self.crop is None and self.needs_crop_embedder:
            raise ValueError(f"{weights} has no crop embedder; train one with `metricvision detector train --crop-steps N`")
        if proposals < 1:
            raise ValueError(f"proposals must be >= 1, got {proposals}")
        self.proposals, self.gamma, self.temperature = proposals, gamma, temperature
        if vote is not None and not 0.0 <= vote <= 1.0:
            raise ValueError(f"vote must be an IoU threshold in [0, 1] (0: no box voting), got {vote}")
        self.choose_vote, self.vote = vote is None, vote or 0.0

    def prepare(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(3, H, W) image in [0, 1] -> proposals (K, 4), their objectness log-probabilities (K,), crop embeddings (K, D)."""
        boxes, logp = self.propose(image)
        return boxes, logp, self.embed_crops(image, boxes)

    def propose(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(3, H, W) image in [0, 1] -> the best ``proposals`` (K, 4) and their objectness log-probabilities (K,)."""
        from torchvision.ops import nms

        obj, boxes, _ = self.predict(image[None])
        logp = torch.nn.functional.logsigmoid(obj[0].reshape(-1))
        flat = boxes[0].reshape(-1, 4)
        top = logp.topk(min(200, logp.numel())).indices
        keep = top[nms(flat[top], logp[top], 0.7)][: self.proposals]
        return flat[keep], logp[keep]

    def embed_crops(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """(3, H, W) image in [0, 1], (n, 4) boxes -> (n, D) embeddings of their crops (the trained crop embedder)."""
        return self.crop.embed(image, boxes)

    def cosines(self, emb: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Prepared crop embeddings, (Q, D) normalized queries -> (K, Q) cosines."""
        return emb @ queries.T

    def boxes(self, prepared: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], queries: torch.Tensor) -> List[np.ndarray]:
        """Prepared image, (Q, D) queries -> per query (n, 5) boxes with scores, best first."""
        return [self.scored(*c) for c in self.candidates(prepared, queries)]

    def candidates(self, prepared: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], queries: torch.Tensor
                   ) -> List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Prepared image, (Q, D) queries -> per query: all proposals (K, 4), their objectness (K,) and cosines (K,),
        the indices NMS keeps (n,, best first), their scores (n,) and the (D,) normalized query."""
        from torchvision.ops import nms

        boxes, logp, emb = prepared
        queries = torch.nn.functional.normalize(queries, dim=1)
        cos = self.cosines(emb, queries)
        scores = torch.exp(self.log_scores(logp[:, None], cos))
        out = []
        for q in range(queries.shape[0]):
            keep = nms(boxes, scores[:, q], self.nms_iou)[: self.max_boxes]
            out.append((boxes, logp, cos[:, q], keep, scores[keep, q], queries[q]))
        return out

    def scored(self, boxes: torch.Tensor, logp: torch.Tensor, cos: torch.Tensor, keep: torch.Tensor, score: torch.Tensor,
               query: torch.Tensor) -> np.ndarray:
        """One query's ``candidates`` -> (n, 5) kept boxes with their scores, best first."""
        return torch.cat([self.voted(boxes, logp, cos, keep), score[:, None]], dim=1).numpy().astype(np.float64)

    def log_scores(self, logp: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
        """Objectness log-probabilities and cosines (broadcastable) -> log of the proposals' scores for the query."""
        return self.gamma * logp + self.temperature * (cos - 1)

    def voted(self, boxes: torch.Tensor, logp: torch.Tensor, cos: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """One query's proposals (K, 4), objectness (K,), cosines (K,) and kept indices (n,) -> the (n, 4) kept boxes,
        each (with ``vote`` > 0) the score-weighted mean of the proposals at IoU >= ``vote`` with it."""
        if not self.vote:
            return boxes[keep]
        from torchvision.ops import box_iou

        near = box_iou(boxes[keep], boxes) >= self.vote  # each row holds its own box, so no row is empty
        # softmax of the log-scores over each neighbourhood: the weights are the scores, and none underflows to 0
        return torch.softmax(self.log_scores(logp, cos)[None, :].masked_fill(~near, -torch.inf), dim=1) @ boxes

    def fit(self, prepared: Sequence[Any], queries: torch.Tensor, gt_boxes: Sequence[np.ndarray]) -> Dict[str, Any]:
        """Choose ``gamma`` and the NMS threshold by AP50 on prepared validation images, one (D,) query row each; then
        (unless it was given) the box-voting threshold."""
        chosen = self._grid(prepared, queries, gt_boxes, {"gamma": (0.0, 0.5, 1.0, 2.0, 4.0), "nms_iou": (0.3, 0.5, 0.7)})
        return {**chosen, **self.fit_vote(prepared, queries, gt_boxes)}

    def fit_vote(self, prepared: Sequence[Any], queries: torch.Tensor, gt_boxes: Sequence[np.ndarray]) -> Dict[str, Any]:
        """Choose ``vote`` among ``VOTES`` by AP50 on prepared validation images, the other settings fixed (unless it
        was given: then {})."""
        return self._grid(prepared, queries, gt_boxes, {"vote": VOTES}) if self.choose_vote else {}


VOTES = (0.0, 0.5, 0.4)  # box-voting IoU thresholds that fit tries (0: none), the first kept on a tie


from metricvision.localization import dense, model_crops, prm  # noqa: E402,F401 (register dense_similarity,
#     query_detector_model_crops and, through it, query_detector_primed_crops; peak_crops)
