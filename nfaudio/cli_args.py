"""Helpers shared by the command-line modules (no heavy imports)."""

from __future__ import annotations

import argparse
import dataclasses

from nfaudio.config import PredictConfig

__all__ = ["predict_settings"]


def predict_settings(args: argparse.Namespace) -> PredictConfig:
    """The run's ``predict`` section with the flags given on the command line applied (flags win; ``--hop`` or
    ``--overlap`` replaces both of the run's)."""
    from nfaudio.rundir import run_of

    settings = run_of(args.model).predict_defaults()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(settings)
             if getattr(args, f.name, None) is not None}  # a command without some of predict's flags leaves them
    if "hop" in given or "overlap" in given:
        given = {"hop": None, "overlap": None, **given}
    return dataclasses.replace(settings, **given)
