"""
The batch captioner (`blap caption`) runs `AudioToTextPipeline`'s steps itself: `call_parameters` resolves a call's
options as `__call__` does, and `preprocess` -> `forward` -> `postprocess` with them caption as `__call__` does.

`call_parameters` stands on transformers' `Pipeline` machinery: the `_sanitize_parameters` hook and the
`_preprocess_params` / `_forward_params` / `_postprocess_params` attributes in which `Pipeline.__init__` keeps the
creation options. If transformers changes either, these tests fail.
"""

import pytest
from transformers import pipeline

from blap_testing import save_tiny_blap, tone, write_audio


@pytest.fixture(scope="module")
def captioner(tmp_path_factory, t5_tokenizer_dir):
    model_dir = save_tiny_blap(tmp_path_factory.mktemp("tiny-blap"), t5_tokenizer_dir)
    return pipeline("audio-to-text", model=str(model_dir), device="cpu", prompt="Describe the music.", window_s=0.5)


def test_call_options_go_over_creation_options(captioner):
    preprocess_params, forward_params, postprocess_params = captioner.call_parameters(hop_s=0.25, max_new_tokens=3)
    assert preprocess_params == {"prompt": "Describe the music.", "window_s": 0.5, "hop_s": 0.25}
    assert forward_params == {"generate_kwargs": {"max_new_tokens": 3}}
    assert postprocess_params == {}
    assert captioner.call_parameters(prompt="Other.")[0] == {"prompt": "Other.", "window_s": 0.5}


def test_the_steps_with_call_parameters_caption_as_a_call_does(captioner, tmp_path):
    path = str(write_audio(tmp_path / "a.wav", tone(1.3, frequency=300.0)))
    options = {"hop_s": 0.25, "num_beams": 2, "max_new_tokens": 4, "min_length": 2}
    expected = captioner(path, **options)
    assert [window["start"] for window in expected[0]["windows"]] == [0.0, 0.25, 0.5, 0.75]

    preprocess_params, forward_params, postprocess_params = captioner.call_parameters(**options)
    outputs = [captioner.forward(item, **forward_params) for item in captioner.preprocess(path, **preprocess_params)]
    assert captioner.postprocess(outputs, **postprocess_params) == expected
