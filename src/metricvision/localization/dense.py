"""The training-free baseline localizer: peaks and regions of the dense cosine map between the query and an image."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from metricvision.kb.localize import boxes_from_map, similarity_map, tune_box_params, upsample
from metricvision.kb.model import ImageTextModel
from metricvision.localization.localizers import LOCALIZERS

DENSE_GRID = {"rel_threshold": (0.3, 0.45, 0.6, 0.75), "iou_threshold": (0.1, 0.3, 0.5)}


@LOCALIZERS.register("dense_similarity")
class DenseSimilarityLocalizer:
    """Training-free baseline: peaks and regions of the dense cosine-similarity map (``kb.localize``).

    Args:
        model: the image(-text) model whose dense embeddings are compared with the query.
        encode_side: side the image is resized to before the dense features are computed.
        rel_threshold, iou_threshold: ``boxes_from_map`` arguments (``fit`` chooses them).
        max_boxes: boxes per query.
    """

    def __init__(self, model: ImageTextModel, encode_side: int = 768, rel_threshold: float = 0.6,
                 iou_threshold: float = 0.3, max_boxes: int = 20) -> None:
        self.model, self.encode_side, self.max_boxes = model, encode_side, max_boxes
        self.params: Dict[str, Any] = {"rel_threshold": rel_threshold, "iou_threshold": iou_threshold}

    def prepare(self, image: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """(3, H, W) image in [0, 1] -> its dense embeddings (D, h, w) and its size."""
        x = torch.nn.functional.interpolate(image[None], size=(self.encode_side, self.encode_side), mode="bilinear",
                                            align_corners=False)
        return self.model.embedder.encode_dense(x)[0], tuple(image.shape[-2:])

    def heat_maps(self, prepared: Tuple[torch.Tensor, Tuple[int, int]], queries: torch.Tensor) -> List[np.ndarray]:
        """Prepared image, (Q, D) queries -> Q similarity maps (H, W)."""
        dense, size = prepared
        return [upsample(similarity_map(q, dense), size) for q in queries]

    def boxes(self, prepared: Tuple[torch.Tensor, Tuple[int, int]], queries: torch.Tensor) -> List[np.ndarray]:
        """Prepared image, (Q, D) queries -> per query (n, 5) boxes with scores, best first."""
        return [_as_array(boxes_from_map(h, max_boxes=self.max_boxes, **self.params)) for h in self.heat_maps(prepared, queries)]

    def localize(self, image: torch.Tensor, queries: torch.Tensor) -> List[np.ndarray]:
        """(3, H, W), (Q, D) -> per query (n, 5) boxes with scores, best first."""
        return self.boxes(self.prepare(image), queries)

    def fit(self, prepared: Sequence[Any], queries: torch.Tensor, gt_boxes: Sequence[np.ndarray]) -> Dict[str, Any]:
        """Choose the thresholds by AP50 on prepared validation images, one (D,) query row each; returns them."""
        heats = [self.heat_maps(p, q[None])[0] for p, q in zip(prepared, queries)]
        self.params, _ = tune_box_params(heats, gt_boxes, {"max_boxes": [self.max_boxes], **DENSE_GRID})
        self.params.pop("max_boxes")
        return dict(self.params)


def _as_array(boxes: Optional[list]) -> np.ndarray:
    return np.array([b.as_list() for b in boxes or []], np.float64).reshape(-1, 5)
