"""
Sentence-BERT similarity and FENSE (Zhou et al. 2022, "Can audio captions be evaluated with image caption metrics?").

FENSE scores a candidate caption by the mean cosine similarity of its Sentence-BERT embedding to the embeddings of the
clip's references, and multiplies it by `1 - penalty` (penalty 0.9) when a BERT classifier fine-tuned to spot fluency
errors (repetitions, missing verbs or conjunctions, dangling tails) gives the candidate an error probability above
`error_threshold` (0.9). The defaults are those of the reference implementation (github.com/blmoistawinde/fense):
sentence-transformers `paraphrase-TinyBERT-L6-v2` and the checkpoint `echecker_clotho_audiocaps_base`, whose last
output is the "any error" probability, fed with the raw caption tokenized to at most 64 tokens.

The two models are used through two small interfaces, `SentenceEncoder` and `FluencyErrorDetector`, so that any object
with the same methods can stand in for them (tests use tiny local ones).
"""

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from .resources import (
    FENSE_CHECKPOINT_URL,
    MissingMetricResourceError,
    fense_checkpoint_path,
    fense_encoder_dir,
    missing_fense_files,
    missing_sbert_files,
    raise_if_missing,
    sbert_dir,
)

FENSE_ERROR_THRESHOLD = 0.9
FENSE_PENALTY = 0.9
FENSE_MAX_LENGTH = 64


@runtime_checkable
class SentenceEncoder(Protocol):
    """Anything that embeds sentences: `encode(sentences)` returns an array-like of shape `(len(sentences), dim)`."""

    def encode(self, sentences: list[str]) -> np.ndarray | torch.Tensor: ...


@runtime_checkable
class FluencyErrorDetector(Protocol):
    """Anything that returns, for each sentence, the probability in [0, 1] that it has a fluency error."""

    def error_probabilities(self, sentences: list[str]) -> np.ndarray | torch.Tensor: ...


class SentenceTransformerEncoder:
    """
    `SentenceEncoder` backed by a local sentence-transformers model (by default the copy of `paraphrase-TinyBERT-L6-v2`
    that the setup command stores in the metrics cache).

    Args:
        model_dir (`str` or `os.PathLike`): folder of a saved sentence-transformers model.
        device (`str`, *optional*): torch device; sentence-transformers picks one when `None`.
        batch_size (`int`, *optional*, defaults to 32): sentences per forward pass.
    """

    def __init__(self, model_dir: str | os.PathLike, device: str | None = None, batch_size: int = 32):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as error:
            raise MissingMetricResourceError(
                "Sentence-BERT similarity and FENSE need the `sentence-transformers` package: "
                'pip install "transformers_blap[eval]"'
            ) from error
        model_dir = Path(model_dir)
        if not (model_dir / "modules.json").is_file():
            raise MissingMetricResourceError(
                f"`model_dir` must be a saved sentence-transformers model (a folder with modules.json): {model_dir}"
            )
        self.model = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
        self.batch_size = batch_size

    @classmethod
    def from_cache(cls, cache_dir: str | os.PathLike, **kwargs) -> "SentenceTransformerEncoder":
        """Loads the `paraphrase-TinyBERT-L6-v2` copy from the metrics cache, or says how to fetch it."""
        raise_if_missing(missing_sbert_files(cache_dir), cache_dir)
        return cls(sbert_dir(cache_dir), **kwargs)

    def encode(self, sentences: list[str]) -> np.ndarray:
        return self.model.encode(
            list(sentences), batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
        )


class FluencyErrorClassifier(nn.Module):
    """
    The network of FENSE's fluency-error detector: a BERT encoder, dropout and a linear layer on the `[CLS]` state,
    one logit per error type (the last is "any error"). Parameter names follow the released checkpoints
    (`encoder.*`, `clf.*`).
    """

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(encoder.config.hidden_dropout_prob)
        self.clf = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor):
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        return self.clf(self.dropout(hidden[:, 0]))


