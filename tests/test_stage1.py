"""Stage 1: BlapForRepresentationLearning (ATC + ATM + LM), its attention patterns and its hand-over to stage 2."""

import logging

import pytest
import torch
import torch.nn.functional as F
from transformers import logging as hf_logging

from transformers_blap import BlapForConditionalGeneration, BlapForRepresentationLearning
from transformers_blap.conversion import stage1_from_pretrained_parts

from tiny import tiny_stage1_config

CLS, SEP, PAD = 101, 102, 0


def _model(seed: int = 0, **overrides) -> BlapForRepresentationLearning:
    torch.manual_seed(seed)
    return BlapForRepresentationLearning(tiny_stage1_config(**overrides)).eval()


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Three clips' log-mel and three BERT-tokenized captions of different lengths."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.tensor(
        [[CLS, 2000, 2001, 2002, 2003, SEP], [CLS, 2004, SEP, PAD, PAD, PAD], [CLS, 2005, 2006, 2007, SEP, PAD]]
    )
    return {
        "input_features": torch.randn(3, 1, 101, 16, generator=generator),
        "input_ids": input_ids,
        "attention_mask": (input_ids != PAD).long(),
    }


@pytest.fixture(scope="module")
def model() -> BlapForRepresentationLearning:
    return _model()


