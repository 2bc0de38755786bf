"""Safe reading, checking, loading and writing of model weights.

Checkpoints are user files, so they are never unpickled with code execution: ``.safetensors`` is read
with safetensors and torch pickles with ``torch.load(..., weights_only=True)``. Every problem with a
file (missing, corrupt, unsafe, not a state dict, not fitting the model) becomes one
:class:`~cascadev.errors.CascadeVError` sentence that names the file.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from cascadev.atomic import atomic_output, check_output_path
from cascadev.errors import CascadeVError, first_line

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# Floating-point dtypes by the names configs, the command line and accelerate's mixed_precision give them.
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# torch's weights-only unpickler names the global it refused, e.g. "Unsupported global: GLOBAL io.open".
_UNSAFE_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unrecognized function|Unsupported class)\s+([\w.]+)")

# How many names of each kind of difference check_fit lists before writing "...".
_MAX_LISTED = 5


def _as_state_dict(obj: object) -> dict[str, torch.Tensor] | None:
    """Return ``obj`` as a flat str -> Tensor dict, or None if it is not one."""
    if not isinstance(obj, Mapping):
        return None
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return None
    return dict(obj)


def _describe_entries(obj: Mapping) -> str:
    names = [str(k) for k in obj.keys()]
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    return shown or "none"


def read_state_dict(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a flat ``name -> tensor`` state dict from a checkpoint file, on the CPU.

    Args:
        path: a ``.safetensors`` file, or a torch pickle (``.pth``, ``.pt``, ``.bin``, ``.ckpt``)
            that is either a flat dict of tensors or a dict with a state-dict entry (as the released
            ``s1024.effn-f32.pth``: ``{'state_dict': ..., 'state_dict_ema': ..., ...}``).
        key: for a torch pickle, the entry that holds the state dict (default: ``'state_dict'`` when
            present, else the file itself must be a flat dict of tensors). Ignored for
            ``.safetensors``, which are always flat.

    Returns:
        dict mapping parameter/buffer names to CPU tensors, in the file's dtypes.

    Raises:
        CascadeVError: the file is missing, has an unknown extension, is corrupt, would need code
            execution to unpickle, or does not hold a state dict (under ``key``).
    """
    path = Path(path)
    if not path.exists():
        raise CascadeVError(f"checkpoint {path} does not exist.")
    if not path.is_file():
        raise CascadeVError(f"checkpoint {path} is not a file.")
    suffix = path.suffix.lower()

    if suffix in SAFETENSORS_SUFFIXES:
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises SafetensorError/OSError/... for bad files
            raise CascadeVError(
                f"checkpoint {path} is corrupt or not a safetensors file ({first_line(exc, 160)})."
            ) from None

    if suffix not in PICKLE_SUFFIXES:
        known = ", ".join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)
        raise CascadeVError(f"checkpoint {path} has an unknown extension '{path.suffix}' (expected one of {known}).")

    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols of legacy files; the outcome is what matters.
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = _UNSAFE_GLOBAL.search(str(exc))
        if unsafe:
            raise CascadeVError(
                f"checkpoint {path} cannot be loaded safely: it contains the Python object "
                f"{unsafe.group(1)}, whose unpickling could run code (only tensors and plain "
                "containers are accepted)."
            ) from None
        raise CascadeVError(
            f"checkpoint {path} is corrupt or cannot be loaded safely as a torch checkpoint of tensors."
        ) from None
    except Exception as exc:  # torch raises RuntimeError/EOFError/ValueError/... for bad files
        raise CascadeVError(
            f"checkpoint {path} is corrupt or not a torch checkpoint ({first_line(exc, 160)})."
        ) from None

    if not isinstance(obj, Mapping):
        raise CascadeVError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict of tensors.")
    if key is not None:
        if key not in obj:
            raise CascadeVError(f"checkpoint {path} has no entry '{key}' (entries: {_describe_entries(obj)}).")
        sd = _as_state_dict(obj[key])
        if sd is None:
            raise CascadeVError(f"entry '{key}' of checkpoint {path} is not a dict of tensors.")
        return sd
    if "state_dict" in obj:
        sd = _as_state_dict(obj["state_dict"])
        if sd is None:
            raise CascadeVError(f"entry 'state_dict' of checkpoint {path} is not a dict of tensors.")
        return sd
    sd = _as_state_dict(obj)
    if sd is None:
        raise CascadeVError(
            f"checkpoint {path} is neither a dict of tensors nor has a 'state_dict' entry "
            f"(entries: {_describe_entries(obj)}); choose the entry with a key."
        )
    return sd


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (", ..." if len(names) > _MAX_LISTED else "")


