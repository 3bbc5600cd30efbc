"""Synthetic BirdCLEF-style dataset for the demo and the tests.

:mod:`nfaudio.synth.calls` makes the signals (species specs, calls, coloured noise, clips, soundscapes and
their per-window labels); :mod:`nfaudio.synth.dataset` writes them in the Kaggle BirdCLEF layout
(:func:`generate_dataset`, configured by :class:`SynthConfig`); :mod:`nfaudio.synth.domain` records soundscapes
in a target domain that differs from the training clips (:class:`TargetDomain`). One seed gives identical CSVs and
decoded audio.
"""

from nfaudio.synth.calls import (
    SPECIES,
    Event,
    NoiseProfile,
    SpeciesSpec,
    events_to_labels,
    make_call,
    make_clip,
    make_soundscape,
)
from nfaudio.synth.dataset import SYNTH_VERSION, SynthConfig, SynthDataset, generate_dataset
from nfaudio.synth.domain import TargetDomain, propagate, target_background

__all__ = ["SPECIES", "SYNTH_VERSION", "Event", "NoiseProfile", "SpeciesSpec", "SynthConfig", "SynthDataset",
           "TargetDomain", "events_to_labels", "generate_dataset", "make_call", "make_clip", "make_soundscape",
           "propagate", "target_background"]
