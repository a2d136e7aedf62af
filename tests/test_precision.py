"""`dtype="auto"`: bf16 where the device computes it natively, float32 elsewhere; the Q-Former stays float32."""

import pytest
import torch
from transformers import pipeline

from transformers_blap import AudioToTextPipeline, precision, resolve_dtype
from transformers_blap.captioning import read_records
from transformers_blap.cli import main

from blap_testing import save_tiny_blap, tone, write_audio

AMD_EPYC_AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
INTEL_AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n"
AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nbugs\t\t: avx512_bf16_none\n"


@pytest.fixture
def cpuinfo(monkeypatch, tmp_path):
    """Replace /proc/cpuinfo by a file with the given text."""

    def install(text: str) -> None:
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        monkeypatch.setattr(precision, "CPUINFO", path)

    return install


@pytest.mark.parametrize(
    ("text", "expected"),
    [(AMD_EPYC_AVX512_BF16, torch.bfloat16), (INTEL_AMX, torch.bfloat16), (AVX2_ONLY, torch.float32)],
    ids=["avx512-bf16", "amx", "avx2-only"],
)
def test_auto_on_cpu_follows_the_cpu_flags(cpuinfo, text, expected):
    cpuinfo(text)
    assert resolve_dtype("auto", "cpu") is expected
    assert resolve_dtype("auto") is expected  # the CPU is the default device


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_cuda_asks_torch_without_emulation(monkeypatch, cpuinfo, native, expected):
    cpuinfo(AMD_EPYC_AVX512_BF16 if not native else AVX2_ONLY)  # the GPU decides, not the host CPU
    asked = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return native

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert resolve_dtype("auto", "cuda:1") is expected
    assert resolve_dtype("auto", torch.device("cuda", 0)) is expected
    assert asked == [False, False]


def test_explicit_choices_and_bad_input(cpuinfo):
    cpuinfo(AMD_EPYC_AVX512_BF16)
    assert resolve_dtype("float32", "cpu") is torch.float32
    assert resolve_dtype("float16", "cpu") is torch.float16
    assert resolve_dtype(torch.float32, "cpu") is torch.float32
    assert resolve_dtype("checkpoint", "cpu") == resolve_dtype(None, "cpu") == "auto"  # transformers: as saved
    assert resolve_dtype("auto", "meta") is torch.float32
    with pytest.raises(ValueError, match=r"^dtype must be a torch.dtype or one of auto, checkpoint, .*; got 'fp8'\.$"):
        resolve_dtype("fp8", "cpu")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, t5_tokenizer_dir):
    return save_tiny_blap(tmp_path_factory.mktemp("tiny-blap"), t5_tokenizer_dir)


def test_pipeline_with_auto_on_a_native_bf16_cpu_keeps_the_qformer_in_float32(cpuinfo, model_dir):
    cpuinfo(AMD_EPYC_AVX512_BF16)
    captioner = pipeline("audio-to-text", model=str(model_dir), device="cpu", dtype=resolve_dtype("auto", "cpu"))
    model = captioner.model
    assert model.language_model.shared.weight.dtype == torch.bfloat16
    assert model.language_projection.weight.dtype == torch.bfloat16
    assert {p.dtype for p in model.qformer.parameters()} == {torch.float32}
    assert model.query_tokens.dtype == torch.float32
    assert captioner(tone(1.5), sampling_rate=16_000)[0]["generated_text"]


@pytest.mark.parametrize(
    ("text", "flag", "expected"),
    [
        (AMD_EPYC_AVX512_BF16, "auto", torch.bfloat16),
        (AVX2_ONLY, "auto", torch.float32),
        (AMD_EPYC_AVX512_BF16, "checkpoint", torch.float32),  # the tiny model is saved in float32
    ],
)
def test_blap_caption_dtype(monkeypatch, cpuinfo, model_dir, tmp_path, text, flag, expected):
    cpuinfo(text)
    built = []
    real_init = AudioToTextPipeline.__init__

    def recording_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(AudioToTextPipeline, "__init__", recording_init)
    audio = write_audio(tmp_path / "clip.wav", tone(1.2))
    output = tmp_path / "captions.jsonl"
    argv = ["caption", str(audio), "--model", str(model_dir), "--output", str(output), "--device", "cpu"]
    assert main([*argv, "--dtype", flag, "--no-progress"]) == 0
    (model,) = (captioner.model for captioner in built)
    assert model.language_model.shared.weight.dtype == expected
    assert model.query_tokens.dtype == torch.float32
    assert read_records(output)[0]["caption"]
