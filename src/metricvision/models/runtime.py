"""Inference runtimes: a frozen module's forward run by eager PyTorch ("torch") or by ONNX Runtime ("onnx").

ONNX Runtime runs MobileNetV2, whose depthwise convolutions eager PyTorch runs slowly on CPU, two to three times as
fast (``benchmarks/runtime.py`` runs both on the same inputs and prints the ratios); its outputs equal the module's to
float rounding (``tests/models/test_runtime.py``). The module is exported (``torch.onnx.export``, the dynamo
exporter, batch size left free) on the first call for each shape of an input's other dimensions, with the weights it
has then, and the graph is kept in memory: give it only modules that no longer train.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

RUNTIMES = ("torch", "onnx")


class OnnxRunner:
    """(N, ...) float tensor -> the module's output (a tensor or a tuple of tensors), computed by ONNX Runtime.

    Args:
        module: a module whose forward takes one tensor and returns a tensor or a tuple of tensors; it is put in
            eval mode.
        threads: ONNX Runtime's intra-op threads (default: torch's, ``torch.get_num_threads()``).
        max_shapes: exported graphs kept, one per input shape past the batch dimension (the oldest is dropped).
    """

    def __init__(self, module: nn.Module, threads: Optional[int] = None, max_shapes: int = 4) -> None:
        try:
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401  (the dynamo exporter needs it)
        except ImportError as e:
            raise ImportError("runtime 'onnx' needs ONNX Runtime and the exporter: pip install -e '.[export]'") from e
        if max_shapes < 1:
            raise ValueError(f"max_shapes must be >= 1, got {max_shapes}")
        self.module = module.eval()
        self.threads = threads or torch.get_num_threads()
        self.max_shapes = max_shapes
        self.sessions: Dict[Tuple[int, ...], Any] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor | Tuple[torch.Tensor, ...]:
        if x.dim() < 2 or not x.is_floating_point():
            raise ValueError(f"OnnxRunner takes a float tensor (N, ...), got {x.dtype} of shape {tuple(x.shape)}")
        if not len(x):  # the exported graphs take batches of one or more
            with torch.no_grad():
                return self.module(x)
        session = self.session(tuple(x.shape[1:]))
        outputs = session.run(None, {session.get_inputs()[0].name: x.detach().float().cpu().contiguous().numpy()})
        out = tuple(torch.from_numpy(o) for o in outputs)
        return out[0] if len(out) == 1 else out

    def session(self, shape: Tuple[int, ...]) -> Any:
        """The ONNX Runtime session for inputs (N, *shape), exported on first use."""
        if shape not in self.sessions:
            if len(self.sessions) >= self.max_shapes:
                del self.sessions[next(iter(self.sessions))]
            self.sessions[shape] = self._export(shape)
        return self.sessions[shape]

    def _export(self, shape: Tuple[int, ...]) -> Any:
        import onnxruntime as ort

        example = torch.rand(2, *shape)  # a batch of 2: the exporter specializes sizes 0 and 1
        batch = torch.export.Dim("batch", min=1, max=65536)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(self.module, (example,), dynamo=True, dynamic_shapes=({0: batch},),
                                        external_data=False, verbose=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        # idle threads sleep rather than spin: the torch work between two runs keeps the cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(program.model_proto.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"])


def runner(module: nn.Module, runtime: str = "torch") -> Callable[[torch.Tensor], Any]:
    """The module's forward under ``runtime``: the module itself, in eval mode and without autograd ("torch"), or an
    ``OnnxRunner`` ("onnx")."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "onnx":
        return OnnxRunner(module)
    module.eval()

    def run(x: torch.Tensor) -> Any:
        with torch.no_grad():
            return module(x)

    return run
