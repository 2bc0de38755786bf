"""Defaults live in one place, the shipped config (configs/s1024_effn_f32.py): every config key the code
reads through ``setting`` has its default there, and the defaults left in signatures agree with it."""

import inspect
import re
from pathlib import Path

import pytest

from cascadev.config_defaults import SHIPPED_CONFIG, setting, shipped
from cascadev.errors import CascadeVError
from cascadev.schedulers import TRAINING_SCHEDULE, noise_schedule

ROOT = Path(__file__).parents[1]


def defaults(function) -> dict:
    return {
        name: p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def test_the_shipped_config_is_the_source():
    assert SHIPPED_CONFIG == ROOT / "configs" / "s1024_effn_f32.py"
    assert shipped()["scale_factor"] == 0.13025 and shipped()["sampling"]["steps"] == 8


def test_every_key_the_code_reads_through_setting_has_its_default_in_the_shipped_config():
    keys = set()
    for path in (ROOT / "cascadev").rglob("*.py"):
        keys |= set(re.findall(r'setting\([\w.]+, "([\w.]+)"\)', path.read_text()))
    assert {"gradient_clip", "joint_training", "keep_checkpoints", "validation.interval", "encode_chunk"} <= keys
    for key in sorted(keys):
        assert setting({}, key) == setting(shipped(), key), key  # an empty config falls back to the shipped one


def test_setting_prefers_the_config_and_names_an_unknown_key():
    assert setting({"gradient_clip": 1.0}, "gradient_clip") == 1.0
    assert setting({"validation": {"steps": 2}}, "validation.interval") == shipped()["validation"]["interval"]
    assert setting({"load_from": None}, "load_from") is None  # a key set to None is set
    with pytest.raises(CascadeVError, match="no_such_key"):
        setting({}, "no_such_key")
    from cascadev.config_defaults import MISSING, lookup

    for plain in ("depth", 3, None, ["depth"]):  # a value where a section was expected: no key below it
        assert lookup({"model": plain}, "model.depth") is MISSING


def test_a_config_without_weights_or_clip_keys_takes_the_shipped_ones(tmp_path):
    from mmengine.config import Config

    from cascadev.loading import resolve_weights
    from cascadev.training.trainer import clip_geometry

    cfg = Config({"weights_dir": str(tmp_path)})  # no weights section, no clip geometry
    with pytest.raises(CascadeVError) as missing:
        resolve_weights(cfg, ["compressor", "vae"])
    for part in ("compressor", "vae"):
        assert str(tmp_path / shipped()["weights"][part]) in str(missing.value)
    assert clip_geometry(cfg) == tuple(shipped()[k] for k in ("num_frames_per_video", "time_stride", "sample_size"))


def test_signature_defaults_agree_with_the_shipped_config():
    from cascadev.conditioning import Conditioner
    from cascadev.diffusion import GaussianDiffusion
    from cascadev.models import CascadeDiT, EfficientNetEncoder, Previewer
    from cascadev.pipeline import CascadeVPipeline
    from cascadev.reconstruct import SamplingArgs
    from cascadev.training.targets import FrozenEncoders

    cfg = shipped()
    pipeline = defaults(CascadeVPipeline.__init__)
    for key in ("vae_chunk", "segment_frames", "batch_size"):
        assert pipeline[key] == cfg["sampling"][key], key
    assert pipeline["encode_chunk"] == cfg["encode_chunk"]
    for function in (CascadeVPipeline.__init__, Conditioner.__init__, FrozenEncoders.__init__):
        found = defaults(function)
        assert (found["scale_factor"], found["sr_scale"]) == (cfg["scale_factor"], cfg["sr_scale"]), function
    assert defaults(Conditioner.__init__)["chunk"] == defaults(FrozenEncoders.__init__)["chunk"] == cfg["encode_chunk"]
    assert defaults(Conditioner.__init__)["kind"] == defaults(FrozenEncoders.__init__)["condition"] == cfg["condition"]
    assert (SamplingArgs.scheduler, SamplingArgs.steps) == (cfg["sampling"]["scheduler"], cfg["sampling"]["steps"])
    found = defaults(GaussianDiffusion.__init__)
    assert found["num_timesteps"] == cfg["schedule"]["num_train_timesteps"]
    for key in ("beta_schedule", "beta_start", "beta_end", "prediction_type"):
        assert found[key] == cfg["schedule"][key], key
    assert noise_schedule(cfg.get("schedule")) == dict(cfg["schedule"]) == TRAINING_SCHEDULE
    # The networks' defaults are the released ones (attn_strides=None is the one exception: full attention).
    for cls, section in ((CascadeDiT, "model"), (EfficientNetEncoder, "compressor"), (Previewer, "previewer")):
        found = defaults(cls.__init__)
        for key, value in cfg[section].items():
            if key not in ("type", "attn_strides"):
                assert found[key] == value, f"{cls.__name__}.{key}"


def test_the_dataset_defaults_are_the_shipped_data_section():
    from cascadev.data import VideoClipDataset

    found = defaults(VideoClipDataset.__init__)
    for key, value in shipped()["data"].items():
        assert found[key] == value, key
