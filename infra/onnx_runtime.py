"""onnxruntime sessions as Trainyard runs them: the exporter's parity check and the inference server build the same
session, so what the parity check measured is what is served."""
from __future__ import annotations

import onnxruntime as ort


def session_for(onnx_bytes: bytes) -> ort.InferenceSession:
    """An onnxruntime session on the CPU: one intra-op and one inter-op thread, all graph optimizations,
    warnings and below not logged."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])