class BertFluencyErrorDetector:
    """
    `FluencyErrorDetector` that runs a FENSE detector checkpoint (a dict with `model_type`, `num_classes` and
    `state_dict`, read with `torch.load(weights_only=True)`, never unpickling code).

    Args:
        checkpoint_path (`str` or `os.PathLike`): the `.ckpt` file.
        encoder_dir (`str` or `os.PathLike`): folder with the `config.json` and tokenizer files of the BERT named by
            the checkpoint's `model_type` (the weights come from the checkpoint).
        device (`str`, *optional*, defaults to `"cpu"`): torch device.
        batch_size (`int`, *optional*, defaults to 32): sentences per forward pass.
        max_length (`int`, *optional*, defaults to 64): token length sentences are padded or cut to, as in FENSE.
    """

    def __init__(
        self,
        checkpoint_path: str | os.PathLike,
        encoder_dir: str | os.PathLike,
        device: str = "cpu",
        batch_size: int = 32,
        max_length: int = FENSE_MAX_LENGTH,
    ):
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        try:
            checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(
                f"`checkpoint_path` {checkpoint_path} could not be read as a FENSE detector checkpoint with "
                f"weights_only=True (expected the file from {FENSE_CHECKPOINT_URL}): {error}"
            ) from error
        if not isinstance(checkpoint, dict) or not {"model_type", "num_classes", "state_dict"} <= checkpoint.keys():
            raise ValueError(
                f"`checkpoint_path` {checkpoint_path} must hold a dict with keys 'model_type', 'num_classes' and "
                "'state_dict', as FENSE's released detector checkpoints do."
            )
        config = AutoConfig.from_pretrained(encoder_dir, local_files_only=True)
        self.model = FluencyErrorClassifier(AutoModel.from_config(config), int(checkpoint["num_classes"]))
        state_dict = dict(checkpoint["state_dict"])
        # Buffers that older transformers versions saved with the weights.
        for buffer_name in ("encoder.embeddings.position_ids", "encoder.embeddings.token_type_ids"):
            state_dict.pop(buffer_name, None)
        self.model.load_state_dict(state_dict)
        self.model.eval().to(device)
        self.tokenizer = AutoTokenizer.from_pretrained(encoder_dir, local_files_only=True)
        self.model_type = checkpoint["model_type"]
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length

    @classmethod
    def from_cache(cls, cache_dir: str | os.PathLike, **kwargs) -> "BertFluencyErrorDetector":
        """Loads `echecker_clotho_audiocaps_base` from the metrics cache, or says how to fetch it."""
        raise_if_missing(missing_fense_files(cache_dir), cache_dir)
        return cls(fense_checkpoint_path(cache_dir), fense_encoder_dir(cache_dir), **kwargs)

    @torch.no_grad()
    def error_probabilities(self, sentences: list[str]) -> np.ndarray:
        probabilities = []
        for start in range(0, len(sentences), self.batch_size):
            batch = self.tokenizer(
                list(sentences[start : start + self.batch_size]),
                truncation=True,
                padding="max_length",
                max_length=self.max_length,
                return_tensors="pt",
                return_token_type_ids=True,
            ).to(self.device)
            logits = self.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            probabilities.append(torch.sigmoid(logits[:, -1]).float().cpu().numpy())
        return np.concatenate(probabilities) if probabilities else np.zeros(0, dtype=np.float32)


def _as_matrix(values: np.ndarray | torch.Tensor, rows: int, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != rows:
        raise ValueError(f"{name} must return an array of shape ({rows}, dim); got shape {matrix.shape}")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def sentence_scores(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    encoder: SentenceEncoder,
    detector: FluencyErrorDetector | None = None,
    error_threshold: float = FENSE_ERROR_THRESHOLD,
    penalty: float = FENSE_PENALTY,
) -> dict[str, np.ndarray]:
    """
    Per-clip Sentence-BERT similarity, and with a detector the fluency-error flags and FENSE.

    Args:
        predictions (`Sequence[str]`): one candidate caption per clip.
        references (`Sequence[Sequence[str]]`): the reference captions of each clip (at least one).
        encoder (`SentenceEncoder`): the sentence embedder.
        detector (`FluencyErrorDetector`, *optional*): the fluency-error detector; without it only `sbert_sim` is
            returned.
        error_threshold (`float`, *optional*, defaults to 0.9): error probability above which a caption is penalized.
        penalty (`float`, *optional*, defaults to 0.9): fraction of the similarity taken off a penalized caption.

    Returns:
        `dict[str, np.ndarray]`: arrays of shape `(num_clips,)`: `sbert_sim` (mean cosine similarity to the references)
        and, with a detector, `fluency_error` (1.0 where the error probability exceeds the threshold) and `fense`.
    """
    flat_references = [reference for clip_references in references for reference in clip_references]
    bounds = np.cumsum([0] + [len(clip_references) for clip_references in references])
    candidate_embeddings = _as_matrix(encoder.encode(list(predictions)), len(predictions), "encoder.encode")
    reference_embeddings = _as_matrix(encoder.encode(flat_references), len(flat_references), "encoder.encode")
    similarities = np.array(
        [
            float((reference_embeddings[bounds[i] : bounds[i + 1]] @ candidate_embeddings[i]).mean())
            for i in range(len(predictions))
        ]
    )
    scores = {"sbert_sim": similarities}
    if detector is not None:
        probabilities = detector.error_probabilities(list(predictions))
        if isinstance(probabilities, torch.Tensor):
            probabilities = probabilities.detach().float().cpu().numpy()
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.shape != (len(predictions),):
            raise ValueError(
                "detector.error_probabilities must return one probability per sentence, shape "
                f"({len(predictions)},); got shape {probabilities.shape}"
            )
        errors = (probabilities > error_threshold).astype(np.float64)
        scores["fluency_error"] = errors
        scores["fense"] = similarities * (1.0 - penalty * errors)
    return scores
