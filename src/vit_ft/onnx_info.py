"""``python -m vit_ft.onnx_info model.onnx``: what a vit-ft ONNX file expects and holds (class names,
input size, mean/std, interpolation, crop, dtype, opset, how it was verified)."""

from __future__ import annotations

import argparse
import sys

from vit_ft.errors import ConfigError
from vit_ft.weights.onnx_read import describe


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m vit_ft.onnx_info",
        description="Print the preprocessing and class names stored in an ONNX file written by export.py.",
    )
    p.add_argument("path", nargs="+", help="an .onnx file written by python export.py ... format=onnx")
    a = p.parse_args(argv)
    try:
        for path in a.path:
            print("\n".join(describe(path)))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
