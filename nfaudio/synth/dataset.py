"""The synthetic BirdCLEF-style dataset on disk: :class:`SynthConfig` and :func:`generate_dataset`.

Layout (Kaggle BirdCLEF 2021-2025): ``train_metadata.csv``, ``train_audio/<label>/<id>.ogg``, ``taxonomy.csv``,
``sample_submission.csv``, ``test_soundscapes/*.ogg``, plus ``test_soundscapes_labels.csv`` (row_id
``<stem>_<end second>``, one 0/1 column per class) and ``test_soundscapes_events.csv`` (every placed call).
With ``n_unlabeled_soundscapes``, ``unlabeled_soundscapes/*.ogg`` (BirdCLEF 2024-2025's name) is a pool of
soundscapes for pseudo-labelling, drawn separately from the labelled test soundscapes; their truth goes to
``unlabeled_soundscapes_truth.csv`` for analysis only. With ``target_domain`` (:class:`TargetDomain`), all
soundscapes are recorded in that domain (distant, filtered, reverberant, overlapping calls at low SNR over
another background) while the training clips are not.
The signals come from :mod:`nfaudio.synth.calls`. All randomness comes from ``np.random.default_rng``: one seed
gives identical CSVs and decoded audio.
"""

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from nfaudio.fileio import atomic_path, write_csv, write_json
from nfaudio.formats import row_id
from nfaudio.synth.calls import SPECIES, NoiseProfile, events_to_labels, make_clip, make_soundscape
from nfaudio.synth.domain import TargetDomain, propagate, target_background

__all__ = ["SYNTH_VERSION", "SynthConfig", "SynthDataset", "generate_dataset"]

logger = logging.getLogger(__name__)

SYNTH_VERSION = 1  # bump when the generator changes so that stored datasets get regenerated
_CONFIG_FILE, _MARKER_FILE = "synth_config.json", ".synth_incomplete"
_OUTPUTS = ("train_audio", "test_soundscapes", "unlabeled_soundscapes", "train_metadata.csv", "taxonomy.csv",
            "sample_submission.csv", "test_soundscapes_labels.csv", "test_soundscapes_events.csv", _CONFIG_FILE,
            "unlabeled_soundscapes_truth.csv")
_ALWAYS = _OUTPUTS[3:9]  # the files every dataset has
_AUTHORS = ("Ana Souza", "Ben Okafor", "Chen Wei", "Dana Kowalski", "Emil Larsen", "Farah Haddad", "Gita Rao",
            "Hugo Moreau", "Ines Ortega", "Jonas Berg", "Kemi Adeyemi", "Lena Fischer", "Marta Novak",
            "Nils Holm", "Olga Petrova", "Pablo Ruiz")


