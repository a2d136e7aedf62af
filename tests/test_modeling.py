import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSpeechSeq2Seq, GenerationConfig, TextIteratorStreamer

from transformers_blap import BlapForConditionalGeneration

from tiny import tiny_config, tiny_processor

REPO_SRC = str(Path(__file__).resolve().parents[1] / "src")


def _model(seed: int = 0, **overrides) -> BlapForConditionalGeneration:
    torch.manual_seed(seed)
    return BlapForConditionalGeneration(tiny_config(**overrides)).eval()


def _clips(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # Different lengths and contents: a short clip (repeat-padded), a full one, a long one (cut).
    lengths = [4_000, 16_000, 21_000, 9_000, 16_000][:n]
    return [(0.2 * rng.standard_normal(length)).astype(np.float32) for length in lengths]


@pytest.fixture(scope="module")
def processor(t5_tokenizer_dir):
    return tiny_processor(t5_tokenizer_dir)


def test_forward_outputs_and_shapes(processor):
    model = _model()
    inputs = processor(audio=_clips(2), sampling_rate=16_000, captions=["calm jazz piano", "rock"])
    out = model(**inputs)
    config = model.config
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.logits.shape == (2, inputs["labels"].shape[1], config.text_config.vocab_size)
    assert out.audio_embeds.shape == (2, 32, config.audio_config.hidden_size)
    assert out.qformer_outputs.last_hidden_state.shape == (2, 4, config.qformer_config.hidden_size)
    assert out.language_model_inputs.shape == (2, 4, config.text_config.d_model)
    assert out.language_model_outputs.logits is out.logits
    torch.testing.assert_close(model.get_audio_features(inputs["input_features"]), out.audio_embeds)
    # audio_embeds are taken after the audio LayerNorm: zero mean, unit variance before its affine part.
    normalised = (out.audio_embeds - model.audio_layernorm.bias) / model.audio_layernorm.weight
    torch.testing.assert_close(normalised.mean(-1), torch.zeros(2, 32), atol=1e-4, rtol=0)
    tuple_out = model(**inputs, return_dict=False)
    torch.testing.assert_close(tuple_out[0], out.loss)


def test_loss_decreases_when_training_stage2_parameters(processor):
    model = _model()
    trainable = model.set_stage2_trainable()
    model.eval()  # dropout off, so that each step's loss is comparable
    inputs = processor(audio=_clips(2), sampling_rate=16_000, captions=["calm jazz piano", "loud rock guitar"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(8):
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
    assert losses[-1] < losses[0] - 0.5, losses
    assert trainable and all(not n.startswith(("audio_encoder.", "language_model.")) for n in trainable)
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("language_model."))


def test_stage2_trainable_set_is_exactly_qformer_queries_layernorm_projection():
    model = _model()
    trainable = set(model.set_stage2_trainable())
    expected_prefixes = ("qformer.", "query_tokens", "audio_layernorm.", "language_projection.")
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(expected_prefixes)}
    model.train()
    # The frozen audio encoder stays in eval mode: its BatchNorm statistics never move in training.
    assert not model.audio_encoder.training and model.qformer.training
    running_mean = model.audio_encoder.audio_encoder.batch_norm.running_mean.clone()
    model(input_features=torch.randn(2, 1, 101, 16))
    torch.testing.assert_close(model.audio_encoder.audio_encoder.batch_norm.running_mean, running_mean)


def test_generate_beams_sampling_and_options(processor):
    model = _model()
    inputs = processor(audio=_clips(3), sampling_rate=16_000)
    beams = model.generate(**inputs, num_beams=3, max_new_tokens=6, min_length=0)
    assert beams.shape[0] == 3 and beams.shape[1] <= 7
    assert (beams[:, 0] == model.config.text_config.decoder_start_token_id).all()
    assert len(processor.batch_decode(beams, skip_special_tokens=True)) == 3
    torch.manual_seed(0)
    sampled = model.generate(**inputs, do_sample=True, top_p=0.9, num_beams=1, max_new_tokens=5, min_length=0)
    assert sampled.shape[0] == 3
    returned = model.generate(**inputs, num_beams=3, num_return_sequences=2, max_new_tokens=4, min_length=0)
    assert returned.shape[0] == 6
    config = GenerationConfig(
        num_beams=1, max_new_tokens=3, min_new_tokens=3, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0
    )
    assert model.generate(**inputs, generation_config=config).shape == (3, 4)


def test_generation_defaults_are_blaps_and_streamers_work(processor):
    model = _model()
    assert model.generation_config.num_beams == 10
    assert model.generation_config.max_new_tokens == 40
    assert model.generation_config.min_length == 30
    inputs = processor(audio=_clips(1), sampling_rate=16_000)
    streamer = TextIteratorStreamer(processor.tokenizer, skip_special_tokens=True)
    ids = model.generate(**inputs, num_beams=1, max_new_tokens=5, min_length=0, streamer=streamer)
    streamed = "".join(streamer)
    assert streamed.strip() == processor.decode(ids[0], skip_special_tokens=True).strip()


def test_batched_captions_equal_one_at_a_time(processor):
    model = _model(seed=3)
    clips = _clips(4, seed=1)
    prompts = ["Generate an objective music description.", "Describe it.", "A", "Provide a music caption."]
    kwargs = {"num_beams": 4, "max_new_tokens": 8, "min_length": 3, "repetition_penalty": 1.5}
    batched = model.generate(**processor(audio=clips, sampling_rate=16_000, text=prompts), **kwargs)
    batched_text = processor.batch_decode(batched, skip_special_tokens=True)
    single_text = [
        processor.decode(
            model.generate(**processor(audio=[c], sampling_rate=16_000, text=[p]), **kwargs)[0],
            skip_special_tokens=True,
        )
        for c, p in zip(clips, prompts)
    ]
    assert batched_text == single_text


def test_untied_lm_head_survives_tie_weights_resize_and_save_load(tmp_path):
    model = _model()
    lm = model.language_model
    with torch.no_grad():
        lm.lm_head.weight.copy_(torch.randn_like(lm.lm_head.weight))
    head = lm.lm_head.weight.detach().clone()
    assert lm.lm_head.weight.data_ptr() != lm.shared.weight.data_ptr()
    assert "language_model.lm_head.weight" not in model.all_tied_weights_keys
    model.tie_weights()
    torch.testing.assert_close(lm.lm_head.weight, head)
    model.save_pretrained(tmp_path)
    reloaded = BlapForConditionalGeneration.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.language_model.lm_head.weight, head)
    assert not torch.equal(reloaded.language_model.lm_head.weight, reloaded.language_model.shared.weight)
    reloaded.resize_token_embeddings(230)
    torch.testing.assert_close(reloaded.language_model.lm_head.weight[:226], head)
    # Encoder and decoder embeddings stay tied to the shared table.
    assert reloaded.language_model.encoder.embed_tokens.weight is reloaded.language_model.shared.weight


