"""``nfaudio study``: the NFNet paper's claims (Brock et al. 2021) measured on audio.

Each study is a grid of cells (:mod:`nfaudio.study.framework`); each finished cell is appended to
``results.json``/``results.csv`` at once, so a killed study resumes where it stopped. Studies: ``bn-cost``
(:mod:`nfaudio.study.bn_cost`: what BatchNorm costs), ``agc`` (:mod:`nfaudio.study.agc_study`: the AGC
ablation over batch sizes and clipping thresholds), ``compare`` (:mod:`nfaudio.study.compare`: backbones through
one recipe, one set of folds, one budget) and ``small-data`` (:mod:`nfaudio.study.small_data`: training from
scratch on a few clips per class).
"""

__all__ = ["STUDIES"]

# study name -> module under nfaudio.study that defines ``run(cfg, out, **options)`` (imported lazily).
STUDIES = {"bn-cost": "bn_cost", "agc": "agc_study", "compare": "compare", "small-data": "small_data"}
