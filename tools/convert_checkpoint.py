"""Convert a torch checkpoint (.pth/.pt/.bin/.ckpt) to .safetensors, without running pickled code.

    python tools/convert_checkpoint.py SRC.pth [-o DST.safetensors] [--key state_dict]
                                       [--dtype fp32|fp16|bf16]

The source is read with ``torch.load(..., weights_only=True)`` (a file that needs code execution is
refused). The state dict is the ``--key`` entry, else the ``state_dict`` entry when present, else the
file itself when it is a flat dict of tensors. ``--dtype`` casts floating-point tensors only (integer
buffers such as BatchNorm's ``num_batches_tracked`` keep their dtype); the default keeps the dtypes.
The output (default: SRC with the suffix .safetensors) is written atomically. Errors print one line
``convert_checkpoint: error: ...`` on stderr and exit with status 2, writing nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from cascadev.checkpoint import DTYPES, load_weights, read_state_dict, save_safetensors
except ImportError:  # run from a checkout where the package is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from cascadev.checkpoint import DTYPES, load_weights, read_state_dict, save_safetensors

import torch

from cascadev.argparsing import Parser, fail
from cascadev.atomic import publish_mode
from cascadev.errors import CascadeVError

PROG = "convert_checkpoint"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="torch checkpoint to convert (.pth, .pt, .bin, .ckpt)")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="destination .safetensors file (default: SRC with suffix .safetensors)",
    )
    parser.add_argument(
        "--key",
        default=None,
        help="entry of the checkpoint that holds the state dict (default: state_dict "
        "when present, else the whole file)",
    )
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default=None,
        help="cast floating-point tensors to this dtype (default: keep)",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="with an -o that does not end in .safetensors: write a diffusers folder "
        "(CascadeDiT.save_pretrained: config.json + weights) for this config's DiT",
    )
    return parser


def convert_to_folder(src: Path, dst: Path, config: str, key: str | None = None) -> tuple[Path, int, int]:
    """Load ``src`` into the config's CascadeDiT (checked to fit) and ``save_pretrained`` it to ``dst``."""
    import shutil
    import tempfile

    from cascadev.conditioning import dit_spec
    from cascadev.loading import load_config
    from cascadev.models import build_model

    if dst.exists():
        raise CascadeVError(f"output folder {dst} exists; choose another with -o.")
    cfg = load_config(config)
    with torch.device("meta"):
        model = build_model(dit_spec(cfg))  # the input channels of the config's condition
    load_weights(model, src, f"the DiT of config {config}", key=key)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    try:
        model.save_pretrained(tmp)
        publish_mode(tmp)  # mkdtemp's folder is private
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst, len(model.state_dict()), sum(p.numel() for p in model.parameters())


def convert(
    src: Path, dst: Path | None = None, key: str | None = None, dtype: torch.dtype | None = None
) -> tuple[Path, int, int]:
    """Convert ``src`` to safetensors at ``dst``; return (dst, number of tensors, number of elements).

    Raises:
        CascadeVError: unreadable/unsafe source, unsuitable destination.
    """
    dst = dst if dst is not None else src.with_suffix(".safetensors")
    if dst.suffix.lower() != ".safetensors":
        raise CascadeVError(f"output {dst} must end in .safetensors.")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise CascadeVError(f"output {dst} would overwrite the source checkpoint; choose another with -o.")
    state_dict = read_state_dict(src, key=key)
    if dtype is not None:
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    metadata = {"format": "pt", "converted_from": src.name}
    if key is not None:
        metadata["key"] = key
    save_safetensors(state_dict, dst, metadata=metadata)
    return dst, len(state_dict), sum(v.numel() for v in state_dict.values())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.config is not None and args.output is not None and args.output.suffix.lower() != ".safetensors":
            dst, n_tensors, n_params = convert_to_folder(args.src, args.output, args.config, args.key)
        else:
            dst, n_tensors, n_params = convert(
                args.src, args.output, args.key, DTYPES[args.dtype] if args.dtype else None
            )
    except CascadeVError as exc:
        return fail(PROG, exc)
    print(f"wrote {dst}: {n_tensors} tensors, {n_params:,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
