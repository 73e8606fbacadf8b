"""``query_detector_model_crops``: the two-stage localizer whose crops the image model itself embeds, with the
hubness correction, the box refiner and the context rescorer as options."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from metricvision.kb.model import ImageTextModel
from metricvision.kb.references import load_references
from metricvision.localization.crops import crop_boxes
from metricvision.localization.localizers import LOCALIZERS, CropDetectorLocalizer
from metricvision.localization.refine import crop_maps, load_refiner
from metricvision.localization.rescore import ContextRescorer, context_features, cross_validated_ap, match_labels
from metricvision.similarity import crowding

RESCORE = ("proposal", "refined", "mean")  # which crops score a refined proposal
CONTEXT = ("never", "always", "auto")  # when fit gives a localizer a context rescorer


@LOCALIZERS.register("query_detector_model_crops")
class ModelCropDetectorLocalizer(CropDetectorLocalizer):
    """Two stages as ``query_detector_crops``, but each proposal's square crop is embedded by the image model
    itself, whole, at its card's image size (``side``) with no padding, so the crops live exactly where the
    queries do (the trained crop embedder works at 64 px from a frozen stem). When the weights hold a trained
    crop embedder too, a crop's cosine is ``mix`` x the image model's + (1 - ``mix``) x the crop embedder's;
    unless given, ``mix`` is chosen by ``fit`` on validation scenes with ``gamma`` and the NMS threshold.

    With ``detector_model``, the proposals come from the head over that model's backbone while ``model`` embeds
    the queries and the crops alone (``mix`` 1; the crop embedder lives in the detector model's space): e.g. an
    identity model trained on scene crops (recipe ``data.train_transform: scene``, ``metricvision kb from-run``), or an
    ensemble of such models (``metricvision kb ensemble``), whose crop cosine is the mean of its members'.

    With ``references`` (embeddings of clean reference images, e.g. the training identities, in the model's space),
    a cosine is corrected for hubness by a simplified CSLS (Conneau et al., ICLR 2018: both r against one reference set):
    cos - ``hub`` x (r_crop + r_query) / 2, r = the mean cosine of a vector to its ``hub_k`` nearest references; a crop
    or query that resembles many references (a generic blob, a common look) loses what it gains everywhere, which
    also makes scores comparable across queries. ``fit`` chooses ``hub`` in (0, 0.5, 1) unless it is given.

    With ``refiner`` (weights from ``metricvision detector refiner``, ``localization.refine``), every proposal's box
    is regressed from the backbone maps of its crop, ``refine_passes`` times (each pass after the first crops the
    refined boxes anew); ``rescore`` says which crops score them: "proposal" (the proposals' own, no extra cost),
    "refined" (the refined boxes' crops, embedded anew) or "mean" (the normalized mean of both embeddings).

    Args: as ``CropDetectorLocalizer``, plus side: crop side in pixels (default: the model card's image size),
        mix: weight of the image model's cosine (None: ``fit`` chooses it; 1 without a trained crop embedder),
        detector_model: checkpoint of the image model the head was trained on, when it is not ``model``,
        references: as ``load_references`` (e.g. "emoji:train", the clean training renderings),
        hub: weight of the hubness correction (None: ``fit`` chooses it with references, else 0), hub_k: neighbours,
        refiner: box refiner weights (trained on ``model``'s maps at ``side``), refine_passes, rescore: see above,
        context: rescore each query's kept boxes by their context in the image (``localization.rescore``), fitted by
            ``fit`` on the validation scenes: "never", "always" or "auto" (kept if its cross-validated AP50 there is
            higher than the base scores').
    """

    needs_crop_embedder = False
    own_space = False

    def __init__(self, model: ImageTextModel, weights: str, max_boxes: int = 20, nms_iou: float = 0.5,
                 proposals: int = 40, gamma: float = 1.0, temperature: float = 10.0, side: Optional[int] = None,
                 mix: Optional[float] = None, detector_model: Optional[str] = None, references: Any = None,
                 hub: Optional[float] = None, hub_k: int = 10, refiner: Optional[str] = None, refine_passes: int = 1,
                 rescore: str = "proposal", context: str = "never", vote: Optional[float] = None,
                 runtime: str = "torch") -> None:
        super().__init__(model, weights, max_boxes=max_boxes, nms_iou=nms_iou, proposals=proposals, gamma=gamma,
                         temperature=temperature, detector_model=detector_model, vote=vote, runtime=runtime)
        if refine_passes < 1:
            raise ValueError(f"refine_passes must be >= 1, got {refine_passes}")
        if rescore not in RESCORE:
            raise ValueError(f"rescore must be one of {RESCORE}, got {rescore!r}")
        self.references = None if references is None else load_references(references, model)
        if hub is not None and (hub < 0 or (hub > 0 and self.references is None)):
            raise ValueError(f"hub must be >= 0 (and > 0 only with references), got {hub}")
        if hub_k < 1 or (self.references is not None and hub_k > len(self.references)):
            raise ValueError(f"hub_k must be in [1, the number of references], got {hub_k}")
        self.choose_hub = hub is None and self.references is not None
        self.hub, self.hub_k = hub or 0.0, hub_k
        if detector_model:
            if mix not in (None, 1.0):
                raise ValueError(f"with detector_model, crops are scored by the model alone (mix 1), got mix={mix}")
            self.crop = None
        self.embedder, self.side = model.embedder.eval(), side or model.card.image_size
        if self.side < 16:
            raise ValueError(f"side must be >= 16 px, got {self.side}")
        if refiner and getattr(self.embedder, "sizes", None):
            raise ValueError(f"a box refiner reads backbone maps, and an ensemble of members at sizes "
                             f"{self.embedder.sizes} has none: use a single-size model with it")
        self.refiner = load_refiner(refiner, self.embedder, self.side)[0] if refiner else None
        self.refine_passes, self.rescore = refine_passes, rescore
        if mix is not None and (not 0.0 <= mix <= 1.0 or (mix < 1.0 and self.crop is None)):
            raise ValueError(f"mix must be in [0, 1] (1 without a trained crop embedder in {weights}), got {mix}")
        self.choose_mix = mix is None and self.crop is not None
        self.mix = 1.0 if mix is None else mix
        if context not in CONTEXT:
            raise ValueError(f"context must be one of {CONTEXT}, got {context!r}")
        self.context_mode = context
        self.context: Optional[ContextRescorer] = None

    @torch.no_grad()
    def prepare(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(3, H, W) image in [0, 1] -> proposals (K, 4) (refined, with a refiner), their objectness log-probabilities
        (K,), crop embeddings (m, K, D)."""
        boxes, logp = self.propose(image)
        if self.refiner is None:
            return boxes, logp, self.embed_crops(image, boxes)
        maps = crop_maps(self.embedder, image, boxes, self.side)
        emb = self.embed_crops(image, boxes, maps)
        for k in range(self.refine_passes):
            boxes = self.refiner.refine(boxes, maps)
            if k + 1 < self.refine_passes or self.rescore != "proposal":
                maps = crop_maps(self.embedder, image, boxes, self.side)
        if self.rescore == "proposal":
            return boxes, logp, emb
        refined = self.embed_crops(image, boxes, maps)
        return boxes, logp, refined if self.rescore == "refined" else torch.nn.functional.normalize(emb + refined, dim=-1)

    @torch.no_grad()
    def embed_crops(self, image: torch.Tensor, boxes: torch.Tensor, maps: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(3, H, W) image in [0, 1], (n, 4) boxes (and, if computed, the (n, C, h, w) backbone maps of their crops)
        -> (m, n, D) embeddings of their square crops: the image model's, then (m = 2) the trained crop embedder's."""
        if maps is not None:
            own = self.embedder.from_features(maps)
        elif self.runtime == "torch":
            own = self.embedder.from_features(crop_maps(self.embedder, image, boxes, self.side))
        else:  # the image model's whole forward on the crops
            own = self.run("crops", lambda: self.embedder, crop_boxes(image, boxes, self.side))
        return torch.stack([own, self.crop.embed(image, boxes)]) if self.crop is not None else own[None]

    def cosines(self, emb: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """(m, K, D) crop embeddings, (Q, D) normalized queries -> (K, Q) cosines, mixed as ``mix`` says, less the
        hubness correction (``hub``) of the image model's crop and query embeddings."""
        cos = emb @ queries.T
        cos = cos[0] if len(cos) == 1 else self.mix * cos[0] + (1 - self.mix) * cos[1]
        return self.hub_corrected(cos, self.crowding(emb[0])[:, None] if self.hub else None, queries)

    def hub_corrected(self, cos: torch.Tensor, crop_crowding: Optional[torch.Tensor], queries: torch.Tensor) -> torch.Tensor:
        """(K, Q) cosines less ``hub`` x the mean of the crops' (K, 1) or (K, Q) crowding and the (Q, D) queries'
        (unchanged when ``hub`` is 0)."""
        if not self.hub:
            return cos
        return cos - self.hub * (crop_crowding + self.crowding(queries)[None, :]) / 2

    def crowding(self, x: torch.Tensor) -> torch.Tensor:
        """(n, D) normalized embeddings -> (n,) mean cosine to their ``hub_k`` nearest references."""
        return crowding(x, self.references, self.hub_k)

    def scored(self, boxes: torch.Tensor, logp: torch.Tensor, cos: torch.Tensor, keep: torch.Tensor, score: torch.Tensor,
               query: torch.Tensor) -> np.ndarray:
        """One query's ``candidates`` -> (n, 5) kept boxes with their scores (the context rescorer's, if fitted), best
        first."""
        if self.context is None:
            return super().scored(boxes, logp, cos, keep, score, query)
        p = self.context.score(self.context_features(boxes, logp, cos, keep, score, query))
        order = np.argsort(-p, kind="stable")
        kept = self.voted(boxes, logp, cos, keep).numpy().astype(np.float64)
        return np.concatenate([kept, p[:, None]], axis=1)[order]

    def context_features(self, boxes: torch.Tensor, logp: torch.Tensor, cos: torch.Tensor, keep: torch.Tensor,
                         score: torch.Tensor, query: torch.Tensor) -> np.ndarray:
        """One query's ``candidates`` -> (n, F) ``rescore.context_features`` of its kept boxes."""
        crowd = float(self.crowding(query[None])[0]) if self.references is not None else 0.0
        return context_features(boxes.numpy(), logp.numpy(), cos.numpy(), keep.numpy(), score.numpy(), crowd)

    def fit(self, prepared: Sequence[Any], queries: torch.Tensor, gt_boxes: Sequence[np.ndarray]) -> Dict[str, Any]:
        """Choose the settings of ``fit_grid`` by AP50 on prepared validation images, then box voting's; then, unless ``context`` is
        "never", fit the context rescorer on their boxes ("auto": kept only if its cross-validated AP50 on them beats
        the base scores')."""
        self.context = None
        chosen = self._grid(prepared, queries, gt_boxes, self.fit_grid())
        chosen.update(self.fit_vote(prepared, queries, gt_boxes))
        if self.context_mode == "never":
            return chosen
        cands = [self.candidates(p, q[None])[0] for p, q in zip(prepared, queries)]
        feats = [self.context_features(*c) for c in cands]
        kept = [self.voted(*c[:4]).numpy() for c in cands]
        labels = [match_labels(k, g) for k, g in zip(kept, gt_boxes)]
        positives, total = sum(int(y.sum()) for y in labels), sum(len(y) for y in labels)
        if self.context_mode == "auto" and not 0 < positives < total:  # nothing to learn: keep the base scores
            return {**chosen, "context": False}
        cv = cross_validated_ap(feats, labels, kept, [c[4].numpy() for c in cands], list(gt_boxes))
        if self.context_mode == "always" or cv["rescored"] > cv["base"]:
            self.context = ContextRescorer().fit(feats, labels)
        return {**chosen, "context": self.context is not None, "context_cv_AP50": {k: round(v, 3) for k, v in cv.items()}}

    def fit_grid(self) -> Dict[str, Sequence[float]]:
        """``gamma``, the NMS threshold, (with a crop embedder, unless given) ``mix`` and (with references, unless
        given) ``hub``, with the values ``fit`` tries."""
        grid: Dict[str, Sequence[float]] = {"gamma": (0.0, 0.5, 1.0, 2.0, 4.0), "nms_iou": (0.3, 0.5, 0.7)}
        if self.choose_mix:
            grid["mix"] = (0.0, 0.5, 1.0)
        if self.choose_hub:
            grid["hub"] = (0.0, 0.5, 1.0)
        return grid


from metricvision.localization import priming  # noqa: E402,F401 (registers query_detector_primed_crops, a subclass)
