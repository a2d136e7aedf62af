"""
The BLAP caption metrics as a Hugging Face `evaluate` module that loads from this local file, offline:

```python
import evaluate
from transformers_blap.evaluation import BLAP_CAPTION_METRIC_PATH, NGRAM_METRICS

metric = evaluate.load(BLAP_CAPTION_METRIC_PATH)
metric.compute(predictions=["a calm piano piece"], references=[["soft solo piano", "a quiet piano melody"]])
metric.compute(predictions=["a calm piano piece"], references=["soft solo piano"], metrics=NGRAM_METRICS)
```

`compute` takes the keyword arguments of `transformers_blap.evaluation.caption_metrics` (`metrics`, `cache_dir`,
`sentence_encoder`, `error_detector`, `spice_command`, `device`, `batch_size`).
"""

import datasets
import evaluate

from transformers_blap.evaluation.metrics import ALL_METRICS, caption_metrics

_DESCRIPTION = """
Corpus-level caption metrics of the BLAP paper (Lanzendörfer et al. 2024): BLEU@1-4, METEOR, ROUGE-L and CIDEr-D from
pycocoevalcap after Stanford PTB tokenization (CIDEr-D's document frequencies from the evaluated references), SPICE,
SPIDEr = (CIDEr-D + SPICE) / 2, Sentence-BERT similarity (paraphrase-TinyBERT-L6-v2), fluency-error rate and FENSE.
SPICE and the Sentence-BERT/FENSE models are fetched once with `blap setup-metrics`;
BLEU, METEOR, ROUGE-L and CIDEr-D need only Java.
"""

_CITATION = """
@inproceedings{lanzendorfer2024blap,
  title={BLAP: Bootstrapping Language-Audio Pre-training for Music Captioning},
  author={Lanzend{\\"o}rfer, Luca A. and Pinkl, Constantin and Perraudin, Nathana{\\"e}l and Wattenhofer, Roger},
  booktitle={NeurIPS 2024 Workshop on AI-Driven Speech, Music, and Sound Generation},
  year={2024}
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): one generated caption per clip.
    references (`list[str]` or `list[list[str]]`): per clip, its reference caption or its list of references.
    metrics (`list[str]`, *optional*): which metrics to compute (default: all of them).
    cache_dir, sentence_encoder, error_detector, spice_command, device, batch_size: see `caption_metrics`.
Returns:
    `dict[str, float]`: metric name -> corpus-level score in [0, 1] (CIDEr-D in [0, 10]).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BlapCaptionMetric(evaluate.Metric):
    """The BLAP paper's caption metrics (see the module docstring)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.List(datasets.Value("string"))}
                ),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            reference_urls=["https://github.com/salaniz/pycocoevalcap", "https://github.com/blmoistawinde/fense"],
        )

    def _compute(self, predictions, references, metrics=ALL_METRICS, **scorer_kwargs) -> dict[str, float]:
        return caption_metrics(predictions, references, metrics=metrics, **scorer_kwargs)
