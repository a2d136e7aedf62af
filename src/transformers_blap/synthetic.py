"""
Synthetic labelled music: the corpus that proves BLAP's training code learns, without any download.

Every clip is rendered by additive synthesis in numpy from a handful of labels — the instrument playing the melody,
a tempo class, dynamics, key and mode, and a genre-like drum pattern — and described by a caption built from those
labels, phrased several ways. Everything is deterministic from a seed: clip `i` of a corpus depends only on the seed
and `i`. `write_audiofolder` writes the clips as FLAC with a `metadata.jsonl` per split, the layout that
`datasets.load_dataset("audiofolder", data_dir=...)` reads; `parse_caption` reads the labels back out of a caption so
that generated captions can be scored.

Additive synthesis rather than General MIDI rendering: it needs no system packages or soundfont, renders a few
hundred clips in seconds, and is bit-for-bit reproducible from the seed on one platform; the five timbres differ the
way real instruments do (partial spectra, inharmonicity, attack and decay, vibrato, breath noise), which is what a
captioner has to hear.
"""

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SAMPLING_RATE = 16_000
CLIP_SECONDS = 4.0
CAPTIONS_PER_CLIP = 3

INSTRUMENTS = ("piano", "organ", "flute", "violin", "guitar")
TEMPO_RANGES = {"slow": (56.0, 68.0), "medium": (92.0, 108.0), "fast": (150.0, 176.0)}
TEMPOS = tuple(TEMPO_RANGES)
DYNAMICS = ("soft", "loud")
KEYS = ("C", "C sharp", "D", "E flat", "E", "F", "F sharp", "G", "A flat", "A", "B flat", "B")
MODES = ("major", "minor")
RHYTHMS = ("rock", "waltz", "shuffle", "disco")

# Every value each label can take; `parse_caption` returns one of these (or None) per attribute.
ATTRIBUTE_CLASSES: dict[str, tuple[str, ...]] = {
    "instrument": INSTRUMENTS,
    "tempo": TEMPOS,
    "dynamics": DYNAMICS,
    "key": KEYS,
    "mode": MODES,
    "rhythm": RHYTHMS,
}

# Words a caption may use for each label value. Each word belongs to exactly one value, so a caption can be parsed.
TEMPO_WORDS = {"slow": ("slow", "leisurely"), "medium": ("moderate", "mid-tempo"), "fast": ("fast", "brisk")}
DYNAMICS_ADJECTIVES = {"soft": ("soft", "quiet", "gentle"), "loud": ("loud", "powerful", "forceful")}
DYNAMICS_ADVERBS = {"soft": ("softly", "quietly", "gently"), "loud": ("loudly", "powerfully", "forcefully")}
RHYTHM_NOUNS = {"rock": "rock song", "waltz": "waltz", "shuffle": "shuffle", "disco": "disco tune"}

CAPTION_TEMPLATES = (
    "A {tempo} {rhythm_noun} played {dynamics_adverb} on the {instrument} in {key} {mode}.",
    "{Dynamics} {instrument} music with a {tempo} {rhythm} beat, in the key of {key} {mode}.",
    "This is a {tempo} {rhythm_noun} in {key} {mode}, featuring a {dynamics} {instrument}.",
    "The {instrument} plays a {dynamics} melody in {key} {mode} over a {tempo} {rhythm} groove.",
)

# Melody pitch range (MIDI note numbers) per instrument, and the patterns per rhythm: beats per bar, melody onsets
# and drum hits in beats from the bar's start. The melody moves once per beat (plus the swung upbeat of a shuffle),
# so the tempo is heard as the pulse of the melody as well as of the drums.
REGISTERS = {"piano": (55, 79), "organ": (48, 72), "flute": (72, 93), "violin": (67, 88), "guitar": (48, 71)}
EIGHTHS = tuple(i / 2 for i in range(8))
SWUNG = tuple(b + s for b in range(4) for s in (0.0, 2 / 3))
RHYTHM_PATTERNS = {
    "rock": {"beats": 4, "melody": (0, 1, 2, 3), "kick": (0, 2, 2.5), "snare": (1, 3), "hat": EIGHTHS},
    "waltz": {"beats": 3, "melody": (0, 1, 2), "kick": (0,), "snare": (1, 2), "hat": ()},
    "shuffle": {"beats": 4, "melody": (0, 1, 5 / 3, 2, 3, 11 / 3), "kick": (0, 2), "snare": (1, 3), "hat": SWUNG},
    "disco": {"beats": 4, "melody": (0, 1, 2, 3), "kick": (0, 1, 2, 3), "snare": (1, 3), "hat": (0.5, 1.5, 2.5, 3.5)},
}
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10)
DRUM_LEVEL = 0.35
# Notes are held at most this long (then released), so that at any tempo each beat starts a note that is heard as such:
# legato whole-beat notes at 60 bpm blur the pulse into a drone.
MAX_NOTE_SECONDS = 0.4


