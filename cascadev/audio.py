"""Another file's audio carried into a video being written: copied packet by packet, or re-encoded.

:class:`AudioSource` is fed by :class:`cascadev.video_writer.VideoWriter` as video time advances, so
the output's audio and video packets come interleaved and nothing is buffered beyond one packet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av

from cascadev.errors import CascadeVError

__all__ = ["AudioSource"]

# Audio codecs that mp4/mov/mkv all carry as they are; anything else is re-encoded to AAC.
_COPYABLE_AUDIO = frozenset({"aac", "mp3", "ac3", "eac3", "alac"})


class AudioSource:
    """Audio of another file, copied (or, when the codec does not fit, re-encoded to AAC) into an output.

    Packets are handed over as video time advances (:meth:`feed`), so the output is interleaved and
    nothing is buffered beyond one packet.
    """

    def __init__(self, path: Path, start: float) -> None:
        self.path = path
        self.start = float(start)
        try:
            self.container = av.open(str(path))
        except Exception as exc:
            raise CascadeVError(f"{path} (the audio source) is not a readable media file.") from exc
        if not self.container.streams.audio:
            self.container.close()
            self.container = None
            return
        self.stream = self.container.streams.audio[0]
        # Copying keeps the audio bit-exact and costs nothing; a codec the output container cannot hold
        # (PCM in mp4, say) would make the mux fail at the first packet, so it is re-encoded.
        self.copy = self.stream.codec_context.codec.canonical_name in _COPYABLE_AUDIO
        # A lazy demuxer, pulled only as far as the video has got: the source's audio is never read
        # ahead, so a long source costs no memory and an 8-frame recon reads a fraction of a second.
        self.packets = self.container.demux(self.stream)
        self.pending: list[tuple[float, Any]] = []  # (start time in the output, packet or frame)
        self.exhausted = False

    @property
    def present(self) -> bool:
        return self.container is not None

    def add_output_stream(self, out: av.container.OutputContainer) -> None:
        if self.copy:
            self.out_stream = out.add_stream_from_template(self.stream)
        else:
            ctx = self.stream.codec_context
            # Source layouts can be unnamed ("3 channels"); AAC wants a standard one, so more than
            # two channels without a 5.1/7.1 layout are mixed down to stereo.
            layout = {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}.get(ctx.channels, "stereo")
            self.out_stream = out.add_stream("aac", rate=ctx.sample_rate or 48000, layout=layout)

    def _next_items(self) -> list[tuple[float, Any]]:
        """The next packet (copy) or decoded frames (re-encode) with their output times in seconds."""
        for packet in self.packets:
            if packet.dts is None or packet.pts is None or packet.size == 0:
                continue  # demux's final flush packet carries no data
            tb = packet.time_base
            end = float((packet.pts + (packet.duration or 0)) * tb)
            # Packets wholly before the cut are dropped; the one that straddles it is kept (starting a
            # little before 0) so the first video frame has its sound. At start 0 nothing is dropped:
            # AAC's negative-time priming packets carry the encoder delay that keeps lips in sync.
            if self.start > 0 and end <= self.start:
                continue
            # One shift in whole ticks of the packet's own time base, for pts and dts alike: timestamps
            # stay integral and dts <= pts still holds, which the muxer checks.
            shift = round(self.start / tb)
            if self.copy:
                packet.pts -= shift
                packet.dts -= shift
                return [(float(packet.pts * tb), packet)]
            # Re-encoding: decoded frames are stamped in their own time base (usually 1 / sample rate), so
            # the cut is converted into that one; a frame without a stamp takes its packet's.
            items = []
            for frame in packet.decode():
                if frame.pts is not None:
                    frame.pts -= round(self.start / frame.time_base)
                    items.append((float(frame.pts * frame.time_base), frame))
                else:
                    items.append((float(packet.pts * tb) - self.start, frame))
            if items:
                return items
        self.exhausted = True
        return []

    def feed(self, out: av.container.OutputContainer, until: float) -> None:
        """Mux every audio packet that starts before ``until`` seconds of output.

        Called after each video frame with that frame's end time. Muxers interleave by timestamp and
        buffer what arrives out of order; feeding audio in step with the video keeps that buffer at
        about one packet, where handing all audio over at the end would hold the whole track (or
        write it after the video, which players seek through badly).
        """
        while True:
            if not self.pending:
                if self.exhausted:
                    return
                self.pending = self._next_items()
                if not self.pending:
                    return
            when, item = self.pending[0]
            if when >= until:
                return  # kept pending: it belongs after a video frame not written yet
            self.pending.pop(0)
            if self.copy:
                item.stream = self.out_stream
                out.mux(item)
            else:
                out.mux(self.out_stream.encode(item))

    def finish(self, out: av.container.OutputContainer) -> None:
        # The AAC encoder buffers samples until it has whole 1024-sample frames (plus its look-ahead);
        # without this flush the last of them never reach the file and the audio ends early.
        if not self.copy:
            out.mux(self.out_stream.encode(None))

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None
