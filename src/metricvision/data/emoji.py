"""The built-in emoji dataset: real renderings that ship with the package.

A sample is one rendering (vendor x skin tone) of an emoji; its label is the emoji
identity (instance level), shared across vendors and skin tones. ``meta`` carries the
category and subcategory (category level) and the names (text). The standard split is
class-disjoint and deterministic: identities in Unicode sort order alternate between
train (even) and test (odd).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

from metricvision.data.packfile import cache_dir as packed_cache_dir, load_packed
from metricvision.data.registry import register_dataset
from metricvision.data.sample import Sample

PACKAGED_FILE = Path(__file__).parent / "assets" / "emoji_google_twitter_40.npz"
SPLITS = ("train", "test", "all")

def cache_dir() -> Path:
    """Where `metricvision data fetch emoji` writes larger variants."""
    return packed_cache_dir("emoji")

def variant_path(vendors: str, size: int) -> Path:
    """File name of a fetched variant, e.g. emoji_apple-google_48.npz."""
    return cache_dir() / f"emoji_{'-'.join(sorted(vendors.split(',')))}_{size}.npz"

def load_emoji(split: str = "train", path: Optional[str | Path] = None, vendors: Optional[List[str]] = None) -> List[Sample]:
    """Samples of the emoji dataset.

    Args:
        split: "train", "test" or "all".
        path: a dataset file (default: the one shipped in the package).
        vendors: keep only these vendors (default: all in the file).

    Returns:
        Samples with image (H, W, 3) uint8, label = identity id (global, not re-numbered),
        caption = the emoji's name, meta = category, subcategory, short_names, vendor, tone.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'")
    z = load_packed(str(path or PACKAGED_FILE), "metricvision data fetch emoji --vendors google,twitter")
    identities = json.loads(str(z["identities"]))
    vendor_names = [str(v) for v in z["vendor_names"]]
    if vendors:
        bad = [v for v in vendors if v not in vendor_names]
        if bad:
            raise ValueError(f"vendors {bad} not in this file; expected some of {vendor_names}")
    out = []
    for i in range(len(z["labels"])):
        label = int(z["labels"][i])
        vendor = vendor_names[int(z["vendors"][i])]
        if (split == "train" and label % 2) or (split == "test" and not label % 2):
            continue
        if vendors and vendor not in vendors:
            continue
        ident = identities[label]
        out.append(Sample(
            image=z["images"][i], label=label, caption=ident["name"], split="train" if label % 2 == 0 else "test",
            meta={"category": ident["category"], "subcategory": ident["subcategory"], "name": ident["name"],
                  "short_names": ident["short_names"], "unified": ident["unified"], "vendor": vendor,
                  "tone": str(z["tones"][i])},
        ))
    return out

@register_dataset(
    "emoji", licence="Noto Emoji: Apache-2.0; Twemoji: CC-BY 4.0 (see NOTICE)",
    description="built-in: 40 px Google and Twitter emoji renderings, identities alternate train / test",
)
def emoji_splits(path: Optional[str] = None, hold_out: str = "") -> dict:
    """{"train": [...], "test": [...]} of the emoji dataset (class-disjoint halves); ``hold_out: scene_val`` leaves
    out of "train" the identities that the scene benchmark's validation scenes are built from, so that what is chosen
    on those scenes is chosen on identities the model has not seen, as the test scenes' are."""
    if hold_out not in ("", "scene_val"):
        raise ValueError(f"hold_out must be '' or 'scene_val', got {hold_out!r}")
    train = load_emoji("train", path)
    if hold_out:
        from metricvision.data.scenes import val_identities

        held = val_identities(train)
        train = [s for s in train if s.label not in held]
    return {"train": train, "test": load_emoji("test", path)}
