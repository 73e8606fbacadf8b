"""Eager PyTorch against ONNX Runtime on the two-stage localizer's query-independent work, same inputs, one process.

Stages of ``query_detector_model_crops``: the detector's pass over one 512 px image (MobileNetV2 backbone and head) and
the image model on the proposals' crops (40 crops at the model's side; an ensemble embeds each with every member).
Prints each stage's median ms under each runtime (eager "torch", "onnx", and for the crops "onnx_int8", the 8-bit graph
calibrated on 8 batches of random crops), the ratios, and how far the outputs are from eager PyTorch's.

    python benchmarks/runtime.py                                            # untrained models of the same shapes
    python benchmarks/runtime.py --checkpoint runs/ens5_hold.safetensors \\
        --detector runs/detector_4k.safetensors --detector-model runs/text_align/image_model.safetensors

Weights do not change the time (the same graph runs), so the default builds untrained models of the benchmark's
shapes: a detector over MobileNetV2 with a 384-d head (as `runs/text_align`), and five MobileNetV2 members at 72 px
with 128-d heads (as `runs/ens5_hold`).
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable, Dict, Tuple

import torch

from metricvision.kb.model import ImageTextModel
from metricvision.localization.detector import Predictor, QueryDetector
from metricvision.localization.train import load_detector
from metricvision.models.embedder import Embedder
from metricvision.models.ensemble import EnsembleEmbedder
from metricvision.models.runtime import runner


def median_ms(fns: Dict[str, Callable[[], Any]], repeats: int, warmup: int = 3) -> Dict[str, float]:
    """Median wall time in ms of each ``fns`` value over ``repeats`` rounds, the functions taking turns within each
    round (so that a slower or busier stretch of the machine weighs on all of them alike), after ``warmup`` rounds."""
    times: Dict[str, list] = {name: [] for name in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def largest_difference(a: Any, b: Any) -> float:
    """Largest absolute difference between two tensors or tuples of tensors."""
    pairs = zip(a, b) if isinstance(a, tuple) else [(a, b)]
    return max(float((x - y).abs().max()) for x, y in pairs)


def lowest_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Lowest cosine between the rows of two (N, D) embeddings."""
    return float((torch.nn.functional.normalize(a, dim=1) * torch.nn.functional.normalize(b, dim=1)).sum(1).min())


def models(a: argparse.Namespace) -> Tuple[torch.nn.Module, torch.nn.Module, int]:
    """(detector predictor, crop embedder, crop side) from the checkpoints, or untrained ones of the same shapes."""
    if a.checkpoint:
        model = ImageTextModel.from_checkpoint(a.checkpoint)
        crops, side = model.embedder, model.card.image_size
    else:
        torch.manual_seed(0)
        crops = EnsembleEmbedder([Embedder("mobilenet_v2", "gem", 128) for _ in range(a.members)])
        side = 72
    if a.detector:
        base = ImageTextModel.from_checkpoint(a.detector_model or a.checkpoint).embedder
        detector = load_detector(a.detector, base)[0]
    else:
        detector = QueryDetector(Embedder("mobilenet_v2", "avg", 384))  # text_align's shape: 384-d, MiniLM's width
    return Predictor(detector).eval(), crops.eval(), side


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="image model embedding the crops (default: an untrained ensemble)")
    ap.add_argument("--detector", help="detector weights (default: an untrained head over MobileNetV2)")
    ap.add_argument("--detector-model", help="checkpoint the detector was trained on, if not --checkpoint")
    ap.add_argument("--members", type=int, default=5, help="members of the untrained ensemble")
    ap.add_argument("--crops", type=int, default=40, help="crops per image (the localizer's proposals)")
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calibration", type=int, default=8, help="calibration calls of the 8-bit graph")
    a = ap.parse_args()
    if a.detector and not (a.detector_model or a.checkpoint):
        ap.error("--detector needs --detector-model (or --checkpoint): the model its head was trained on")
    torch.set_num_threads(a.threads)
    predictor, crops, side = models(a)
    torch.manual_seed(1)
    stages: Dict[str, Tuple[torch.nn.Module, torch.Tensor]] = {
        "backbone + head": (predictor, torch.rand(1, 3, a.image_size, a.image_size)),
        f"{a.crops} crops at {side} px": (crops, torch.rand(a.crops, 3, side, side)),
    }
    total = {"torch": 0.0, "onnx": 0.0, "onnx_int8": 0.0}
    for name, (module, x) in stages.items():
        # the detector's pass stays in float under onnx_int8 (the localizer's proposals do not move)
        runtimes = ("onnx", "onnx_int8") if module is crops else ("onnx",)
        runners: Dict[str, Callable[[torch.Tensor], Any]] = {"torch": runner(module, "torch")}
        for rt in runtimes:
            start = time.perf_counter()
            runners[rt] = runner(module, rt, calibration=a.calibration)
            for _ in range(a.calibration if rt == "onnx_int8" else 1):  # export (and calibrate) once
                runners[rt](torch.rand_like(x))
            print(f"{name}: {rt} graph ready in {time.perf_counter() - start:.0f} s (once)")
        ms = median_ms({rt: (lambda r=r: r(x)) for rt, r in runners.items()}, a.repeats)
        expected = runners["torch"](x)
        line = [f"torch {ms['torch']:.1f} ms"]
        for rt in runtimes:
            got = runners[rt](x)
            diff = (f"lowest cosine {lowest_cosine(got, expected):.5f}" if rt == "onnx_int8"
                    else f"largest difference {largest_difference(got, expected):.1e}")
            line.append(f"{rt} {ms[rt]:.1f} ms (torch / {rt} {ms['torch'] / ms[rt]:.2f}x, {diff})")
        print(f"{name}: " + ", ".join(line))
        for rt in total:
            total[rt] += ms.get(rt, ms["onnx"])
    ratios = f"torch / onnx {total['torch'] / total['onnx']:.2f}x, torch / onnx_int8 {total['torch'] / total['onnx_int8']:.2f}x"
    print(f"both stages ({a.threads} threads): " + ", ".join(f"{rt} {t:.1f} ms" for rt, t in total.items()) + f"; {ratios}")

if __name__ == "__main__":
    main()
