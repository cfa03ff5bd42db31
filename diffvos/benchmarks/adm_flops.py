"""Print FLOPs (torch FLOP counter, multiply-add = 2) and parameter counts of the ADM-256 U-Net.

Counted on the meta device: no checkpoint needed, a few seconds. Figures are printed, not asserted.
Usage: python benchmarks/adm_flops.py [--sizes 256x256 480x832] [--layers 6 7]
"""

from __future__ import annotations

import argparse

import torch

from diffvos.export.adm import ADMConfig, ADMUNet, TruncatedADM, count_parameters
from diffvos.export.flops import count_flops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["256x256", "480x832"])
    ap.add_argument("--layers", nargs="+", type=int, default=[6, 7])
    args = ap.parse_args()
    with torch.device("meta"):
        model = ADMUNet(ADMConfig())
    print(f"ADM-256 uncond: {count_parameters(model):,} parameters")
    for layer in args.layers:
        print(f"  truncated at output block {layer}: {count_parameters(TruncatedADM(model, 30, layer)):,} parameters")
    for size in args.sizes:
        h, w = (int(v) for v in size.split("x"))
        x = torch.empty(1, 3, h, w, device="meta")
        full = count_flops(model, x, torch.tensor([30], device="meta"))
        print(f"{h}x{w}, batch 1: full forward {full / 1e12:.3f} TFLOP")
        for layer in args.layers:
            cut = count_flops(TruncatedADM(model, 30, layer), x)
            print(f"  truncated at output block {layer}: {cut / 1e12:.3f} TFLOP ({100 * cut / full:.1f} % of full)")


if __name__ == "__main__":
    main()
