"""Audio: decode, down-mix and resample (:mod:`nfaudio.audio.io`), windows and crops
(:mod:`nfaudio.audio.windows`). Every problem with a file raises :class:`AudioError`, naming the file and the cause.
"""

from nfaudio.audio.io import AUDIO_EXTENSIONS, AudioError, AudioInfo, info, load, resample, to_mono
from nfaudio.audio.windows import (
    center_crop,
    fix_length,
    frame_windows,
    random_crop,
    read_crop,
    shifted_windows,
    stream_windows,
    window_starts,
)

__all__ = ["AUDIO_EXTENSIONS", "AudioError", "AudioInfo", "center_crop", "fix_length", "frame_windows", "info",
           "load", "random_crop", "read_crop", "resample", "shifted_windows", "stream_windows", "to_mono",
           "window_starts"]
