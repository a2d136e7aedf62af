"""
The audio tower against LAION CLAP itself: laion-clap's own HTS-AT (tiny and base, no fusion) with seeded random
weights, saved as a LAION CLAP `.pt` checkpoint, converted by `blap convert-laion-clap`, on the same audio. How the
oracle is installed: see `laion_clap_oracle.py`. A missing oracle fails these tests; it never skips them.
"""

import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForMaskedLM, ClapAudioModel

from transformers_blap import BlapFeatureExtractor
from transformers_blap.cli import main as blap_main
from transformers_blap.conversion import ConversionError, stage1_from_pretrained_parts

from laion_clap_oracle import htsat_audio_cfg, laion_clap_checkpoint, random_laion_htsat

ATOL = 1e-4  # audio embedding and fine-grained tokens
DB_ATOL = 1e-3  # log-mel, in dB


@pytest.fixture(scope="module")
def waveforms(fixture_dir) -> torch.Tensor:
    """Two 10 s, 48 kHz clips: the fixture's first clip, and its second with the first 2 s silent (-100 dB floor)."""
    clips = [torch.from_numpy(sf.read(fixture_dir / "audio" / f"clip{i}.wav", dtype="float32")[0]) for i in (0, 1)]
    clips[1][:96_000] = 0.0
    return torch.stack(clips)


@pytest.fixture(scope="module", params=["tiny", "base"])
def oracle(request, waveforms, tmp_path_factory):
    """laion-clap's HTS-AT, its `.pt` checkpoint, the `blap convert-laion-clap` output, and laion-clap's outputs."""
    variant = request.param
    try:
        laion = random_laion_htsat(variant, seed=0)
    except ImportError as error:
        pytest.fail(str(error))
    folder = tmp_path_factory.mktemp(f"laion-{variant}")
    checkpoint = folder / f"random-htsat-{variant}.pt"
    torch.save(laion_clap_checkpoint(laion, htsat_audio_cfg(variant).joint_embed_dim), checkpoint)
    assert blap_main(["convert-laion-clap", str(checkpoint), str(folder / "converted"), "--variant", variant]) == 0
    with torch.no_grad():
        outputs = laion({"waveform": waveforms})
        log_mel = laion.logmel_extractor(laion.spectrogram_extractor(waveforms))
    batch, frames, width = outputs["fine_grained_embedding"].shape
    # BLAP's audio tokens: the fine-grained embedding (each of the 32 time steps repeated 32 times) pooled per step.
    tokens = outputs["fine_grained_embedding"].reshape(batch, 32, frames // 32, width).mean(dim=2)
    return {
        "variant": variant,
        "checkpoint": checkpoint,
        "converted": folder / "converted",
        "embedding": outputs["embedding"],
        "tokens": tokens,
        "log_mel": log_mel,
    }


@pytest.fixture(scope="module")
def input_features(waveforms) -> torch.Tensor:
    return BlapFeatureExtractor()(list(waveforms.numpy()), sampling_rate=48_000, return_tensors="pt")["input_features"]


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_feature_extractor_equals_laion_clap_front_end(oracle, input_features):
    # laion-clap's torchlibrosa STFT + log-mel inside HTS-AT, before its BatchNorm: (batch, 1, 1001, 64) in dB.
    assert input_features.shape == oracle["log_mel"].shape == (2, 1, 1001, 64)
    assert max_abs(input_features, oracle["log_mel"]) < DB_ATOL
    assert oracle["log_mel"][1, 0, :150].min().item() == pytest.approx(-100.0)  # silence meets the floor on both sides


def test_converted_audio_tower_equals_laion_clap(oracle, input_features):
    model = ClapAudioModel.from_pretrained(oracle["converted"]).eval()
    widths = {"tiny": (96, 768), "base": (128, 1024)}[oracle["variant"]]
    assert (model.config.patch_embeds_hidden_size, model.config.hidden_size) == widths
    assert not model.config.enable_fusion
    with torch.no_grad():
        outputs = model(input_features=input_features)
    tokens = outputs.last_hidden_state.mean(dim=2).transpose(1, 2)
    assert outputs.pooler_output.shape == oracle["embedding"].shape
    assert max_abs(outputs.pooler_output, oracle["embedding"]) < ATOL
    assert tokens.shape == oracle["tokens"].shape == (2, 32, widths[1])
    assert max_abs(tokens, oracle["tokens"]) < ATOL


@pytest.mark.parametrize("oracle", ["tiny"], indirect=True)
def test_stage1_from_a_laion_clap_checkpoint(oracle, input_features, fixture_dir):
    """`stage1_from_pretrained_parts` takes the `.pt` itself: the audio tower of the converted folder, same tokens."""
    bert = BertForMaskedLM(BertConfig.from_pretrained(fixture_dir / "bert-base-uncased")).eval()
    model = stage1_from_pretrained_parts(oracle["checkpoint"], bert, num_query_tokens=4)
    converted = ClapAudioModel.from_pretrained(oracle["converted"])
    assert model.config.audio_config.patch_embeds_hidden_size == 96 and model.config.num_query_tokens == 4
    for name, tensor in converted.state_dict().items():
        torch.testing.assert_close(model.audio_encoder.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    with torch.no_grad():
        model.audio_layernorm.weight.normal_(1.0, 0.1)
        model.audio_layernorm.bias.normal_(0.0, 0.1)
        audio_embeds = model.get_audio_features(input_features)
    layernorm = model.audio_layernorm
    expected = F.layer_norm(oracle["tokens"], (768,), layernorm.weight, layernorm.bias, layernorm.eps)
    assert max_abs(audio_embeds, expected.detach()) < ATOL


def test_laion_clap_checkpoints_load_weights_only(tmp_path, fixture_dir):
    bert = BertForMaskedLM(BertConfig.from_pretrained(fixture_dir / "bert-base-uncased"))
    unsafe = tmp_path / "pickled.pt"
    torch.save({"state_dict": {"module.audio_branch.bn0.weight": torch.ones(64)}, "args": tmp_path}, unsafe)
    with pytest.raises(
        ConversionError, match=r"(?s)Cannot read the LAION CLAP checkpoint .*Unsupported global.*allow_pickle"
    ):
        stage1_from_pretrained_parts(unsafe, bert)
