"""Self-training on unlabelled recordings (the BirdCLEF 2023-2025 winners' recipe): pseudo-label tables from a
teacher (:mod:`nfaudio.selftrain.pseudo`)."""

from nfaudio.selftrain.pseudo import PseudoLabels, pseudo_label, read_pseudo_labels, sharpen

__all__ = ["PseudoLabels", "pseudo_label", "read_pseudo_labels", "sharpen"]