@dataclass(frozen=True)
class SynthConfig:
    """What ``generate_dataset`` makes (stored as ``synth_config.json``); ``__post_init__`` raises ValueError."""

    n_species: int = 8
    clips_per_species: int = 20
    clip_seconds: tuple[float, float] = (3.0, 15.0)
    n_soundscapes: int = 5
    soundscape_seconds: float = 60.0
    window_seconds: float = 5.0
    sample_rate: int = 32000
    seed: int = 0
    snr_db: tuple[float, float] = (0.0, 20.0)
    secondary_prob: float = 0.3
    secondary_gain_db: tuple[float, float] = (-15.0, -6.0)
    max_species_per_window: int = 3
    authors_per_species: int = 3
    hum_prob: float = 0.3
    target_domain: TargetDomain | None = None
    n_unlabeled_soundscapes: int = 0

    def __post_init__(self) -> None:
        n_win = self.soundscape_seconds / self.window_seconds if self.window_seconds > 0 else 0.5
        checks = {
            "n_species": 2 <= self.n_species <= len(SPECIES), "clips_per_species": self.clips_per_species >= 1,
            "clip_seconds": 0.5 <= self.clip_seconds[0] <= self.clip_seconds[1],
            "n_soundscapes": self.n_soundscapes >= 0, "window_seconds": self.window_seconds >= 2.0,
            "soundscape_seconds": n_win >= 1 and abs(n_win - round(n_win)) < 1e-9,
            "sample_rate": self.sample_rate >= 8000, "snr_db": self.snr_db[0] <= self.snr_db[1],
            "secondary_prob": 0.0 <= self.secondary_prob <= 1.0,
            "secondary_gain_db": self.secondary_gain_db[0] <= self.secondary_gain_db[1] <= 0.0,
            "max_species_per_window": 0 <= self.max_species_per_window <= 5,
            "authors_per_species": 1 <= self.authors_per_species <= len(_AUTHORS),
            "hum_prob": 0.0 <= self.hum_prob <= 1.0,
            "target_domain": self.target_domain is None or isinstance(self.target_domain, TargetDomain),
            "n_unlabeled_soundscapes": self.n_unlabeled_soundscapes >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid SynthConfig field(s) {bad} (soundscape_seconds must be a multiple of "
                             f"window_seconds): {self}")

    @property
    def classes(self) -> list[str]:
        """Labels of the first ``n_species`` rows of ``SPECIES``, sorted: the taxonomy order."""
        return sorted(list(SPECIES)[: self.n_species])


@dataclass(frozen=True)
class SynthDataset:
    """Paths of a generated dataset; ``root`` holds the BirdCLEF layout."""

    root: Path
    classes: list[str]
    metadata: Path
    soundscape_labels: Path

    @property
    def taxonomy(self) -> Path:
        return self.root / "taxonomy.csv"

    @property
    def sample_submission(self) -> Path:
        return self.root / "sample_submission.csv"

    @property
    def soundscape_events(self) -> Path:
        return self.root / "test_soundscapes_events.csv"

    @property
    def unlabeled(self) -> Path:
        """The pool of unlabelled soundscapes (empty without ``n_unlabeled_soundscapes``)."""
        return self.root / "unlabeled_soundscapes"

    @property
    def unlabeled_truth(self) -> Path:
        """Per-window labels of the unlabelled pool, for measuring pseudo-labels only (never for training)."""
        return self.root / "unlabeled_soundscapes_truth.csv"



def _write_csv(df: pd.DataFrame, path: Path) -> None:
    write_csv(df, path, lineterminator="\n")


def _write_ogg(path: Path, y: np.ndarray, sr: int) -> None:
    with atomic_path(path) as tmp:
        sf.write(tmp, np.clip(y, -1.0, 1.0), sr, format="OGG", subtype="VORBIS")


def _stored_config(config: SynthConfig) -> dict:
    return json.loads(json.dumps({"synth_version": SYNTH_VERSION, "config": asdict(config)}))


def _read_stored(root: Path) -> dict | None:
    try:
        return json.loads((root / _CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(root: Path, config: SynthConfig) -> bool:
    if _read_stored(root) != _stored_config(config) or (root / _MARKER_FILE).exists():
        return False
    try:
        files = list(pd.read_csv(root / "train_metadata.csv")["filename"].map(lambda f: f"train_audio/{f}"))
        stems = [r.rsplit("_", 1)[0] for r in pd.read_csv(root / "test_soundscapes_labels.csv")["row_id"]]
    except (OSError, ValueError, KeyError):
        return False
    files += [f"test_soundscapes/{s}.ogg" for s in sorted(set(stems))] + list(_ALWAYS)
    if config.n_unlabeled_soundscapes:
        files += [f"unlabeled_soundscapes/{_unlabeled_stem(i)}.ogg" for i in range(config.n_unlabeled_soundscapes)]
        files.append("unlabeled_soundscapes_truth.csv")
    return all((root / f).is_file() for f in files)


def _prepare_root(root: Path, config: SynthConfig, overwrite: bool) -> None:
    if not overwrite and root.exists() and any(root.iterdir()):
        stored = _read_stored(root)
        if stored is not None and stored != _stored_config(config):
            raise FileExistsError(f"{root} holds a synthetic dataset made with another config; pass "
                                  "overwrite=True to replace it")
        if stored is None and not (root / _MARKER_FILE).exists():
            raise FileExistsError(f"{root} is not empty and holds no synthetic dataset; pass overwrite=True "
                                  "to write one there anyway")
        logger.warning("regenerating the incomplete synthetic dataset in %s", root)
    for name in _OUTPUTS:
        if (root / name).is_dir():
            shutil.rmtree(root / name)
        elif (root / name).exists():
            (root / name).unlink()
    root.mkdir(parents=True, exist_ok=True)
    (root / _MARKER_FILE).write_text(json.dumps(_stored_config(config)))


def _noise_profile(rng: np.random.Generator, hum_prob: float) -> NoiseProfile:
    hum = float(rng.choice([50.0, 60.0])) if rng.uniform() < hum_prob else 0.0
    return NoiseProfile(alpha=float(rng.uniform(1.0, 2.0)), hum_hz=hum,
                        hum_db=float(rng.uniform(-25.0, -8.0)), wind=float(rng.uniform(0.0, 0.6)))


def _write_clips(root: Path, config: SynthConfig, classes: list[str]) -> list[dict]:
    """Training clips; each author has a recording profile (noise colour, hum, wind) shared by its clips."""
    setup = np.random.default_rng([config.seed, 0])
    n_pool = min(len(_AUTHORS), max(config.authors_per_species, len(classes) * config.authors_per_species // 2))
    pool = list(_AUTHORS[:n_pool])
    authors = {c: [str(a) for a in setup.choice(pool, config.authors_per_species, replace=False)]
               for c in classes}
    profiles = {a: _noise_profile(setup, config.hum_prob) for a in pool}
    lo, hi = config.snr_db
    rows = []
    for si, label in enumerate(classes):
        spec = SPECIES[label]
        for j in range(config.clips_per_species):
            rng = np.random.default_rng([config.seed, 1, si, j])
            seconds, snr = round(float(rng.uniform(*config.clip_seconds)), 2), float(rng.uniform(lo, hi))
            secondary = None
            if rng.uniform() < config.secondary_prob:
                secondary = str(rng.choice([c for c in classes if c != label]))
            author = authors[label][int(rng.integers(config.authors_per_species))]
            y, _ = make_clip(label, config.sample_rate, rng, seconds=seconds, secondary=secondary, snr_db=snr,
                             secondary_gain_db=float(rng.uniform(*config.secondary_gain_db)),
                             noise=profiles[author])
            quality = 1 + 4 * (snr - lo) / max(hi - lo, 1e-9) + rng.normal(0.0, 0.5)  # rating follows SNR
            xc_id = f"SYN{si:02d}{j:04d}"
            _write_ogg(root / "train_audio" / label / f"{xc_id}.ogg", y, config.sample_rate)
            rows.append({
                "primary_label": label, "secondary_labels": str([secondary] if secondary else []),
                "type": str([spec.call_type]),
                "latitude": round(spec.home[0] + float(rng.normal(0.0, 1.5)), 4),
                "longitude": round(spec.home[1] + float(rng.normal(0.0, 1.5)), 4),
                "scientific_name": spec.scientific_name, "common_name": spec.common_name, "author": author,
                "license": "Creative Commons Attribution-NonCommercial-ShareAlike 4.0",
                "rating": float(np.clip(np.round(2 * quality) / 2, 1.0, 5.0)),
                "url": f"synthetic://nfaudio/{label}/{xc_id}", "filename": f"{label}/{xc_id}.ogg",
            })
    return rows


def _unlabeled_stem(i: int) -> str:
    return f"unlabeled_{i:05d}"


def _soundscape(config: SynthConfig, classes: list[str], rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """One soundscape, in the target domain when the config has one."""
    sr, domain = config.sample_rate, config.target_domain
    if domain is None:
        return make_soundscape(classes, sr, rng, seconds=config.soundscape_seconds, window=config.window_seconds,
                               max_species=config.max_species_per_window,
                               snr_db=float(rng.uniform(*config.snr_db)), noise=_noise_profile(rng, config.hum_prob))
    return make_soundscape(classes, sr, rng, seconds=config.soundscape_seconds, window=config.window_seconds,
                           max_species=domain.max_species, snr_db=float(rng.uniform(*domain.snr_db)),
                           call_transform=lambda call, r: propagate(call, sr, r, domain),
                           make_background=lambda n, r: target_background(n, sr, r, domain))


def _soundscape_set(root: Path, folder: str, stems: list[str], config: SynthConfig, classes: list[str],
                    stream: int) -> tuple[list[str], np.ndarray, list[tuple]]:
    """Write soundscapes ``folder/<stem>.ogg`` (seeds ``[seed, stream, i]``): row ids, label table, events."""
    row_ids, tables, event_rows = [], [np.zeros((0, len(classes)), dtype=np.int64)], []
    win = config.window_seconds
    for i, stem in enumerate(stems):
        y, events = _soundscape(config, classes, np.random.default_rng([config.seed, stream, i]))
        _write_ogg(root / folder / f"{stem}.ogg", y, config.sample_rate)
        tables.append(events_to_labels(events, classes, config.soundscape_seconds, win))
        row_ids += [row_id(stem, (w + 1) * win) for w in range(len(tables[-1]))]
        event_rows += [(stem, round(e.start, 6), round(e.end, 6), e.label) for e in events]
    return row_ids, np.concatenate(tables), event_rows


def generate_dataset(root: str | Path, config: SynthConfig = SynthConfig(),  # noqa: B008 (frozen)
                     overwrite: bool = False) -> SynthDataset:
    """Write a synthetic BirdCLEF-style dataset under ``root``, or reuse a complete one made with ``config``.

    Args:
        root: target folder (created when missing).
        config: what to generate.
        overwrite: regenerate even when ``root`` holds this dataset; deletes the generated paths
            (``train_audio/``, ``test_soundscapes/``, the CSVs) first, whatever made them.

    Returns:
        the dataset's paths and class list.

    Raises:
        FileExistsError: ``overwrite`` is False and ``root`` holds another config's dataset or foreign files.
    """
    root = Path(root)
    classes = config.classes
    dataset = SynthDataset(root, classes, root / "train_metadata.csv", root / "test_soundscapes_labels.csv")
    if not overwrite and _is_complete(root, config):
        logger.info("reusing the synthetic dataset in %s", root)
        return dataset
    _prepare_root(root, config, overwrite)
    t0 = time.perf_counter()
    rows = _write_clips(root, config, classes)
    row_ids, table, event_rows = _soundscape_set(root, "test_soundscapes",
                                                 [f"soundscape_{i:05d}" for i in range(config.n_soundscapes)],
                                                 config, classes, stream=2)
    ids = pd.DataFrame({"row_id": row_ids})
    if config.n_unlabeled_soundscapes:
        pool_ids, pool_table, _ = _soundscape_set(
            root, "unlabeled_soundscapes", [_unlabeled_stem(i) for i in range(config.n_unlabeled_soundscapes)],
            config, classes, stream=3)
        _write_csv(pd.concat([pd.DataFrame({"row_id": pool_ids}), pd.DataFrame(pool_table, columns=classes)],
                             axis=1), dataset.unlabeled_truth)
    _write_csv(pd.DataFrame(rows), dataset.metadata)
    _write_csv(pd.DataFrame({
        "primary_label": classes, "inat_taxon_id": [100001 + list(SPECIES).index(c) for c in classes],
        "scientific_name": [SPECIES[c].scientific_name for c in classes],
        "common_name": [SPECIES[c].common_name for c in classes], "class_name": "Aves"}), dataset.taxonomy)
    _write_csv(pd.concat([ids, pd.DataFrame(table, columns=classes)], axis=1), dataset.soundscape_labels)
    uniform = pd.DataFrame(np.full(table.shape, round(1.0 / len(classes), 6)), columns=classes)
    _write_csv(pd.concat([ids, uniform], axis=1), dataset.sample_submission)
    _write_csv(pd.DataFrame(event_rows, columns=["soundscape", "start", "end", "label"]),
               dataset.soundscape_events)
    write_json(root / _CONFIG_FILE, _stored_config(config), sort_keys=True)
    (root / _MARKER_FILE).unlink()
    logger.info("generated %d clips, %d soundscapes and %d unlabelled ones (%d classes, %d Hz%s) in %s in %.1f s",
                len(rows), config.n_soundscapes, config.n_unlabeled_soundscapes, len(classes), config.sample_rate,
                ", target domain" if config.target_domain else "", root, time.perf_counter() - t0)
    return dataset
