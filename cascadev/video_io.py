"""Video files in and out: the public API of :mod:`cascadev.video_reader` and :mod:`cascadev.video_writer`.

* :class:`VideoReader` / :func:`probe_video` decode with decord; :class:`VideoWriter` / :func:`write_video`
  encode with PyAV (H.264 in mp4 by default), atomically, with another file's audio if asked
  (:mod:`cascadev.audio`).
* Both speak uint8 RGB ``(T, H, W, 3)``, the file-edge layout; in memory a video is ``(T, 3, H, W)``
  in [-1, 1] and :mod:`cascadev.frames` converts (``from_uint8``, ``to_uint8``) and reshapes.
"""

from cascadev.video_reader import VideoInfo, VideoReader, frames_used, probe_video, select_frames
from cascadev.video_writer import VideoWriter, check_encoder_options, fps_fraction, write_video

__all__ = [
    "VideoInfo",
    "VideoReader",
    "VideoWriter",
    "check_encoder_options",
    "fps_fraction",
    "frames_used",
    "probe_video",
    "select_frames",
    "write_video",
]
