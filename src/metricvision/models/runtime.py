"""Inference runtimes: a frozen module's forward run by eager PyTorch ("torch"), by ONNX Runtime ("onnx"), or by
ONNX Runtime in 8-bit integers ("onnx_int8").

ONNX Runtime runs MobileNetV2, whose depthwise convolutions eager PyTorch runs slowly on CPU, about twice as fast
(``benchmarks/runtime.py`` runs the runtimes on the same inputs and prints the ratios); its outputs equal the module's
to float rounding (``tests/models/test_runtime.py``). The module is exported (``torch.onnx.export``, the dynamo
exporter, batch size left free) on the first call for each shape of an input's other dimensions, with the weights it
has then, and the graph is kept in memory: give it only modules that no longer train.

"onnx_int8" is post-training static quantization (ONNX Runtime's ``quantize_static``: weights int8 per channel,
activations uint8, their ranges the min / max seen): the first ``calibration`` calls for a shape run in float and
keep their inputs, which then calibrate the activations' ranges; later calls run the 8-bit graph. Its outputs
approximate the module's (a cosine above 0.99 in the tests, 0.997 at worst for a trained five-member ensemble on
random crops in ``benchmarks/runtime.py``), so what it changes in a benchmark's figures is measured there, not assumed
(README, "Faster detection": nothing measurable for identity and name queries, two to three AP50 points for categories).
"""
from __future__ import annotations

import logging
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

RUNTIMES = ("torch", "onnx", "onnx_int8")


class OnnxRunner:
    """(N, ...) float tensor -> the module's output (a tensor or a tuple of tensors), computed by ONNX Runtime.

    Args:
        module: a module whose forward takes one tensor and returns a tensor or a tuple of tensors; it is put in
            eval mode.
        threads: ONNX Runtime's intra-op threads (default: torch's, ``torch.get_num_threads()``).
        max_shapes: exported graphs kept, one per input shape past the batch dimension (the oldest is dropped).
        calibration: 0 for the float graph; N > 0 for the 8-bit graph, calibrated on the inputs of the first N calls
            for each shape (which run the float graph).
    """

    def __init__(self, module: nn.Module, threads: Optional[int] = None, max_shapes: int = 4,
                 calibration: int = 0) -> None:
        try:
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401  (the dynamo exporter needs it)
        except ImportError as e:
            raise ImportError("runtime 'onnx' needs ONNX Runtime and the exporter: pip install -e '.[export]'") from e
        if max_shapes < 1:
            raise ValueError(f"max_shapes must be >= 1, got {max_shapes}")
        if calibration < 0:
            raise ValueError(f"calibration must be >= 0 calls, got {calibration}")
        self.module = module.eval()
        self.threads = threads or torch.get_num_threads()
        self.max_shapes, self.calibration = max_shapes, calibration
        self.sessions: Dict[Tuple[int, ...], Any] = {}
        self.proto: Dict[Tuple[int, ...], bytes] = {}  # the float graphs still calibrating, per shape
        self.seen: Dict[Tuple[int, ...], List[np.ndarray]] = {}  # inputs kept for calibration, per shape

    def __call__(self, x: torch.Tensor) -> torch.Tensor | Tuple[torch.Tensor, ...]:
        if x.dim() < 2 or not x.is_floating_point():
            raise ValueError(f"OnnxRunner takes a float tensor (N, ...), got {x.dtype} of shape {tuple(x.shape)}")
        if not len(x):  # the exported graphs take batches of one or more
            with torch.no_grad():
                return self.module(x)
        shape, inputs = tuple(x.shape[1:]), x.detach().float().cpu().contiguous().numpy()
        session = self.session(shape)
        outputs = session.run(None, {session.get_inputs()[0].name: inputs})
        if shape in self.seen:  # still calibrating: keep the input; quantize after the last calibration call
            self.seen[shape].append(inputs)
            if len(self.seen[shape]) == self.calibration:
                self.sessions[shape] = self._session(quantized(self.proto.pop(shape), self.seen.pop(shape)))
        out = tuple(torch.from_numpy(o) for o in outputs)
        return out[0] if len(out) == 1 else out

    def session(self, shape: Tuple[int, ...]) -> Any:
        """The ONNX Runtime session for inputs (N, *shape), exported on first use (the float graph while calibrating)."""
        if shape not in self.sessions:
            if len(self.sessions) >= self.max_shapes:
                oldest = next(iter(self.sessions))
                for kept in (self.sessions, self.seen, self.proto):
                    kept.pop(oldest, None)
            proto = self._export(shape)
            self.sessions[shape] = self._session(proto)
            if self.calibration:
                self.proto[shape], self.seen[shape] = proto, []
        return self.sessions[shape]

    def _export(self, shape: Tuple[int, ...]) -> bytes:
        example = torch.rand(2, *shape)  # a batch of 2: the exporter specializes sizes 0 and 1
        batch = torch.export.Dim("batch", min=1, max=65536)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(self.module, (example,), dynamo=True, dynamic_shapes=({0: batch},),
                                        external_data=False, verbose=False)
        return program.model_proto.SerializeToString()

    def _session(self, proto: bytes) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        # idle threads sleep rather than spin: the torch work between two runs keeps the cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])


def quantized(proto: bytes, inputs: Sequence[np.ndarray]) -> bytes:
    """A float ONNX graph of one input -> its 8-bit graph (QDQ; weights int8 per channel, activations uint8 with the
    min / max ranges they take on ``inputs``, a list of input batches)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model = onnx.load_from_string(proto)
    name = model.graph.input[0].name

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(inputs)

        def get_next(self) -> Optional[Dict[str, np.ndarray]]:
            batch = next(self.batches, None)
            return None if batch is None else {name: batch}

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), _quiet("root"):
        warnings.simplefilter("ignore")
        out = Path(tmp) / "int8.onnx"
        quantize_static(model, out, Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return out.read_bytes()


@contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Silence a logger's warnings (the quantizer advises a pre-processing step its shape inference fails on)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def runner(module: nn.Module, runtime: str = "torch", calibration: int = 8) -> Callable[[torch.Tensor], Any]:
    """The module's forward under ``runtime``: the module itself, in eval mode and without autograd ("torch"), or an
    ``OnnxRunner`` ("onnx"; "onnx_int8": 8-bit, calibrated on the first ``calibration`` calls per input shape)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime.startswith("onnx"):
        return OnnxRunner(module, calibration=calibration if runtime == "onnx_int8" else 0)
    module.eval()

    def run(x: torch.Tensor) -> Any:
        with torch.no_grad():
            return module(x)

    return run
