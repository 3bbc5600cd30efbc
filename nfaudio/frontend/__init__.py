"""Spectrogram frontend, inside the model: :class:`LogMel` (waveform -> log-mel dB image, librosa parity, STFT
strategies fft / conv / matmul) and :class:`SpecAugment` (training-only masking).
"""

from nfaudio.frontend.logmel import STFT_STRATEGIES, LogMel
from nfaudio.frontend.specaugment import SpecAugment

__all__ = ["STFT_STRATEGIES", "LogMel", "SpecAugment"]
