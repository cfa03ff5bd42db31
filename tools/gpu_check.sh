#!/usr/bin/env bash
# Issue 10's device check, for a session that is lent a GPU machine. From the repo root, with the device
# tool:  run(command="bash tools/gpu_check.sh", timeout_s=600)
# The GPU image has python3 3.12 with numpy, onnx, onnxruntime (CPU build), opencv, pillow, tqdm, pytest,
# cuda-bindings 13 and CuPy 13x; no TensorRT and no onnxruntime-gpu (its wheel is over the 64 MiB a call
# may carry), so ONNX Runtime's CUDA/TensorRT providers and real TensorRT engines are not covered here.
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
python3 -m pip list 2>/dev/null | grep -iE '^(cuda-bindings|cuda-python|cupy|onnxruntime|tensorrt|numpy) '
echo "== diffvos doctor"
python3 -m diffvos.cli doctor 2>&1 | tee "$OUT/doctor.txt"
echo "== cuda-python adapter + TrtEngine data path on the GPU (CuPy stands in for TensorRT's kernels)"
python3 tools/gpu_check.py 2>&1 | tee "$OUT/gpu_check.json"
check=${PIPESTATUS[0]}
echo "== tests (the gpu-marked ones run where TensorRT is importable)"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda_device.py tests/test_trt.py tests/test_ort_options.py \
    tests/test_doctor.py 2>&1 | tee "$OUT/pytest.txt"
tests=${PIPESTATUS[0]}
echo "gpu_check exit $check, pytest exit $tests"
exit $(( check || tests ))
