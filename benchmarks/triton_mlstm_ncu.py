"""One forward+backward of this project's Triton mLSTM (``seisbench_xlstm.triton_mlstm``) at one call shape, framed
for Nsight Compute: the kernels are compiled and run first (outside the profiled range), then one call runs between
``cudaProfilerStart`` and ``cudaProfilerStop``. So ncu sees each kernel of one call once::

    ncu --profile-from-start off --kernel-name regex:_mlstm \\
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \\
        --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section SchedulerStats \\
        python benchmarks/triton_mlstm_ncu.py --shape 256x4x1024x96

Shape: batch (both directions stacked) x heads x steps x head dim, as ``triton_mlstm_speed.py``; bf16 inputs from
``common.random_mlstm_inputs``; q and k as one tensor (``--qk-one-tensor``) as the layers call it since
``bimlstm.QK_ONE_PRODUCT``. Without ncu it prints the call's median time (``triton.testing.do_bench``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("DISABLE_LLVM_OPT", "1")  # as the library compiles its Triton kernels

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, parse_call_shapes, random_mlstm_inputs  # noqa: E402

sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="256x4x1024x96", metavar="BxHxSxD")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--qk-one-tensor", action=argparse.BooleanOptionalAction, default=True,
                        help="q and k as the two halves of one tensor's rows (the layers' call)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("triton_mlstm_ncu.py needs a CUDA device")
    from triton.testing import do_bench

    from seisbench_xlstm.triton_mlstm import mlstm_chunkwise_triton

    (shape,) = parse_call_shapes([args.shape])
    (q, k, v, i, f), grad = random_mlstm_inputs(shape)
    if args.qk_one_tensor:
        qk = torch.cat([q.detach(), k.detach()], dim=-1).requires_grad_()
        inputs, call = (qk, v, i, f), lambda a, b, c, d: mlstm_chunkwise_triton(a, None, b, c, d, args.chunk_size)
    else:
        inputs, call = (q, k, v, i, f), lambda *x: mlstm_chunkwise_triton(*x, chunk_size=args.chunk_size)

    def step():
        call(*inputs).backward(grad)

    for _ in range(3):  # compile and warm up outside the profiled range
        step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print(f"{args.shape} chunk {args.chunk_size} qk_one_tensor={args.qk_one_tensor}: forward+backward "
          f"{do_bench(step, warmup=25, rep=100):.3f} ms (median)")


if __name__ == "__main__":
    main()