def check_fit(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    name: str,
    source: str | Path | None = None,
) -> None:
    """Check that ``state_dict`` has exactly the keys and shapes of ``model.state_dict()``, and floating-point
    values where the model has them (integer weights are a different file, not a precision).

    Floating-point dtypes are not compared (``load_weights`` casts). Works for models and state dicts on the meta
    device, since only shapes are read.

    Args:
        model: the module the weights are meant for.
        state_dict: name -> tensor mapping (e.g. from :func:`read_state_dict`).
        name: human description of the model for the message, e.g. ``"the DiT of config x.py"``.
        source: the checkpoint file, named in the message when given.

    Raises:
        CascadeVError: one line, e.g. ``checkpoint a.pth does not fit the DiT of config x.py:
            3 missing keys (blocks.27.attn.qkv.weight, ...), 1 unexpected (foo), 1 shape mismatch
            (x_embedder.proj.weight: checkpoint (1152, 8, 2, 2) vs model (1152, 20, 2, 2)).``
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    # (A float count in an integer buffer, e.g. num_batches_tracked after a blanket .half(), loads as before.)
    wrong_kind = [
        f"{k}: checkpoint {str(state_dict[k].dtype).replace('torch.', '')} vs model "
        f"{str(expected[k].dtype).replace('torch.', '')}"
        for k in expected
        if k in state_dict and expected[k].is_floating_point() and not state_dict[k].is_floating_point()
    ]
    if not (missing or unexpected or mismatched or wrong_kind):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key{'s' if len(missing) != 1 else ''} ({_listing(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_listing(unexpected)})")
    if mismatched:
        plural = "es" if len(mismatched) != 1 else ""
        parts.append(f"{len(mismatched)} shape mismatch{plural} ({_listing(mismatched)})")
    if wrong_kind:
        parts.append(f"{len(wrong_kind)} with integer values for floating-point weights ({_listing(wrong_kind)})")
    what = f"checkpoint {source}" if source is not None else "the checkpoint"
    raise CascadeVError(f"{what} does not fit {name}: " + ", ".join(parts) + ".")


def check_finite(state_dict: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Refuse weights with NaN or Inf (a damaged file or a diverged run), naming the first such tensor."""
    for k, value in state_dict.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CascadeVError(
                f"checkpoint {source} has non-finite values (NaN or Inf) in tensor {k}; it is damaged or "
                "comes from a diverged run."
            )


def load_weights(
    model: nn.Module,
    path: str | Path,
    name: str,
    key: str | None = None,
) -> nn.Module:
    """Load a checkpoint file into ``model`` after checking that it fits exactly.

    Entries of ``model`` that are real tensors receive the checkpoint values on their own device,
    with floating-point values cast to their dtype. Entries on the meta device (a model built under
    ``with torch.device('meta'):`` to avoid allocating twice) are replaced by the checkpoint tensors
    as they are: on the CPU and in the checkpoint's dtype; the caller then moves/casts the model with
    ``model.to(device, dtype)``. Buffers registered with ``persistent=False`` are not part of any
    checkpoint and stay on the meta device: a model that has them must rebuild them itself.

    Args:
        model: the module to fill (modified in place and returned).
        path: checkpoint file, see :func:`read_state_dict`.
        name: human description of the model used in error messages.
        key: state-dict entry of a torch pickle, see :func:`read_state_dict`.

    Returns:
        ``model``.

    Raises:
        CascadeVError: the file cannot be read safely or does not fit the model (see
            :func:`check_fit`).
    """
    state_dict = read_state_dict(path, key=key)
    check_fit(model, state_dict, name, source=path)
    check_finite(state_dict, path)
    current = model.state_dict(keep_vars=True)
    prepared: dict[str, torch.Tensor] = {}
    for k, value in state_dict.items():
        target = current[k]
        if target.is_meta:
            prepared[k] = value
            continue
        dtype = target.dtype if (value.is_floating_point() and target.is_floating_point()) else None
        prepared[k] = value.to(device=target.device, dtype=dtype)
    model.load_state_dict(prepared, strict=True, assign=True)
    return model


def save_safetensors(
    state_dict: Mapping[str, torch.Tensor],
    path: str | Path,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a state dict as ``.safetensors`` atomically.

    Tensors are made contiguous, and any tensor whose storage is shared with an earlier one (tied
    weights, views of one buffer) is cloned, because safetensors refuses shared storage. The file is
    written under a temporary name in the destination directory and renamed when complete; on
    failure nothing is left at ``path``.

    Args:
        state_dict: name -> tensor (any device; meta tensors are refused).
        path: destination file.
        metadata: optional str -> str header metadata.

    Returns:
        the destination path.

    Raises:
        CascadeVError: bad entries, a missing destination directory, or a write failure.
    """
    path = check_output_path(path, "checkpoint")
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CascadeVError(f"cannot write {path}: safetensors metadata must map str to str.")

    tensors: dict[str, torch.Tensor] = {}
    seen_storages: set[tuple[str, int]] = set()
    for k, value in state_dict.items():
        if not isinstance(k, str) or not isinstance(value, torch.Tensor):
            raise CascadeVError(f"cannot write {path}: entry {k!r} is not a named tensor.")
        if value.is_meta:
            raise CascadeVError(f"cannot write {path}: tensor {k} is on the meta device (no data).")
        t = value.detach().contiguous()
        storage_id = (str(t.device), t.untyped_storage().data_ptr())
        if t.numel() and storage_id in seen_storages:
            t = t.clone()
            storage_id = (str(t.device), t.untyped_storage().data_ptr())
        seen_storages.add(storage_id)
        tensors[k] = t

    try:
        with atomic_output(path, "checkpoint") as tmp:
            save_file(tensors, str(tmp), metadata=dict(metadata) if metadata is not None else None)
    except CascadeVError:
        raise
    except Exception as exc:
        raise CascadeVError(f"cannot write {path} ({first_line(exc, 160)}).") from None
    return path