@dataclass(frozen=True)
class ClipLabels:
    """The labels a synthetic clip is rendered from; `bpm` is the exact tempo inside its `tempo` class."""

    instrument: str
    tempo: str
    bpm: float
    dynamics: str
    key: str
    mode: str
    rhythm: str


def clip_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of clip `index` of a corpus: independent of every other clip and of the corpus size."""
    return np.random.default_rng([seed, index])


def sample_labels(index: int, rng: np.random.Generator) -> ClipLabels:
    """
    Labels of clip `index`. Instrument and tempo class cycle with the index, so every run of 15 consecutive clips
    holds each (instrument, tempo) pair once; the other labels are drawn from `rng`.
    """
    instrument = INSTRUMENTS[index % len(INSTRUMENTS)]
    tempo = TEMPOS[(index // len(INSTRUMENTS)) % len(TEMPOS)]
    low, high = TEMPO_RANGES[tempo]
    return ClipLabels(
        instrument=instrument,
        tempo=tempo,
        bpm=round(float(rng.uniform(low, high)), 1),
        dynamics=str(rng.choice(DYNAMICS)),
        key=str(rng.choice(KEYS)),
        mode=str(rng.choice(MODES)),
        rhythm=str(rng.choice(RHYTHMS)),
    )


# ----------------------------------------------------------------------------------------------------- captions


def caption_variants(labels: ClipLabels) -> list[str]:
    """Every phrasing of the caption of `labels`: each template with each synonym of the tempo and dynamics words."""
    captions = []
    for template in CAPTION_TEMPLATES:
        for tempo_word in TEMPO_WORDS[labels.tempo]:
            for adjective, adverb in zip(DYNAMICS_ADJECTIVES[labels.dynamics], DYNAMICS_ADVERBS[labels.dynamics]):
                captions.append(_fill(template, labels, tempo_word, adjective, adverb))
    return captions


def make_captions(labels: ClipLabels, rng: np.random.Generator, count: int = CAPTIONS_PER_CLIP) -> list[str]:
    """`count` different phrasings of the caption of `labels`, chosen by `rng`."""
    variants = caption_variants(labels)
    return [variants[int(i)] for i in rng.choice(len(variants), size=count, replace=False)]


def _fill(template: str, labels: ClipLabels, tempo_word: str, adjective: str, adverb: str) -> str:
    return template.format(
        tempo=tempo_word,
        rhythm=labels.rhythm,
        rhythm_noun=RHYTHM_NOUNS[labels.rhythm],
        dynamics=adjective,
        Dynamics=adjective.capitalize(),
        dynamics_adverb=adverb,
        instrument=labels.instrument,
        key=labels.key,
        mode=labels.mode,
    )


def _word_pattern(words: tuple[str, ...] | list[str]) -> re.Pattern:
    return re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)


_ATTRIBUTE_PATTERNS: dict[str, dict[str, re.Pattern]] = {
    "instrument": {name: _word_pattern([name]) for name in INSTRUMENTS},
    "tempo": {name: _word_pattern(TEMPO_WORDS[name]) for name in TEMPOS},
    "dynamics": {name: _word_pattern(DYNAMICS_ADJECTIVES[name] + DYNAMICS_ADVERBS[name]) for name in DYNAMICS},
    "mode": {name: _word_pattern([name]) for name in MODES},
    "rhythm": {name: _word_pattern([name]) for name in RHYTHMS},
}
_KEY_PATTERN = re.compile(r"\b(?:in|of) ([A-G](?: sharp| flat)?) (?:major|minor)\b")


def parse_caption(caption: str) -> dict[str, str | None]:
    """
    Read the labels back out of a caption, in any phrasing `caption_variants` produces.

    Returns:
        `dict[str, str | None]`: for each attribute of `ATTRIBUTE_CLASSES`, the one value the caption names, or
        `None` when it names none or several (a caption that hedges between classes is not counted as right).
    """
    parsed: dict[str, str | None] = {}
    for attribute, patterns in _ATTRIBUTE_PATTERNS.items():
        named = [value for value, pattern in patterns.items() if pattern.search(caption)]
        parsed[attribute] = named[0] if len(named) == 1 else None
    keys = set(_KEY_PATTERN.findall(caption))
    parsed["key"] = keys.pop() if len(keys) == 1 and next(iter(keys)) in KEYS else None
    return {attribute: parsed[attribute] for attribute in ATTRIBUTE_CLASSES}


# ------------------------------------------------------------------------------------------------------- audio


def _envelope(length: int, sampling_rate: int, attack_s: float, hold: int, release_s: float) -> np.ndarray:
    """Linear attack, sustain until sample `hold`, linear release."""
    n = np.arange(length)
    attack = np.clip(n / max(attack_s * sampling_rate, 1.0), 0.0, 1.0)
    release = np.clip(1.0 - (n - hold) / max(release_s * sampling_rate, 1.0), 0.0, 1.0)
    return (attack * np.where(n < hold, 1.0, release)).astype(np.float32)


def _decays(t: np.ndarray, decay: np.ndarray) -> np.ndarray:
    """Exponential decay of each partial, `(len(decay), len(t))`, in float32."""
    return np.exp(-(t[None, :] / decay[:, None]).astype(np.float32))


def render_note(
    instrument: str,
    frequency: float,
    duration_s: float,
    brightness: float,
    rng: np.random.Generator,
    sampling_rate: int = SAMPLING_RATE,
) -> np.ndarray:
    """
    One note of `instrument` at `frequency` Hz, held `duration_s` seconds, plus its release tail.

    Args:
        brightness (`float`): in (0, 1]; scales down the upper partials (soft playing is darker).

    Returns:
        `np.ndarray` of shape `(num_samples,)`, float64, peak around 1.
    """
    tail_s = {"piano": 0.25, "organ": 0.03, "flute": 0.08, "violin": 0.12, "guitar": 0.2}[instrument]
    length = int((duration_s + tail_s) * sampling_rate)
    hold = int(duration_s * sampling_rate)
    t = np.arange(length) / sampling_rate
    nyquist = 0.45 * sampling_rate
    vibrato = np.zeros(length)
    noise = None

    if instrument == "piano":
        n = np.arange(1, 16)
        ratios = n * np.sqrt(1.0 + 4e-4 * n**2)  # stiff-string inharmonicity
        amps = brightness ** (n - 1) / n**1.3
        decay = 1.4 * (220.0 / frequency) ** 0.4 / (1.0 + 0.6 * (n - 1))
        env = _decays(t, decay) * _envelope(length, sampling_rate, 0.003, hold, 0.08)[None, :]
    elif instrument == "organ":
        ratios = np.array([0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0])
        amps = np.array([0.6, 1.0, 0.7, 0.45, 0.35, 0.2, 0.15]) * brightness ** np.arange(7)
        tremolo = 1.0 + 0.1 * np.sin(2 * np.pi * 6.5 * t)
        env = (tremolo * _envelope(length, sampling_rate, 0.008, hold, 0.02))[None, :]
    elif instrument == "flute":
        ratios = np.arange(1, 5, dtype=np.float64)
        amps = np.array([1.0, 0.25, 0.08, 0.03]) * brightness ** np.arange(4)
        vibrato = 0.004 * np.sin(2 * np.pi * 5.0 * t)
        env = _envelope(length, sampling_rate, 0.06, hold, 0.06)[None, :]
        breath = np.diff(rng.standard_normal(length + 1))
        noise = 0.04 * breath * env[0]
    elif instrument == "violin":
        n = np.arange(1, 25)
        ratios = n.astype(np.float64)
        formant = 1.0 + 1.5 * np.exp(-(((n * frequency - 2800.0) / 900.0) ** 2))  # the body's bright resonance
        amps = formant * brightness ** (0.5 * (n - 1)) / n
        onset = np.clip((t - 0.12) / 0.1, 0.0, 1.0)  # vibrato grows in after the bow attack
        vibrato = 0.006 * onset * np.sin(2 * np.pi * 5.5 * t)
        env = _envelope(length, sampling_rate, 0.1, hold, 0.1)[None, :]
    elif instrument == "guitar":
        n = np.arange(1, 20)
        ratios = n.astype(np.float64)
        amps = np.abs(np.sin(np.pi * n * 0.18)) / n * brightness ** (0.5 * (n - 1))  # plucked at 18% of the string
        decay = 0.9 * (220.0 / frequency) ** 0.3 / n**0.8
        env = _decays(t, decay) * _envelope(length, sampling_rate, 0.002, hold, 0.05)[None, :]
    else:
        raise ValueError(f"Unknown instrument {instrument!r}; expected one of {INSTRUMENTS}.")

    keep = ratios * frequency < nyquist
    ratios, amps = ratios[keep], amps[keep]
    env = env[keep] if env.shape[0] > 1 else env
    phase = 2 * np.pi * frequency * np.cumsum(1.0 + vibrato) / sampling_rate
    offsets = rng.uniform(0, 2 * np.pi, size=len(ratios))
    # The (partials, samples) products are float32: half the work of float64, far below audible error.
    partials = np.sin((ratios[:, None] * phase[None, :] + offsets[:, None]).astype(np.float32))
    note = amps[:, None].astype(np.float32) * env * partials
    note = note.sum(axis=0, dtype=np.float64)
    if noise is not None:
        note = note + noise
    return note / max(np.abs(note).max(), 1e-9)


def render_drum(kind: str, rng: np.random.Generator, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """One drum hit: `"kick"` (pitch-swept sine), `"snare"` (noise and a 190 Hz body) or `"hat"` (bright noise)."""
    if kind == "kick":
        t = np.arange(int(0.3 * sampling_rate)) / sampling_rate
        frequency = 50.0 + 90.0 * np.exp(-t / 0.03)
        return np.sin(2 * np.pi * np.cumsum(frequency) / sampling_rate) * np.exp(-t / 0.12)
    if kind == "snare":
        t = np.arange(int(0.2 * sampling_rate)) / sampling_rate
        noise = np.diff(rng.standard_normal(len(t) + 1)) * 0.5
        return noise * np.exp(-t / 0.06) + 0.6 * np.sin(2 * np.pi * 190.0 * t) * np.exp(-t / 0.04)
    if kind == "hat":
        t = np.arange(int(0.06 * sampling_rate)) / sampling_rate
        return 0.35 * np.diff(np.diff(rng.standard_normal(len(t) + 2))) * np.exp(-t / 0.018)
    raise ValueError(f"Unknown drum {kind!r}; expected 'kick', 'snare' or 'hat'.")


def _add(buffer: np.ndarray, sound: np.ndarray, start: int) -> None:
    """Mix `sound` into `buffer` at sample `start`, cutting whatever falls outside."""
    begin = max(start, 0)
    end = min(start + len(sound), len(buffer))
    if end > begin:
        buffer[begin:end] += sound[begin - start : end - start]


def render_clip(
    labels: ClipLabels,
    rng: np.random.Generator,
    duration_s: float = CLIP_SECONDS,
    sampling_rate: int = SAMPLING_RATE,
) -> np.ndarray:
    """
    Render a clip: a melody on `labels.instrument` in `labels.key`/`labels.mode` (tonic-triad notes on the beats,
    scale steps on a shuffle's upbeats) following the rhythm's pattern at `labels.bpm`, over the rhythm's drum
    pattern. The clip starts at a random point of the bar; its peak level follows `labels.dynamics`.

    Returns:
        `np.ndarray` of shape `(int(duration_s * sampling_rate),)`, float32 in [-1, 1].
    """
    pattern = RHYTHM_PATTERNS[labels.rhythm]
    beats_per_bar = pattern["beats"]
    seconds_per_beat = 60.0 / labels.bpm
    num_samples = int(duration_s * sampling_rate)
    start_beat = float(rng.uniform(0, beats_per_bar))
    loud = labels.dynamics == "loud"
    brightness = 0.75 if loud else 0.4

    scale = MAJOR_SCALE if labels.mode == "major" else MINOR_SCALE
    low, high = REGISTERS[labels.instrument]
    tonic = low + (KEYS.index(labels.key) - low) % 12
    pitches = [tonic + 12 * octave + step for octave in range(-1, 4) for step in scale]
    pitches = [p for p in pitches if low <= p <= high]
    triad = {tonic % 12, (tonic + scale[2]) % 12, (tonic + scale[4]) % 12}

    def sample_at(beat: float) -> int:
        return int(round((beat - start_beat) * seconds_per_beat * sampling_rate))

    last_beat = start_beat + duration_s / seconds_per_beat
    bars = range(int(start_beat // beats_per_bar), int(last_beat // beats_per_bar) + 2)
    melody = np.zeros(num_samples)
    onsets = [bar * beats_per_bar + position for bar in bars for position in pattern["melody"]]
    position = int(rng.integers(len(pitches)))
    for onset, next_onset in zip(onsets, onsets[1:]):
        if sample_at(onset) >= num_samples:
            break
        on_beat = float(onset).is_integer()
        step = int(rng.choice((-2, -1, 1, 2)))
        position = int(np.clip(position + step, 0, len(pitches) - 1))
        if on_beat:  # land on the nearest tonic-triad note, so the key and mode are heard
            candidates = [i for i, p in enumerate(pitches) if p % 12 in triad]
            position = min(candidates, key=lambda i: (abs(i - position), i))
        frequency = 440.0 * 2 ** ((pitches[position] - 69) / 12)
        duration = min(0.9 * (next_onset - onset) * seconds_per_beat, MAX_NOTE_SECONDS)
        velocity = (1.0 if on_beat else 0.7) * float(rng.uniform(0.85, 1.0))
        note = velocity * render_note(labels.instrument, frequency, duration, brightness, rng, sampling_rate)
        _add(melody, note, sample_at(onset))

    drums = np.zeros(num_samples)
    for kind in ("kick", "snare", "hat"):
        for beat in (bar * beats_per_bar + position for bar in bars for position in pattern[kind]):
            if -sampling_rate < sample_at(beat) < num_samples:
                _add(drums, render_drum(kind, rng, sampling_rate), sample_at(beat))

    mix = melody / max(np.abs(melody).max(), 1e-9) + DRUM_LEVEL * drums / max(np.abs(drums).max(), 1e-9)
    peak = float(rng.uniform(0.6, 0.9) if loud else rng.uniform(0.1, 0.2))
    mix = peak * mix / max(np.abs(mix).max(), 1e-9)
    mix += 1e-4 * rng.standard_normal(num_samples)  # a faint noise floor, like any recording
    return np.clip(mix, -1.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------------------ corpus


@dataclass(frozen=True)
class SyntheticClip:
    """A rendered clip with its labels and its captions (several phrasings of one description)."""

    index: int
    labels: ClipLabels
    captions: list[str]
    audio: np.ndarray


def make_clip(
    index: int, seed: int = 0, duration_s: float = CLIP_SECONDS, sampling_rate: int = SAMPLING_RATE
) -> SyntheticClip:
    """Clip `index` of the corpus with seed `seed`: labels, captions and audio, all from `clip_rng(seed, index)`."""
    rng = clip_rng(seed, index)
    labels = sample_labels(index, rng)
    captions = make_captions(labels, rng)
    audio = render_clip(labels, rng, duration_s=duration_s, sampling_rate=sampling_rate)
    return SyntheticClip(index=index, labels=labels, captions=captions, audio=audio)


def _write_clip(job: tuple[Path, int, int, float, int]) -> dict:
    """Render clip `index` into `split_dir` and return its metadata row (a top-level function, for worker pools)."""
    import soundfile as sf

    split_dir, index, seed, duration_s, sampling_rate = job
    clip = make_clip(index, seed=seed, duration_s=duration_s, sampling_rate=sampling_rate)
    file_name = f"clip_{index:05d}.flac"
    sf.write(split_dir / file_name, clip.audio, sampling_rate, subtype="PCM_16")
    return {"file_name": file_name, "caption": clip.captions, **asdict(clip.labels)}


def write_audiofolder(
    output_dir: str | Path,
    splits: dict[str, int],
    seed: int = 0,
    duration_s: float = CLIP_SECONDS,
    sampling_rate: int = SAMPLING_RATE,
    num_workers: int = 1,
) -> Path:
    """
    Render a corpus as an audiofolder: `output_dir/<split>/<file>.flac` (16-bit FLAC) and
    `output_dir/<split>/metadata.jsonl` with `file_name`, `caption` (a list of `CAPTIONS_PER_CLIP` phrasings, as
    BLAP's training data had three captions per track) and one column per label.

    Splits take consecutive clip indices in the order given (`{"train": 300, "test": 60}`: train is clips 0-299,
    test 300-359), so no clip appears in two splits and a split's clips do not depend on the sizes of later splits.
    The files are the same whatever `num_workers` (each clip depends only on `seed` and its index).

    Returns:
        `Path`: `output_dir`. `datasets.load_dataset("audiofolder", data_dir=output_dir)` reads it where torchcodec is
        installed (datasets 5.x encodes audio with it); `read_metadata` and `load_split` read it without.
    """
    output_dir = Path(output_dir)
    jobs: dict[str, list] = {}
    index = 0
    for split, size in splits.items():
        if size < 1:
            raise ValueError(f"Split {split!r} must have at least one clip, got {size}.")
        split_dir = output_dir / split
        split_dir.mkdir(parents=True, exist_ok=True)
        jobs[split] = [(split_dir, i, seed, duration_s, sampling_rate) for i in range(index, index + size)]
        index += size
    all_jobs = [job for split_jobs in jobs.values() for job in split_jobs]
    if num_workers > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
            rows = pool.map(_write_clip, all_jobs, chunksize=8)
    else:
        rows = [_write_clip(job) for job in all_jobs]
    for split, split_jobs in jobs.items():
        split_rows, rows = rows[: len(split_jobs)], rows[len(split_jobs) :]
        with open(output_dir / split / "metadata.jsonl", "w", encoding="utf-8") as handle:
            for row in split_rows:
                handle.write(json.dumps(row) + "\n")
    return output_dir


def write_example(path: str | Path, index: int, seed: int = 0, duration_s: float = CLIP_SECONDS) -> dict:
    """
    Write clip `index` of the corpus with seed `seed` as a 16-bit FLAC at `path`, and its metadata row (labels,
    captions, seed and index) as JSON beside it (`path` with the suffix `.json`).

    Returns:
        `dict`: the metadata row.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    row = _write_clip((path.parent, index, seed, duration_s, SAMPLING_RATE))
    (path.parent / row.pop("file_name")).replace(path)
    row = {"file_name": path.name, "seed": seed, "index": index, **row}
    path.with_suffix(".json").write_text(json.dumps(row, indent=2) + "\n", encoding="utf-8")
    return row


def read_metadata(split_dir: str | Path) -> list[dict]:
    """The rows of `split_dir/metadata.jsonl`, each with `path` (the clip's absolute path) added."""
    split_dir = Path(split_dir)
    with open(split_dir / "metadata.jsonl", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return [{**row, "path": str((split_dir / row["file_name"]).resolve())} for row in rows]


# --------------------------------------------------------------------------------------------------- tokenizer


def train_t5_tokenizer(texts: list[str], vocab_size: int = 128):
    """
    Train a sentencepiece unigram model on `texts` and wrap it as a T5 tokenizer with T5's special tokens
    (`<pad>` 0, `</s>` 1, `<unk>` 2) and no sentinel tokens.

    On a corpus this small and repetitive, sentencepiece seeds its unigram vocabulary with too few substrings and ends
    up spelling common words letter by letter; every distinct word is therefore also given as a sentence of its own,
    which seeds whole words. `T5Tokenizer(vocab_file=...)` in transformers 5.x does not read a sentencepiece file's
    pieces, so the tokenizer is built from the trained model's pieces and scores. Text is not normalised (the captions
    are plain ASCII).

    Args:
        texts (`list[str]`): the training sentences; include every prompt the model will be given.
        vocab_size (`int`, *optional*, defaults to 128): an upper bound; a small corpus may yield fewer pieces.

    Returns:
        `transformers.T5Tokenizer` whose ids equal the sentencepiece model's, with `</s>` appended.
    """
    import io

    import sentencepiece as spm
    from transformers import T5Tokenizer

    words = sorted({word.strip(".,") for text in texts for word in text.split()} - {""})
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts) + words),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        character_coverage=1.0,
        normalization_rule_name="identity",
        num_threads=1,
        minloglevel=2,
    )
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


__all__ = [
    "ATTRIBUTE_CLASSES",
    "CLIP_SECONDS",
    "INSTRUMENTS",
    "RHYTHM_PATTERNS",
    "SAMPLING_RATE",
    "TEMPOS",
    "ClipLabels",
    "SyntheticClip",
    "caption_variants",
    "make_captions",
    "make_clip",
    "parse_caption",
    "read_metadata",
    "render_clip",
    "render_drum",
    "render_note",
    "sample_labels",
    "train_t5_tokenizer",
    "write_audiofolder",
    "write_example",
]
