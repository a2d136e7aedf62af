import json

import pytest
from transformers import AutoConfig, Blip2QFormerConfig, ClapAudioConfig, GPT2Config, T5Config

from transformers_blap import BlapConfig

from tiny import TINY_AUDIO, TINY_QFORMER, TINY_TEXT, tiny_config


def test_defaults_are_htsat_tiny_bert_base_flan_t5_xl():
    config = BlapConfig()
    assert config.model_type == "blap"
    assert isinstance(config.audio_config, ClapAudioConfig)
    assert config.audio_config.depths == [2, 2, 6, 2] and config.audio_config.hidden_size == 768
    assert config.audio_config.enable_fusion is False
    assert isinstance(config.qformer_config, Blip2QFormerConfig)
    assert (config.qformer_config.hidden_size, config.qformer_config.num_hidden_layers) == (768, 12)
    assert config.qformer_config.cross_attention_frequency == 2
    assert config.qformer_config.encoder_hidden_size == config.audio_config.hidden_size
    assert isinstance(config.text_config, T5Config)
    assert config.text_config.d_model == 2048 and config.text_config.num_layers == 24
    assert config.text_config.dense_act_fn == "gelu"
    assert config.text_config.scale_decoder_outputs is False
    assert config.prompt == "Generate an objective music description."


def test_sub_configs_accept_dicts_and_objects():
    from_dicts = tiny_config()
    from_objects = BlapConfig(
        audio_config=ClapAudioConfig(**TINY_AUDIO),
        qformer_config=Blip2QFormerConfig(**TINY_QFORMER),
        text_config=T5Config(**TINY_TEXT),
        num_query_tokens=4,
        embed_dim=8,
    )
    assert from_dicts.to_dict() == from_objects.to_dict()
    assert from_dicts.qformer_config.encoder_hidden_size == TINY_AUDIO["hidden_size"]


def test_dict_and_disk_round_trip_exactly(tmp_path):
    config = tiny_config(prompt="Describe the music.", max_txt_len=48)
    as_dict = config.to_dict()
    assert BlapConfig.from_dict(as_dict).to_dict() == as_dict
    config.save_pretrained(tmp_path)
    reloaded = BlapConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == as_dict
    # The exact-GELU and untied-head settings survive the T5Config round trip.
    assert reloaded.text_config.dense_act_fn == "gelu"
    assert reloaded.text_config.scale_decoder_outputs is False
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "blap" and saved["prompt"] == "Describe the music."


def test_auto_config_resolves_blap(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), BlapConfig)
    assert isinstance(AutoConfig.for_model("blap"), BlapConfig)


def test_rejects_fusion_and_non_t5_language_models():
    with pytest.raises(ValueError, match="enable_fusion"):
        BlapConfig(audio_config={**TINY_AUDIO, "enable_fusion": True})
    with pytest.raises(ValueError, match="T5"):
        BlapConfig(text_config=GPT2Config())