def test_save_load_gives_identical_outputs_in_another_process(processor, tmp_path):
    model = _model(seed=5)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert not list((tmp_path / "model").glob("*.bin"))
    inputs = processor(audio=_clips(2), sampling_rate=16_000, captions=["jazz", "rock music"])
    torch.save(dict(inputs), tmp_path / "inputs.pt")
    with torch.no_grad():
        expected_logits = model(**inputs).logits
    expected_ids = model.generate(
        **{k: inputs[k] for k in ("input_features", "input_ids", "attention_mask")},
        num_beams=2,
        max_new_tokens=6,
        min_length=0,
    )
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {REPO_SRC!r})
        from transformers import AutoModelForSpeechSeq2Seq
        import transformers_blap
        model = AutoModelForSpeechSeq2Seq.from_pretrained({str(tmp_path / "model")!r}).eval()
        assert type(model).__name__ == "BlapForConditionalGeneration"
        inputs = torch.load({str(tmp_path / "inputs.pt")!r}, weights_only=True)
        with torch.no_grad():
            logits = model(**inputs).logits
        ids = model.generate(**{{k: inputs[k] for k in ("input_features", "input_ids", "attention_mask")}},
                             num_beams=2, max_new_tokens=6, min_length=0)
        torch.save({{"logits": logits, "ids": ids}}, {str(tmp_path / "out.pt")!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    torch.testing.assert_close(out["logits"], expected_logits, atol=0, rtol=0)
    assert torch.equal(out["ids"], expected_ids)


def test_auto_model_resolves_blap(tmp_path):
    _model().save_pretrained(tmp_path)
    assert isinstance(AutoModelForSpeechSeq2Seq.from_pretrained(tmp_path), BlapForConditionalGeneration)
    assert isinstance(AutoModelForSpeechSeq2Seq.from_config(tiny_config()), BlapForConditionalGeneration)


def test_qformer_and_queries_stay_float32_in_bfloat16(tmp_path, processor):
    _model().save_pretrained(tmp_path)
    model = BlapForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert model.query_tokens.dtype == torch.float32
    assert {p.dtype for p in model.qformer.parameters()} == {torch.float32}
    assert model.language_model.shared.weight.dtype == torch.bfloat16
    inputs = processor(audio=_clips(2), sampling_rate=16_000)
    ids = model.generate(**inputs, num_beams=2, max_new_tokens=4, min_length=0)
    assert ids.shape[0] == 2


def test_every_part_follows_the_requested_dtype_and_attention():
    """The dtype and attention implementation asked of the whole model reach the audio encoder, Q-Former and T5."""
    model = AutoModelForSpeechSeq2Seq.from_config(tiny_config(), dtype=torch.bfloat16, attn_implementation="eager")
    parts = {
        "audio_encoder": model.audio_encoder,
        "qformer": model.qformer,
        "language_model": model.language_model,
        "language_model.encoder": model.language_model.encoder,
        "language_model.decoder": model.language_model.decoder,
    }
    assert {name: part.dtype for name, part in parts.items()} == dict.fromkeys(parts, torch.bfloat16)
    implementations = {name: part.config._attn_implementation for name, part in parts.items()}
    assert implementations == dict.fromkeys(parts, "eager")


def test_bad_inputs_raise_clear_errors(processor):
    model = _model()
    inputs = processor(audio=_clips(2), sampling_rate=16_000)
    with pytest.raises(ValueError, match="`input_features` is required"):
        model(input_ids=inputs["input_ids"])
    with pytest.raises(ValueError, match="`input_features` is required"):
        model.generate(input_ids=inputs["input_ids"])
    with pytest.raises(ValueError, match=r"must have shape \(batch_size, 1, num_frames"):
        model(input_features=torch.randn(2, 101, 16))
    with pytest.raises(ValueError, match=r"must have shape \(batch_size, 1, num_frames"):
        model.generate(input_features=torch.randn(2, 1, 101, 64))
    with pytest.raises(ValueError, match="Batch size mismatch: `input_features` has 2 clips but `input_ids` has 1"):
        model.generate(input_features=inputs["input_features"], input_ids=inputs["input_ids"][:1])
    with pytest.raises(ValueError, match="`labels` has 3 rows"):
        model(input_features=inputs["input_features"], labels=torch.ones(3, 4, dtype=torch.long))
