"""Object queries embedded from several views: one clean rendering stands for the ways a scene shows the object.

An image query for an object (another vendor's rendering on a plain background) is embedded
as the normalized mean of the embeddings of its views: the image itself, rotated (up to 25
degrees either way, the corners filled with the image's own background colour), blurred,
darker and brighter. Objects in scenes are rotated, blurred and relit; a query averaged over
such views sits nearer all of them (test-time augmentation of the query only: the scene
side is unchanged, and the views cost one batch of image-model passes per query).
"""
from __future__ import annotations

from typing import Any, List, Sequence

import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageFilter

from metricvision.data import load_image

ANGLES = (-25.0, -18.0, -12.0, -6.0, 6.0, 12.0, 18.0, 25.0)
BLUR_RADIUS = 1.0
BRIGHTNESS = (0.75, 1.25)
MAX_SIDE = 512


def object_views(image: Any, max_side: int = MAX_SIDE) -> List[Image.Image]:
    """One query image (path, array or PIL) -> its 12 views: itself, 8 rotations, a blur, 2 brightness changes;
    an image larger than ``max_side`` is first reduced to it (the image model sees far fewer pixels anyway)."""
    im = load_image(image)
    if max(im.size) > max_side:
        im = im.copy()
        im.thumbnail((max_side, max_side), Image.BILINEAR)
    fill = im.getpixel((0, 0))  # the background of a rendering on a plain canvas
    views = [im] + [im.rotate(a, resample=Image.BICUBIC, fillcolor=fill) for a in ANGLES]
    views.append(im.filter(ImageFilter.GaussianBlur(BLUR_RADIUS)))
    return views + [ImageEnhance.Brightness(im).enhance(b) for b in BRIGHTNESS]


def encode_object_queries(model, images: Sequence[Any], views: bool = True) -> torch.Tensor:
    """(N,) query images -> (N, D) normalized embeddings: the mean over ``object_views`` (or the images alone).

    ``model`` is a :class:`metricvision.kb.model.ImageTextModel`.
    """
    if not views:
        return model.encode_images(list(images))
    per_image = [object_views(im) for im in images]
    if not per_image:
        return torch.empty(0, model.dim)
    emb = model.encode_images([v for vs in per_image for v in vs]).reshape(len(per_image), len(per_image[0]), -1)
    return F.normalize(emb.mean(dim=1), dim=1)
