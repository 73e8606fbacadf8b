"""Finding unreadable image files before a long job, and skipping them with a report.

``data check`` lists every unreadable image; ``embed``, ``kb build`` and ``kb add`` drop them,
say how many and which (the first few on stderr, all of them in a list file), or stop at the
first one with ``--strict``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from tqdm import tqdm

from metricvision.data.sample import Sample, load_image

SHOWN = 5


def unreadable_images(samples: Sequence[Sample], desc: str = "checking images") -> List[Tuple[int, str, str]]:
    """Open every file-backed image of ``samples`` (in-memory arrays are skipped).

    Returns:
        (index in samples, path, reason naming the path) of each file that is missing, empty or not
        a decodable image.
    """
    bad = []
    for i, s in enumerate(tqdm(samples, desc=desc, unit="img", leave=False)):
        if not isinstance(s.image, (str, Path)):
            continue
        try:
            if Path(s.image).is_file() and Path(s.image).stat().st_size == 0:
                raise ValueError(f"empty (zero-byte) image {s.image}")
            load_image(s.image)
        except (ValueError, FileNotFoundError) as e:
            bad.append((i, str(s.image), str(e)))
    return bad


def describe(bad: Sequence[Tuple[int, str, str]], total: int) -> str:
    """``"2 of 40 images are unreadable:"`` followed by the first few, one per line."""
    lines = [f"{len(bad)} of {total} images are unreadable:"]
    lines += [f"  {reason}" for _, _, reason in bad[:SHOWN]]
    if len(bad) > SHOWN:
        lines.append(f"  ... and {len(bad) - SHOWN} more")
    return "\n".join(lines)


def drop_unreadable(samples: Sequence[Sample], strict: bool = False, list_file: Optional[Path] = None) -> List[Sample]:
    """The readable samples; the others are reported on stderr (and written to ``list_file``).

    Args:
        samples: the samples to check.
        strict: raise ValueError at the first report instead of skipping.
        list_file: where to write every unreadable path, one a line (temporary name, then renamed).
    """
    bad = unreadable_images(samples)
    if not bad:
        return list(samples)
    message = describe(bad, len(samples))
    if strict:
        raise ValueError(f"{message}\n(--strict stops here; without it these files are skipped)")
    listed = ""
    if list_file is not None:
        list_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = list_file.with_name(list_file.name + ".tmp")
        tmp.write_text("".join(f"{path}\t{reason}\n" for _, path, reason in bad))
        tmp.replace(list_file)
        listed = f"all listed in {list_file}; "
    print(f"warning: {message}\nthey are skipped ({listed}--strict stops instead)", file=sys.stderr)
    skip = {i for i, _, _ in bad}
    return [s for i, s in enumerate(samples) if i not in skip]