def test_forward_returns_the_three_losses_and_similarities(model):
    batch = _batch()
    torch.manual_seed(0)
    out = model(**batch, return_loss=True)
    for name in ("loss", "loss_atc", "loss_atm", "loss_lm"):
        assert out[name].ndim == 0 and torch.isfinite(out[name]), name
    torch.testing.assert_close(out.loss, out.loss_atc + out.loss_atm + out.loss_lm)
    config = model.config
    assert out.logits_per_audio.shape == (3, 3) and torch.equal(out.logits_per_text, out.logits_per_audio.t())
    assert out.audio_embeds.shape == (3, config.num_query_tokens, config.embed_dim)
    assert out.text_embeds.shape == (3, config.embed_dim)
    torch.testing.assert_close(out.audio_embeds.norm(dim=-1), torch.ones(3, config.num_query_tokens))
    torch.testing.assert_close(out.text_embeds.norm(dim=-1), torch.ones(3))
    assert out.lm_logits.shape == (3, 6, config.qformer_config.vocab_size)

    # ATC by hand: max over queries of cosine similarities / temperature, label-smoothed CE in both directions.
    sim = torch.einsum("aqd,td->atq", out.audio_embeds, out.text_embeds).amax(-1) / model.temperature
    torch.testing.assert_close(out.logits_per_audio, sim)
    expected_atc = (
        F.cross_entropy(sim, torch.arange(3), label_smoothing=0.1)
        + F.cross_entropy(sim.t(), torch.arange(3), label_smoothing=0.1)
    ) / 2
    torch.testing.assert_close(out.loss_atc, expected_atc)

    # LM by hand: next-token CE (label smoothing 0.1) over the non-padding tokens after [DEC].
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)[:, 1:]
    expected_lm = F.cross_entropy(
        out.lm_logits[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=-100, label_smoothing=0.1
    )
    torch.testing.assert_close(out.loss_lm, expected_lm)
    # Without return_loss: no losses, same similarities; a tuple when asked.
    plain = model(**batch)
    assert plain.loss is None and plain.lm_logits is None
    torch.testing.assert_close(plain.logits_per_audio, out.logits_per_audio)
    assert isinstance(model(**batch, return_dict=False), tuple)


def test_backward_reaches_every_parameter_and_loss_decreases():
    model = _model()
    model.set_stage1_trainable()
    batch = _batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(4):
        torch.manual_seed(step)
        loss = model(**batch, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            missing = [name for name, param in model.named_parameters() if param.grad is None]
            assert missing == []
            assert model.lm_head.decoder.weight is model.text_embeddings.word_embeddings.weight
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_a_query_never_sees_text_and_text_never_sees_later_text(model):
    batch = _batch()
    audio_embeds = model.get_audio_features(batch["input_features"])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    changed = ids.clone()
    changed[0, 3:5] = torch.tensor([3000, 3001])  # caption 0: tokens 3 and 4 replaced
    with torch.no_grad():
        queries, text = model._audio_text_pass(audio_embeds, ids, mask, causal=True)
        queries_changed, text_changed = model._audio_text_pass(audio_embeds, changed, mask, causal=True)
        matching_queries, _ = model._audio_text_pass(audio_embeds, ids, mask, causal=False)
        matching_changed, _ = model._audio_text_pass(audio_embeds, changed, mask, causal=False)
    # Caption generation: queries are blind to the text; text positions 0..2 are blind to tokens 3, 4.
    torch.testing.assert_close(queries_changed, queries, rtol=0, atol=0)
    torch.testing.assert_close(text_changed[0, :3], text[0, :3], rtol=0, atol=0)
    assert not torch.allclose(text_changed[0, 3:], text[0, 3:])
    torch.testing.assert_close(text_changed[1:], text[1:], rtol=0, atol=0)
    # Matching is bidirectional: there the queries do see the text (so the check above can fail).
    assert not torch.allclose(matching_changed[0], matching_queries[0])
    # The caption tokens' predictions also ignore what comes later.
    with torch.no_grad():
        lm = model.lm_head(text)
        lm_changed = model.lm_head(text_changed)
    torch.testing.assert_close(lm_changed[0, :3], lm[0, :3], rtol=0, atol=0)


def test_attention_mask_patterns():
    text_mask = torch.tensor([[1, 1, 1, 0]])
    causal = BlapForRepresentationLearning.audio_text_attention_mask(text_mask, 2, causal=True, dtype=torch.float32)
    matching = BlapForRepresentationLearning.audio_text_attention_mask(text_mask, 2, causal=False, dtype=torch.float32)
    allowed_causal = (causal[0, 0] == 0).int().tolist()
    allowed_matching = (matching[0, 0] == 0).int().tolist()
    # rows: 2 queries, then 4 text positions (the last is padding); columns: the keys.
    assert allowed_causal == [
        [1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 0],
    ]
    assert allowed_matching == [[1, 1, 1, 1, 1, 0]] * 6
    assert causal.shape == (1, 1, 6, 6) and causal.dtype == torch.float32
    assert causal.min() == torch.finfo(torch.float32).min  # additive, not boolean


def test_in_contrastive_learning_text_and_audio_never_meet(model):
    batch = _batch()
    other_audio = dict(batch, input_features=_batch(seed=1)["input_features"])
    other_text = dict(batch, input_ids=batch["input_ids"].clone())
    other_text["input_ids"][:, 1] = 3000
    with torch.no_grad():
        out = model(**batch)
        with_other_audio = model(**other_audio)
        with_other_text = model(**other_text)
    torch.testing.assert_close(with_other_audio.text_embeds, out.text_embeds, rtol=0, atol=0)
    assert not torch.allclose(with_other_audio.audio_embeds, out.audio_embeds)
    torch.testing.assert_close(with_other_text.audio_embeds, out.audio_embeds, rtol=0, atol=0)
    assert not torch.allclose(with_other_text.text_embeds, out.text_embeds)
    # The public embedding methods give the same vectors as forward.
    with torch.no_grad():
        torch.testing.assert_close(model.get_audio_embeddings(batch["input_features"]), out.audio_embeds)
        torch.testing.assert_close(
            model.get_text_embeddings(batch["input_ids"], batch["attention_mask"]), out.text_embeds
        )


def test_text_padding_does_not_change_embeddings_or_losses(model):
    batch = _batch()
    padded = dict(batch)
    padded["input_ids"] = F.pad(batch["input_ids"], (0, 3), value=PAD)
    padded["attention_mask"] = F.pad(batch["attention_mask"], (0, 3), value=0)
    with torch.no_grad():
        torch.manual_seed(0)
        out = model(**batch, return_loss=True)
        torch.manual_seed(0)
        out_padded = model(**padded, return_loss=True)
    torch.testing.assert_close(out_padded.text_embeds, out.text_embeds)
    for name in ("loss_atc", "loss_atm", "loss_lm"):
        torch.testing.assert_close(out_padded[name], out[name])


def test_hard_negatives_exclude_the_own_pair(monkeypatch, model):
    drawn = []
    original = torch.multinomial

    def spy(weights, num_samples, *args, **kwargs):
        drawn.append(weights.clone())
        return original(weights, num_samples, *args, **kwargs)

    monkeypatch.setattr(torch, "multinomial", spy)
    with torch.no_grad():
        model(**_batch(), return_loss=True)
    assert len(drawn) == 2
    for weights in drawn:
        assert weights.shape == (3, 3)
        assert torch.all(weights.diagonal() == 0)
        torch.testing.assert_close(weights.sum(1), torch.ones(3))


def test_gradient_checkpointing_gives_the_same_gradients():
    config_kwargs = {
        "qformer_config": {
            "hidden_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "vocab_size": 30523,
        }
    }
    grads = []
    for checkpointing in (False, True):
        model = _model(**config_kwargs)
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.qformer.encoder.layer[0].gradient_checkpointing
        model.train()
        torch.manual_seed(0)
        model(**_batch(), return_loss=True).loss.backward()
        grads.append({name: param.grad.clone() for name, param in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def test_freezing_the_audio_encoder():
    model = _model()
    trainable = model.set_stage1_trainable(train_audio_encoder=False)
    assert trainable and not any(name.startswith("audio_encoder.") for name in trainable)
    assert "audio_layernorm.weight" in trainable and "temperature" in trainable
    model.train()
    assert model.qformer.training and not model.audio_encoder.training
    assert model.set_stage1_trainable() == [name for name, _ in model.named_parameters()]
    model.train()
    assert model.audio_encoder.training


def test_bad_inputs_raise_clear_errors(model):
    batch = _batch()
    with pytest.raises(ValueError, match="one caption per clip"):
        model(batch["input_features"][:2], batch["input_ids"], batch["attention_mask"], return_loss=True)
    with pytest.raises(ValueError, match="at least 2 audio-caption pairs"):
        model(batch["input_features"][:1], batch["input_ids"][:1], batch["attention_mask"][:1], return_loss=True)
    with pytest.raises(ValueError, match="`input_ids` is required"):
        model(batch["input_features"])
    with pytest.raises(ValueError, match="`attention_mask` has shape"):
        model.get_text_embeddings(batch["input_ids"], batch["attention_mask"][:, :2])
    with pytest.raises(ValueError, match="positions"):
        model.get_text_embeddings(torch.full((1, 600), 2000))
    with pytest.raises(ValueError, match="qformer_dec_token_id"):
        BlapForRepresentationLearning(tiny_stage1_config(qformer_dec_token_id=30523))
    # Zero-shot use: any number of texts per clip, without losses.
    out = model(batch["input_features"][:1], batch["input_ids"], batch["attention_mask"])
    assert out.logits_per_audio.shape == (1, 3)


def test_stage1_checkpoint_initialises_stage2_cleanly(tmp_path, caplog):
    stage1 = _model(seed=3)
    stage1.save_pretrained(tmp_path)
    saved_keys = set(__import__("safetensors").safe_open(tmp_path / "model.safetensors", "pt").keys())
    assert not any(key.startswith(("language_model.", "language_projection.")) for key in saved_keys)
    assert any(".intermediate.dense." in key for key in saved_keys)  # the text FFN travels in the stage-1 file

    assert not any("position_ids" in key for key in saved_keys)  # Blip-2's text embeddings: a non-persistent buffer

    reloaded = BlapForRepresentationLearning.from_pretrained(tmp_path)
    for name, tensor in stage1.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    assert reloaded.lm_head.decoder.weight is reloaded.text_embeddings.word_embeddings.weight
    # Loading builds the model on the meta device: the position ids are filled in again, and the text embeds alike.
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded.get_text_embeddings(batch["input_ids"], batch["attention_mask"]),
            stage1.get_text_embeddings(batch["input_ids"], batch["attention_mask"]),
            rtol=0,
            atol=0,
        )

    hf_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            stage2 = BlapForConditionalGeneration.from_pretrained(tmp_path)
    finally:
        hf_logging.disable_propagation()
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "language_projection.weight" in messages  # the load report was captured: new T5 + projection ...
    assert "UNEXPECTED" not in messages.upper() and "text_embeddings" not in messages and "atm_head" not in messages
    assert not hasattr(stage2.qformer.encoder.layer[0], "intermediate")  # no text FFN in stage 2
    assert stage2.config.qformer_config.use_qformer_text_input is False
    shared = ("audio_encoder.", "audio_layernorm.", "query_tokens", "qformer.")
    stage1_state = stage1.state_dict()
    stage2_state = stage2.state_dict()
    compared = 0
    for name, tensor in stage2_state.items():
        if name.startswith(shared):
            torch.testing.assert_close(tensor, stage1_state[name], rtol=0, atol=0, msg=name)
            compared += 1
    assert compared == sum(name.startswith(shared) for name in stage2_state) > 50
    # The language model and its projection are newly initialised (and the T5 head stays untied).
    assert stage2.language_model.lm_head.weight is not stage2.language_model.shared.weight
    assert stage2.language_projection.weight.std() > 0


# ---------------------------------------------------------------------------------------------- training


def _no_dropout_config(**overrides):
    """Deterministic training steps: no dropout anywhere (batches of 2 pairs also fix the hard negatives)."""
    from tiny import TINY_AUDIO, TINY_QFORMER

    return tiny_stage1_config(
        audio_config={**TINY_AUDIO, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
        qformer_config={
            **TINY_QFORMER,
            "vocab_size": 30523,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
        },
        projection_dropout=0.0,
        **overrides,
    )


@pytest.fixture(scope="module")
def stage1_processor(fixture_dir):
    from transformers_blap import BlapStage1Processor, build_qformer_tokenizer

    from tiny import tiny_feature_extractor

    return BlapStage1Processor(tiny_feature_extractor(), build_qformer_tokenizer(fixture_dir / "bert-base-uncased"))


def _rows(n: int = 4) -> list[dict]:
    """Dataset rows: 1 s clips at 16 kHz; pairs repeat with period 2 (A, B, A, B, ...)."""
    generator = torch.Generator().manual_seed(0)
    clips = [(0.2 * torch.randn(16_000, generator=generator)).numpy() for _ in range(2)]
    captions = [["calm solo piano", "a quiet piano piece"], "loud distorted guitars and drums"]
    return [{"audio": clips[i % 2], "caption": captions[i % 2]} for i in range(n)]


def _trainer(tmp_path, model, processor, rows, **args):
    from transformers_blap.training.stage1 import BlapStage1Collator, BlapStage1Trainer, BlapStage1TrainingArguments

    defaults = {
        "output_dir": str(tmp_path),
        "per_device_train_batch_size": 2,
        "per_device_eval_batch_size": 2,
        "train_sampling_strategy": "sequential",
        "max_steps": 1,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "seed": 0,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }
    defaults.update(args)
    return BlapStage1Trainer(
        model=model,
        args=BlapStage1TrainingArguments(**defaults),
        train_dataset=rows,
        eval_dataset=rows,
        data_collator=BlapStage1Collator(processor, training=False, caption_column="caption"),
        processing_class=processor,
    )


def test_collator_decodes_audio_and_picks_captions(stage1_processor, tmp_path):
    import numpy as np
    import soundfile

    from transformers_blap.training import FirstWordDropping
    from transformers_blap.training.stage1 import BlapStage1Collator

    stereo_48k = np.stack([np.linspace(-0.5, 0.5, 48_000), np.zeros(48_000)]).astype(np.float32)
    soundfile.write(tmp_path / "clip.wav", stereo_48k.T, 48_000, subtype="FLOAT")
    collator = BlapStage1Collator(stage1_processor, training=False, caption_column="caption")
    sources = [
        str(tmp_path / "clip.wav"),  # a path, 48 kHz stereo
        {"array": stereo_48k, "sampling_rate": 48_000},  # a decoded datasets Audio value
        {"bytes": (tmp_path / "clip.wav").read_bytes(), "path": None},  # datasets Audio(decode=False)
    ]
    features = collator([{"audio": source, "caption": "x"} for source in sources])["input_features"]
    torch.testing.assert_close(features[1], features[0], atol=1e-2, rtol=0)  # log-mel dB; blockwise resampling
    torch.testing.assert_close(features[2], features[0], atol=1e-5, rtol=0)
    at_rate = collator([{"audio": np.zeros(16_000, np.float32) + 0.1, "caption": "x"}])["input_features"]
    assert at_rate.shape == (1, 1, 101, 16)  # an array is taken at the feature extractor's rate (16 kHz here)
    with pytest.raises(ValueError):
        collator([{"audio": str(tmp_path / "missing.wav"), "caption": "x"}])

    assert FirstWordDropping(["Upbeat"], 1.0)("Upbeat pop song") == "pop song"
    assert FirstWordDropping(["Upbeat"], 0.0)("Upbeat pop song") == "Upbeat pop song"
    assert FirstWordDropping(["Upbeat"], 1.0)("A pop song") == "A pop song"

    rows = [{"audio": str(tmp_path / "clip.wav"), "caption": ["Upbeat pop song", "Upbeat rock"]}]
    collator = BlapStage1Collator(
        stage1_processor, caption_augmentation=FirstWordDropping(["Upbeat"], 1.0), caption_column="caption"
    )
    batch = collator(rows * 2)
    assert set(batch) == {"input_features", "input_ids", "attention_mask"}
    assert batch["input_features"].shape == (2, 1, 101, 16)
    decoded = stage1_processor.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
    assert all(text in ("pop song", "rock") for text in decoded)
    evaluation = collator.for_evaluation()(rows)
    assert stage1_processor.tokenizer.decode(evaluation["input_ids"][0], skip_special_tokens=True) == "upbeat pop song"
    with pytest.raises(KeyError, match="remove_unused_columns=False"):
        collator([{"caption": "x"}])
    with pytest.raises(ValueError, match="no non-empty caption"):
        collator([{"audio": str(tmp_path / "clip.wav"), "caption": []}])


def test_spec_augment_masks_stripes():
    from transformers_blap.training.stage1 import spec_augment

    log_mel = torch.randn(3, 1, 100, 16) + 5
    masked = spec_augment(log_mel, time_stripes=2, time_width=30, freq_stripes=2, freq_width=6)
    changed = log_mel.ne(masked)
    assert masked.shape == log_mel.shape and changed.any() and torch.all(masked[changed] == 0)
    zeros = masked.eq(0)
    assert zeros.any()
    # Masked cells form whole frames or whole bins.
    for clip in zeros[:, 0]:
        frames = clip.all(dim=1)
        bins = clip.all(dim=0)
        assert torch.equal(clip, frames[:, None] | bins[None, :])
    assert torch.equal(spec_augment(log_mel, 0, 64, 0, 8), log_mel)


def test_trainer_logs_three_losses_and_divides_by_accumulation(stage1_processor, tmp_path):
    from transformers_blap.training.stage1 import BlapStage1Collator

    torch.manual_seed(0)
    model = BlapForRepresentationLearning(_no_dropout_config())
    reference = BlapForRepresentationLearning(_no_dropout_config())
    reference.load_state_dict(model.state_dict())
    rows = _rows(4)  # two identical micro-batches (A, B)
    trainer = _trainer(
        tmp_path,
        model,
        stage1_processor,
        rows,
        gradient_accumulation_steps=2,
        optim="sgd",
        learning_rate=0.1,
        max_grad_norm=0.0,
        lr_scheduler_type="constant",
    )
    trainer.train()
    logged = next(entry for entry in trainer.state.log_history if "loss_atc" in entry)
    assert {"loss", "loss_atc", "loss_atm", "loss_lm"} <= set(logged)
    assert abs(logged["loss"] - (logged["loss_atc"] + logged["loss_atm"] + logged["loss_lm"])) < 1e-3

    # One SGD step on the mean of two equal micro-batch losses = one step on one micro-batch's loss.
    reference.train()
    batch = BlapStage1Collator(stage1_processor, training=False, caption_column="caption")(rows[:2])
    out = reference(**batch, return_loss=True)
    out.loss.backward()
    assert abs(logged["loss"] - out.loss.item()) < 1e-4
    for (name, param), (_, before) in zip(model.named_parameters(), reference.named_parameters()):
        expected = before.detach() - 0.1 * before.grad
        torch.testing.assert_close(param.detach(), expected, rtol=1e-4, atol=1e-6, msg=name)

    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_loss_atc", "eval_loss_atm", "eval_loss_lm"} <= set(metrics)
    assert (
        abs(metrics["eval_loss"] - (metrics["eval_loss_atc"] + metrics["eval_loss_atm"] + metrics["eval_loss_lm"]))
        < 1e-3
    )


def test_trainer_freezes_the_audio_encoder_on_request(stage1_processor, tmp_path):
    torch.manual_seed(0)
    model = BlapForRepresentationLearning(_no_dropout_config())
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    trainer = _trainer(tmp_path, model, stage1_processor, _rows(2), train_audio_encoder=False)
    trainer.train()
    after = model.state_dict()
    for name, tensor in before.items():
        if name.startswith("audio_encoder."):  # weights and BatchNorm statistics alike
            assert torch.equal(after[name], tensor), name
    assert not torch.equal(after["query_tokens"], before["query_tokens"])
    assert not torch.equal(after["audio_layernorm.weight"], before["audio_layernorm.weight"])


def test_trainer_keeps_the_language_model_special_tokens(stage1_processor, tmp_path):
    """The stage-1 tokenizer is the Q-Former's: its `[DEC]` bos id must not become the T5 config's (stage 2's)."""
    torch.manual_seed(0)
    model = BlapForRepresentationLearning(_no_dropout_config())
    names = ("pad_token_id", "bos_token_id", "eos_token_id")
    before = [getattr(model.config.text_config, name, None) for name in names]
    assert stage1_processor.tokenizer.bos_token_id not in before
    trainer = _trainer(tmp_path, model, stage1_processor, _rows(2))
    trainer.train()
    trainer.save_model(tmp_path / "saved")
    for config in (model.config, BlapForRepresentationLearning.from_pretrained(tmp_path / "saved").config):
        assert [getattr(config.text_config, name, None) for name in names] == before


def test_trainer_spec_augment_applies_in_training_only(stage1_processor, tmp_path):
    from transformers_blap.training.stage1 import BlapStage1Collator

    torch.manual_seed(0)
    model = BlapForRepresentationLearning(_no_dropout_config())
    trainer = _trainer(
        tmp_path,
        model,
        stage1_processor,
        _rows(2),
        spec_augment=True,
        spec_augment_time_width=80,
        spec_augment_freq_width=12,
    )
    batch = BlapStage1Collator(stage1_processor, training=False, caption_column="caption")(_rows(2))
    model.eval()
    plain = trainer.compute_loss(model, batch).item()
    assert trainer.compute_loss(model, batch).item() == plain  # eval: no masking
    model.train()
    torch.manual_seed(1)
    augmented = trainer.compute_loss(model, batch).item()
    assert augmented != plain
    assert not model.audio_encoder.audio_encoder.batch_norm._forward_hooks  # the hook is gone afterwards


def test_trainer_bf16_gradient_checkpointing_and_resume(stage1_processor, tmp_path):
    rows = _rows(6)

    def run(output_dir, **args):
        torch.manual_seed(0)
        model = BlapForRepresentationLearning(_no_dropout_config())
        trainer = _trainer(output_dir, model, stage1_processor, rows, **args)
        return model, trainer

    model, trainer = run(tmp_path / "bf16", bf16=True, activation_checkpointing=True, max_steps=2)
    trainer.train()
    assert model.is_activation_checkpointing
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in trainer.state.log_history if "loss" in entry)

    straight, trainer = run(tmp_path / "straight", max_steps=3)
    trainer.train()
    _, trainer = run(tmp_path / "resumed", max_steps=3, save_strategy="steps", save_steps=1)
    trainer.train()
    checkpoint = tmp_path / "resumed" / "checkpoint-1"
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "tokenizer_config.json").is_file()
    resumed, trainer = run(tmp_path / "resumed", max_steps=3)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_trainer_push_to_hub_uploads_a_complete_stage1_folder(stage1_processor, tmp_path, monkeypatch):
    import transformers.trainer

    uploads = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            uploads.append(
                {
                    "repo_id": repo_id,
                    "files": sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir()),
                }
            )
            return type("Commit", (), {"oid": "0" * 40, "commit_url": "", "pr_url": None})()

        def whoami(self, *args, **kwargs):
            return {"name": "user"}

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: FakeApi())
    torch.manual_seed(0)
    model = BlapForRepresentationLearning(_no_dropout_config())
    trainer = _trainer(tmp_path, model, stage1_processor, _rows(2), push_to_hub=True, hub_model_id="user/blap-stage1")
    trainer.train()
    trainer.push_to_hub(blocking=True)
    assert uploads and uploads[-1]["repo_id"] == "user/blap-stage1"
    files = set(uploads[-1]["files"])
    assert {"model.safetensors", "config.json", "tokenizer_config.json", "processor_config.json"} <= files


