"""GPU throughputs for ``harness cost``'s GPU-hours, in a module without torch (the CLI's parser reads them)."""

# Dense peak TFLOP/s from NVIDIA's data sheets (SXM parts; TF32 and bf16 without sparsity), and
# the fraction of it assumed sustained by these convnet workloads. Measure yours with
# `python benchmarks/gpu_smoke.py` and pass --tflops instead.
PEAK_TFLOPS = {"a100-fp32": 19.5, "a100-tf32": 156.0, "a100-bf16": 312.0,
               "h100-fp32": 67.0, "h100-tf32": 495.0, "h100-bf16": 989.0}
SUSTAINED_FRACTION = 0.4
DEFAULT_GPU = "a100-tf32"
