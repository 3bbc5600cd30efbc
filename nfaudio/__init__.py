"""nfaudio: normalizer-free ResNets (Brock et al. 2021) for audio classification and sound event detection."""

__version__ = "0.1.0"