# ---------------------------------------------------------------------------------------------- pretrained parts


def _tiny_clap_model():
    from transformers import ClapConfig, ClapModel

    from tiny import TINY_AUDIO

    text = {
        "vocab_size": 100,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "projection_dim": 8,
    }
    torch.manual_seed(5)
    return ClapModel(ClapConfig(audio_config=TINY_AUDIO, text_config=text, projection_dim=8))


def test_stage1_from_pretrained_parts_clap_bert_t5(fixture_dir, tmp_path):
    from transformers import BertForMaskedLM

    from transformers_blap import build_qformer_tokenizer

    clap = _tiny_clap_model()
    clap.save_pretrained(tmp_path / "clap")
    bert_dir = fixture_dir / "bert-base-uncased"
    model = stage1_from_pretrained_parts(
        tmp_path / "clap", bert_dir, fixture_dir / "flan-t5-tiny", num_query_tokens=4, embed_dim=8
    )
    bert = BertForMaskedLM.from_pretrained(bert_dir, dtype=torch.float32)
    config = model.config
    # Configuration from the parts: BERT's sizes plus [DEC], the T5 with exact GELU.
    assert config.qformer_config.hidden_size == 128 and config.qformer_config.num_hidden_layers == 4
    assert config.qformer_config.vocab_size == 30523 and config.qformer_config.cross_attention_frequency == 2
    assert config.qformer_dec_token_id == build_qformer_tokenizer(bert_dir).bos_token_id
    assert config.text_config.d_model == 64 and config.text_config.dense_act_fn == "gelu"
    assert not hasattr(model, "language_model")
    # Audio encoder: CLAP's audio tower, exactly.
    for name, tensor in clap.audio_model.state_dict().items():
        torch.testing.assert_close(model.audio_encoder.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    # Q-Former: BERT's embeddings, attention and FFN; query FFN copied from the text FFN; cross-attention fresh.
    bert_state = bert.state_dict()
    qformer = model.qformer.encoder.layer
    for i in range(4):
        for module in ("intermediate", "intermediate_query"):
            torch.testing.assert_close(
                getattr(qformer[i], module).dense.weight,
                bert_state[f"bert.encoder.layer.{i}.intermediate.dense.weight"],
            )
        for module in ("output", "output_query"):
            torch.testing.assert_close(
                getattr(qformer[i], module).LayerNorm.bias, bert_state[f"bert.encoder.layer.{i}.output.LayerNorm.bias"]
            )
        torch.testing.assert_close(
            qformer[i].attention.attention.key.weight, bert_state[f"bert.encoder.layer.{i}.attention.self.key.weight"]
        )
        assert hasattr(qformer[i], "crossattention") == (i % 2 == 0)
    assert qformer[0].crossattention.attention.key.weight.shape == (128, 16)  # attends to the audio tokens
    words = model.text_embeddings.word_embeddings.weight
    torch.testing.assert_close(words[:30522], bert_state["bert.embeddings.word_embeddings.weight"])
    assert not torch.equal(words[30522], torch.zeros(128))
    torch.testing.assert_close(model.qformer.layernorm.weight, bert_state["bert.embeddings.LayerNorm.weight"])
    torch.testing.assert_close(model.lm_head.dense.weight, bert_state["cls.predictions.transform.dense.weight"])
    torch.testing.assert_close(model.lm_head.decoder.bias[:30522], bert_state["cls.predictions.bias"])
    assert model.lm_head.decoder.weight is words

    # It trains, and a stage-1 save carries no language model.
    batch = _batch()
    model(**batch, return_loss=True).loss.backward()
    model.save_pretrained(tmp_path / "stage1")
    assert (tmp_path / "stage1" / "model.safetensors").stat().st_size < 30e6
    reloaded = BlapForRepresentationLearning.from_pretrained(tmp_path / "stage1")
    torch.testing.assert_close(reloaded.qformer.layernorm.weight, model.qformer.layernorm.weight)

    # Loaded parts work as well as paths; bad parts are named.
    from_models = stage1_from_pretrained_parts(clap.audio_model, bert.bert, num_query_tokens=4)
    torch.testing.assert_close(
        from_models.text_embeddings.position_embeddings.weight, model.text_embeddings.position_embeddings.weight
    )
    assert from_models.config.text_config.d_model == 2048  # Flan-T5-XL by default
    with pytest.raises(ValueError, match="not a CLAP checkpoint"):
        stage1_from_pretrained_parts(bert_dir, bert_dir)
    with pytest.raises(TypeError, match="BERT"):
        stage1_from_pretrained_parts(clap, clap)


# ---------------------------------------------------------------------------------------------- script


def _script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "train_stage1.py"
    spec = importlib.util.spec_from_file_location("train_stage1", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_clips(folder, n: int = 4) -> list:
    import numpy as np
    import soundfile

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        paths.append(folder / f"clip{i}.wav")
        soundfile.write(paths[-1], (0.2 * rng.standard_normal(16_000)).astype(np.float32), 16_000)
    return paths


def test_caption_reader_merges_pairs_reads_metadata_and_sidecar_folders(tmp_path):
    import json

    from transformers_blap.training import load_caption_dataset

    paths = [str(path) for path in _write_clips(tmp_path / "audio", 2)]
    (tmp_path / "pairs.csv").write_text(
        "audio,caption\naudio/clip0.wav,calm piano\naudio/clip1.wav,loud drums\naudio/clip0.wav,soft keys\n"
    )
    assert load_caption_dataset(str(tmp_path / "pairs.csv")).to_dict() == {
        "audio": paths,
        "captions": [["calm piano", "soft keys"], ["loud drums"]],
    }
    lines = [
        {"file_name": "audio/clip0.wav", "text": ["calm piano", "soft keys"]},
        {"file_name": "audio/clip1.wav", "text": "loud drums"},
    ]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    assert load_caption_dataset(str(tmp_path), caption_columns=["text"]).to_dict() == {
        "audio": paths,
        "captions": [["calm piano", "soft keys"], ["loud drums"]],
    }
    (tmp_path / "audio" / "clip0.txt").write_text("calm piano\n\nsoft keys\n")
    with pytest.raises(FileNotFoundError, match="clip1.txt"):
        load_caption_dataset(str(tmp_path / "audio"))
    (tmp_path / "audio" / "clip1.txt").write_text("loud drums")
    assert load_caption_dataset(str(tmp_path / "audio"))["captions"][0] == ["calm piano", "soft keys"]
    (tmp_path / "bad.csv").write_text("path,caption\nx.wav,a\n")
    with pytest.raises(ValueError, match="no audio column 'audio'"):
        load_caption_dataset(str(tmp_path / "bad.csv"))


def test_train_stage1_script_from_parts_and_csv(fixture_dir, tmp_path):
    from tiny import tiny_feature_extractor

    _write_clips(tmp_path / "data" / "audio")
    rows = "".join(f"audio/clip{i}.wav,caption number {i}\naudio/clip{i}.wav,another caption {i}\n" for i in range(4))
    (tmp_path / "data" / "pairs.csv").write_text("audio,caption\n" + rows)
    _tiny_clap_model().save_pretrained(tmp_path / "clap")
    tiny_feature_extractor().save_pretrained(tmp_path / "fe")
    out = tmp_path / "out"
    trainer = _script().main(
        [
            "--train_file",
            str(tmp_path / "data" / "pairs.csv"),
            "--eval_fraction",
            "0.5",
            "--audio_encoder",
            str(tmp_path / "clap"),
            "--qformer",
            str(fixture_dir / "bert-base-uncased"),
            "--language_model",
            str(fixture_dir / "flan-t5-tiny"),
            "--feature_extractor",
            str(tmp_path / "fe"),
            "--num_query_tokens",
            "4",
            "--embed_dim",
            "8",
            "--first_word_drop",
            "caption",
            "another",
            "--output_dir",
            str(out),
            "--per_device_train_batch_size",
            "2",
            "--max_steps",
            "1",
            "--logging_steps",
            "1",
            "--use_cpu",
            "--report_to",
            "none",
            "--save_strategy",
            "no",
            "--train_audio_encoder",
            "false",
        ]
    )
    assert trainer.data_collator.preparer.caption_augmentation.words == {"caption", "another"}
    assert any("loss_atc" in entry for entry in trainer.state.log_history)
    assert any("eval_loss_lm" in entry for entry in trainer.state.log_history)
    assert not any(p.requires_grad for p in trainer.model.audio_encoder.parameters())
    model = BlapForRepresentationLearning.from_pretrained(out)
    assert model.config.qformer_config.hidden_size == 128
    from transformers_blap import BlapStage1Processor

    assert BlapStage1Processor.from_pretrained(out).feature_extractor.sampling_rate == 16_000


def test_train_stage1_script_continues_from_a_checkpoint_with_a_datasets_dataset(stage1_processor, tmp_path):
    from datasets import Audio, Dataset

    paths = _write_clips(tmp_path / "audio")
    dataset = Dataset.from_dict({"song": [str(p) for p in paths], "texts": [["a", "b"], ["c"], ["d"], ["e", "f"]]})
    dataset.cast_column("song", Audio()).save_to_disk(tmp_path / "dataset")
    torch.manual_seed(0)
    BlapForRepresentationLearning(_no_dropout_config()).save_pretrained(tmp_path / "start")
    stage1_processor.save_pretrained(tmp_path / "start")
    trainer = _script().main(
        [
            "--train_file",
            str(tmp_path / "dataset"),
            "--audio_column",
            "song",
            "--caption_columns",
            "texts",
            "--model",
            str(tmp_path / "start"),
            "--output_dir",
            str(tmp_path / "out"),
            "--per_device_train_batch_size",
            "2",
            "--max_steps",
            "2",
            "--logging_steps",
            "1",
            "--use_cpu",
            "--report_to",
            "none",
            "--save_strategy",
            "no",
            "--spec_augment",
        ]
    )
    assert trainer.state.global_step == 2 and trainer.args.spec_augment
    assert [entry["loss_lm"] > 0 for entry in trainer.state.log_history if "loss_lm" in entry] == [True, True]
    with pytest.raises(SystemExit, match="^train_stage1.py: error: Pass --train_file"):
        _script().main(["--output_dir", str(tmp_path / "x"), "--use_cpu"])


def test_qformer_text_passes_stay_float32_under_bf16_autocast(model):
    batch = _batch()
    dtypes = []
    linear = model.qformer.encoder.layer[0].attention.attention.query
    hook = linear.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            audio_embeds = model.get_audio_features(batch["input_features"])
            model._text_pass(batch["input_ids"], batch["attention_mask"])
            for causal in (False, True):
                model._audio_text_pass(audio_embeds, batch["input_ids"], batch["attention_mask"], causal=causal)
            assert model.atm_head(torch.ones(1, 16)).dtype == torch.bfloat16  # autocast is on around them
    finally:
        hook.remove()
    assert dtypes == [torch.float32] * 3


# ---------------------------------------------------------------------------------------------- raw LAION CLAP


def _laion_clap_checkpoint(fixture_dir, path) -> dict:
    """
    A raw LAION CLAP `.pt` made from the fixture's HTS-AT (original LAION key names, weights the original code ran):
    `module.`-prefixed keys under `state_dict`, with a text tower, projections and logit scales beside the audio one.
    """
    original = torch.load(fixture_dir / "blap_stage2.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    state = {
        "module." + key[len("audio_encoder.") :]: value
        for key, value in original.items()
        if key.startswith("audio_encoder.")
    }
    state["module.text_branch.embeddings.word_embeddings.weight"] = torch.randn(10, 4)
    state["module.text_projection.0.weight"] = torch.randn(4, 4)
    state["module.logit_scale_a"] = torch.tensor(2.0)
    torch.save({"epoch": 15, "name": "music_audioset", "state_dict": state}, path)
    return original


def test_raw_laion_clap_checkpoint_converts_to_the_audio_encoder_the_original_ran(fixture_dir, tmp_path):
    from safetensors.torch import load_file

    from transformers_blap.conversion.laion_clap import convert_laion_clap_checkpoint, main
    from transformers_blap.conversion.validation import ConversionError

    original = _laion_clap_checkpoint(fixture_dir, tmp_path / "clap.pt")
    audio = convert_laion_clap_checkpoint(tmp_path / "clap.pt", variant="tiny")
    config = audio.config
    assert (config.patch_embeds_hidden_size, config.depths, config.hidden_size) == (96, [2, 2, 6, 2], 768)
    assert config.enable_fusion is False
    # The original's audio tokens: HTS-AT -> mean over frequency -> ln_audio (fixture reference, float32).
    reference = load_file(fixture_dir / "reference_outputs.safetensors")
    with torch.no_grad():
        hidden = audio(input_features=reference["log_mel"]).last_hidden_state.mean(dim=2).transpose(1, 2)
        tokens = torch.nn.functional.layer_norm(
            hidden, (768,), original["ln_audio.weight"].float(), original["ln_audio.bias"].float()
        )
    assert (tokens - reference["audio_embeds"]).abs().max().item() < 1e-5

    # CLI: a ClapAudioModel folder that stage1_from_pretrained_parts takes as the audio encoder.
    assert main([str(tmp_path / "clap.pt"), str(tmp_path / "clap-audio"), "--variant", "tiny"]) == 0
    assert main([str(tmp_path / "clap.pt"), str(tmp_path / "wrong"), "--variant", "base"]) == 2
    assert not (tmp_path / "wrong").exists()
    model = stage1_from_pretrained_parts(
        tmp_path / "clap-audio", fixture_dir / "bert-base-uncased", num_query_tokens=4
    )
    for name, tensor in audio.state_dict().items():
        torch.testing.assert_close(model.audio_encoder.state_dict()[name], tensor, rtol=0, atol=0, msg=name)

    with pytest.raises(ConversionError, match="'base'"):
        convert_laion_clap_checkpoint(tmp_path / "clap.pt", variant="base")
    torch.save({"state_dict": {"module.text_branch.x": torch.zeros(1)}}, tmp_path / "text_only.pt")
    with pytest.raises(ConversionError, match="audio_branch"):
        convert_laion_clap_checkpoint(tmp_path / "text_only.pt")
    (tmp_path / "not_a_checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(ConversionError, match="Cannot read the LAION CLAP checkpoint"):
        convert_laion_clap_checkpoint(tmp_path / "not_a_checkpoint.pt")
