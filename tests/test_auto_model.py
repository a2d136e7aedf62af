"""The Auto classes on saved BLAP folders: each stage loads with its own Auto class, never half-random."""

import pytest
import torch
from transformers import AutoModel, AutoModelForSpeechSeq2Seq, TextIteratorStreamer

from transformers_blap import BlapForConditionalGeneration, BlapForRepresentationLearning

from blap_testing import RATE, save_tiny_blap, tiny_blap, tone


def test_automodel_on_a_captioning_folder_names_the_right_auto_class(tmp_path, t5_tokenizer_dir):
    folder = save_tiny_blap(tmp_path / "captioner", t5_tokenizer_dir)
    expected = r"holds a captioning \(stage-2\) model.*AutoModelForSpeechSeq2Seq\.from_pretrained"
    with pytest.raises(ValueError, match=expected):
        AutoModel.from_pretrained(folder)
    with pytest.raises(ValueError, match=expected):
        BlapForRepresentationLearning.from_pretrained(folder)
    assert type(AutoModelForSpeechSeq2Seq.from_pretrained(folder)) is BlapForConditionalGeneration


def test_streamer_with_greedy_search_streams_the_caption(t5_tokenizer_dir):
    model, processor = tiny_blap(t5_tokenizer_dir)
    inputs = processor(audio=tone(1.0), sampling_rate=RATE)
    streamer = TextIteratorStreamer(processor.tokenizer, skip_special_tokens=True)
    with torch.no_grad():
        ids = model.generate(**inputs, num_beams=1, max_new_tokens=6, min_length=3, streamer=streamer)
    assert "".join(streamer).strip() == processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
    with pytest.raises(ValueError, match="streamer"):  # transformers: streamers need a single beam
        model.generate(**inputs, num_beams=2, max_new_tokens=6, streamer=streamer)
