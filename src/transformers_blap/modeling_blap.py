"""BLAP: HTS-AT audio encoder -> Q-Former -> T5, as a transformers model."""

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    Blip2QFormerModel,
    ClapAudioModel,
    DynamicCache,
    EncoderDecoderCache,
    GenerationConfig,
    T5ForConditionalGeneration,
)
from transformers import initialization as init
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions, Seq2SeqLMOutput
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_blap import BlapConfig

# The release's usage example: 10 beams, 40 new tokens, at least 30 tokens.
BLAP_GENERATION_DEFAULTS = {"num_beams": 10, "max_new_tokens": 40, "min_length": 30}


@dataclass
class BlapForConditionalGenerationModelOutput(ModelOutput):
    r"""
    Output of [`BlapForConditionalGeneration.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): language-model loss when `labels` are given.
        logits (`torch.FloatTensor` of shape `(batch_size, target_length, vocab_size)`): the T5 decoder's scores.
        audio_embeds (`torch.FloatTensor` of shape `(batch_size, num_audio_tokens, audio_hidden_size)`): HTS-AT
            tokens after the audio LayerNorm (32 tokens of 768 channels for HTS-AT tiny).
        qformer_outputs ([`BaseModelOutputWithPoolingAndCrossAttentions`]): the Q-Former's output;
            `last_hidden_state` has shape `(batch_size, num_query_tokens, qformer_hidden_size)`.
        language_model_inputs (`torch.FloatTensor` of shape `(batch_size, num_query_tokens, d_model)`): the projected
            queries that open the T5 encoder's input.
        language_model_outputs ([`Seq2SeqLMOutput`]): the T5 output.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    audio_embeds: torch.FloatTensor | None = None
    qformer_outputs: BaseModelOutputWithPoolingAndCrossAttentions | None = None
    language_model_inputs: torch.FloatTensor | None = None
    language_model_outputs: Seq2SeqLMOutput | None = None

    def to_tuple(self) -> tuple:
        return tuple(
            self[k] if k not in ("qformer_outputs", "language_model_outputs") else getattr(self, k).to_tuple()
            for k in self.keys()
        )


class BlapPreTrainedModel(PreTrainedModel):
    """Weight initialisation and the loading/saving machinery shared by the BLAP models."""

    config: BlapConfig
    config_class = BlapConfig
    base_model_prefix = "blap"
    main_input_name = "input_features"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _keep_in_fp32_modules_strict = ["query_tokens", "qformer"]
    _no_split_modules = ["ClapAudioLayer", "Blip2QFormerLayer", "T5Block"]
    _skip_keys_device_placement = ["past_key_values"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, BlapPreTrainedModel) and hasattr(module, "query_tokens"):
            init.normal_(module.query_tokens, mean=0.0, std=self.config.initializer_range)


def untie_lm_head(language_model: T5ForConditionalGeneration) -> None:
    """
    Give a T5 its own `lm_head` (Flan-T5 / T5 v1.1 do not tie it to the embeddings) and make sure transformers never
    ties it again: `T5Config` always says `tie_word_embeddings=True` in transformers 5.x, so the head is removed from
    the model's tying plan (`_tied_weights_keys`, read again by `tie_weights()` and `resize_token_embeddings`) and from
    the plan already computed (`all_tied_weights_keys`).
    """
    language_model._tied_weights_keys = {
        target: source for target, source in language_model._tied_weights_keys.items() if target != "lm_head.weight"
    }
    language_model.all_tied_weights_keys.pop("lm_head.weight", None)
    if language_model.lm_head.weight is language_model.shared.weight:
        language_model.lm_head.weight = nn.Parameter(language_model.shared.weight.detach().clone())


class BlapBeamSearchCache(EncoderDecoderCache):
    """
    The T5 decoder's cache in BLAP's beam search. The cross-attention keys and values are computed once per clip and
    repeated for its beams ([`BlapForConditionalGeneration.generate`] fills them in before decoding), so they are the
    same for every beam of a clip; beam search only ever reorders beams within a clip, so reordering leaves them as
    they are and only the self-attention cache is reordered.
    """

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.self_attention_cache.reorder_cache(beam_idx)


class BlapForConditionalGeneration(BlapPreTrainedModel, GenerationMixin):
    r"""
    BLAP music captioner: HTS-AT audio tokens are read by learned queries in a Q-Former, projected into a T5 encoder
    in front of the prompt, and the T5 decoder writes the caption.

    Parameter names: `audio_encoder` (`ClapAudioModel`), `audio_layernorm`, `query_tokens`, `qformer`
    (`Blip2QFormerModel`), `language_projection`, `language_model` (`T5ForConditionalGeneration`). The stage-1 model
    (`BlapForRepresentationLearning`) shares the first four, so a stage-1 checkpoint initialises this model.

    Example:

    ```python
    >>> from transformers_blap import BlapForConditionalGeneration, BlapProcessor, load_audio
    >>> processor = BlapProcessor.from_pretrained("path/to/converted-blap")
    >>> model = BlapForConditionalGeneration.from_pretrained("path/to/converted-blap")
    >>> inputs = processor(audio=load_audio("song.mp3"), sampling_rate=48_000)
    >>> captions = processor.batch_decode(model.generate(**inputs), skip_special_tokens=True)
    ```
    """

    _can_compile_fullgraph = False

    def __init__(self, config: BlapConfig):
        super().__init__(config)
        self.audio_encoder = ClapAudioModel._from_config(config.audio_config)
        self.audio_layernorm = nn.LayerNorm(config.audio_config.hidden_size)
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.qformer_config.hidden_size))
        self.qformer = Blip2QFormerModel._from_config(config.qformer_config)
        self.language_projection = nn.Linear(config.qformer_config.hidden_size, config.text_config.d_model)
        self.language_model = T5ForConditionalGeneration._from_config(config.text_config)
        if not config.text_config.scale_decoder_outputs:
            untie_lm_head(self.language_model)
        self.post_init()
        self.generation_config = self._default_generation_config(config)

    @staticmethod
    def _default_generation_config(config: BlapConfig) -> GenerationConfig:
        """BLAP's generation defaults on top of the language model's special tokens."""
        text_config = config.text_config
        return GenerationConfig(
            decoder_start_token_id=text_config.decoder_start_token_id,
            eos_token_id=text_config.eos_token_id,
            pad_token_id=text_config.pad_token_id,
            **BLAP_GENERATION_DEFAULTS,
        )

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.language_model.set_output_embeddings(new_embeddings)

    def get_encoder(self, modality: str | None = None) -> nn.Module:
        if modality is None:
            return self.language_model.get_encoder()
        return super().get_encoder(modality=modality)

    # ------------------------------------------------------------------ inputs

    def _check_input_features(self, input_features: torch.Tensor | None) -> None:
        """Clear errors for missing or mis-shaped log-mel input."""
        if input_features is None:
            raise ValueError(
                "`input_features` is required: the log-mel spectrogram from BlapProcessor / BlapFeatureExtractor,"
                " shape (batch_size, 1, num_frames, num_mel_bins)."
            )
        audio_config = self.config.audio_config
        max_frames = audio_config.spec_size * (audio_config.spec_size // audio_config.num_mel_bins)
        if (
            input_features.ndim != 4
            or input_features.shape[1] != 1
            or input_features.shape[3] != audio_config.num_mel_bins
            or input_features.shape[2] > max_frames
        ):
            raise ValueError(
                f"`input_features` must have shape (batch_size, 1, num_frames <= {max_frames},"
                f" {audio_config.num_mel_bins}), got {tuple(input_features.shape)}."
            )

    @staticmethod
    def _check_prompt(
        input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, batch_size: int, name: str = "input_ids"
    ) -> None:
        if input_ids is None:
            return
        if input_ids.ndim != 2:
            raise ValueError(f"`{name}` must have shape (batch_size, sequence_length), got {tuple(input_ids.shape)}.")
        if input_ids.shape[0] != batch_size:
            raise ValueError(
                f"Batch size mismatch: `input_features` has {batch_size} clips but `{name}` has {input_ids.shape[0]}"
                " prompts. Pass one prompt per clip (BlapProcessor repeats a single prompt for you)."
            )
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"`attention_mask` has shape {tuple(attention_mask.shape)} but `{name}` has {tuple(input_ids.shape)}."
            )

    # ---------------------------------------------------------------- features

    def get_audio_features(self, input_features: torch.Tensor) -> torch.Tensor:
        """
        Audio tokens after the audio LayerNorm.

        Args:
            input_features (`torch.FloatTensor` of shape `(batch_size, 1, num_frames, num_mel_bins)`): log-mel.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, num_audio_tokens, audio_hidden_size)`: HTS-AT's last hidden
            state averaged over its frequency axis, one token per time step (32 for a 10 s window).
        """
        self._check_input_features(input_features)
        dtype = self.audio_encoder.audio_encoder.patch_embed.proj.weight.dtype
        hidden = self.audio_encoder(input_features=input_features.to(dtype)).last_hidden_state  # (B, C, F, T)
        audio_embeds = hidden.mean(dim=2).transpose(1, 2)
        return self.audio_layernorm(audio_embeds.to(self.audio_layernorm.weight.dtype))

    def get_qformer_features(
        self, input_features: torch.Tensor | None = None, audio_embeds: torch.Tensor | None = None
    ) -> BaseModelOutputWithPoolingAndCrossAttentions:
        """
        Q-Former output for the learned queries.

        Args:
            input_features (`torch.FloatTensor` of shape `(batch_size, 1, num_frames, num_mel_bins)`, *optional*).
            audio_embeds (`torch.FloatTensor` of shape `(batch_size, num_audio_tokens, audio_hidden_size)`,
                *optional*): pass instead of `input_features` to reuse computed audio tokens.

        Returns:
            [`BaseModelOutputWithPoolingAndCrossAttentions`] whose `last_hidden_state` has shape
            `(batch_size, num_query_tokens, qformer_hidden_size)`.
        """
        if audio_embeds is None:
            audio_embeds = self.get_audio_features(input_features)
        query_tokens = self.query_tokens.expand(audio_embeds.shape[0], -1, -1)
        return self.qformer(query_embeds=query_tokens, encoder_hidden_states=audio_embeds, return_dict=True)

    def _language_model_inputs(
        self,
        language_model_inputs: torch.Tensor,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        The T5 encoder input: `[projected queries ; embedded prompt]` and its attention mask (1 on every query).

        Without `input_ids` the encoder reads the queries followed by a single `</s>`.
        """
        batch_size, num_queries, _ = language_model_inputs.shape
        device = language_model_inputs.device
        if input_ids is None:
            eos = self.config.text_config.eos_token_id
            input_ids = torch.full((batch_size, 1), eos, dtype=torch.long, device=device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prompt_embeds = self.get_input_embeddings()(input_ids.to(device))
        inputs_embeds = torch.cat([language_model_inputs.to(prompt_embeds.dtype), prompt_embeds], dim=1)
        query_mask = torch.ones((batch_size, num_queries), dtype=attention_mask.dtype, device=device)
        return inputs_embeds, torch.cat([query_mask, attention_mask.to(device)], dim=1)

    # ----------------------------------------------------------------- forward

    def forward(
        self,
        input_features: torch.Tensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BlapForConditionalGenerationModelOutput | tuple:
        r"""
        Args:
            input_features (`torch.FloatTensor` of shape `(batch_size, 1, num_frames, num_mel_bins)`): log-mel from
                [`BlapProcessor`].
            input_ids (`torch.LongTensor` of shape `(batch_size, prompt_length)`, *optional*): the tokenized prompt.
            attention_mask (`torch.LongTensor` of shape `(batch_size, prompt_length)`, *optional*).
            decoder_input_ids (`torch.LongTensor` of shape `(batch_size, target_length)`, *optional*): built from
                `labels` by T5 when omitted; without both, the decoder start token alone.
            decoder_attention_mask (`torch.LongTensor` of shape `(batch_size, target_length)`, *optional*).
            labels (`torch.LongTensor` of shape `(batch_size, target_length)`, *optional*): caption tokens, -100 on
                padding; gives `loss`.

        Returns:
            [`BlapForConditionalGenerationModelOutput`].
        """
        self._check_input_features(input_features)
        self._check_prompt(input_ids, attention_mask, input_features.shape[0])
        if labels is not None and labels.shape[0] != input_features.shape[0]:
            raise ValueError(
                f"Batch size mismatch: `input_features` has {input_features.shape[0]} clips but `labels` has"
                f" {labels.shape[0]} rows."
            )
        audio_embeds = self.get_audio_features(input_features)
        qformer_outputs = self.get_qformer_features(audio_embeds=audio_embeds)
        query_output = qformer_outputs.last_hidden_state.to(self.language_projection.weight.dtype)
        language_model_inputs = self.language_projection(query_output)
        inputs_embeds, encoder_mask = self._language_model_inputs(language_model_inputs, input_ids, attention_mask)
        if decoder_input_ids is None and labels is None:
            # No target given: score the first caption token after the decoder start token.
            start = self.config.text_config.decoder_start_token_id
            decoder_input_ids = torch.full((inputs_embeds.shape[0], 1), start, device=inputs_embeds.device)

        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=encoder_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            labels=labels,
            return_dict=True,
            **kwargs,
        )
        output = BlapForConditionalGenerationModelOutput(
            loss=outputs.loss,
            logits=outputs.logits,
            audio_embeds=audio_embeds,
            qformer_outputs=qformer_outputs,
            language_model_inputs=language_model_inputs,
            language_model_outputs=outputs,
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def generate(
        self,
        input_features: torch.Tensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        generation_config: GenerationConfig | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        r"""
        Caption audio. Every option of `transformers` generation works (`num_beams`, `do_sample`, `top_p`,
        `max_new_tokens`, `min_length`, `streamer`, a `GenerationConfig`, ...); `self.generation_config` holds BLAP's
        defaults.

        Args:
            input_features (`torch.FloatTensor` of shape `(batch_size, 1, num_frames, num_mel_bins)`).
            input_ids (`torch.LongTensor` of shape `(batch_size, prompt_length)`, *optional*): the tokenized prompt
                (from [`BlapProcessor`]); without it the encoder reads the queries and `</s>` only.
            attention_mask (`torch.LongTensor` of shape `(batch_size, prompt_length)`, *optional*).
            generation_config ([`GenerationConfig`], *optional*): defaults to `self.generation_config`.

        Returns:
            `torch.LongTensor` of shape `(batch_size * num_return_sequences, output_length)`: decoder token ids,
            starting with the decoder start token; `processor.batch_decode(ids, skip_special_tokens=True)` gives text.
        """
        # Seq2SeqTrainer passes the whole batch, targets included; they are not generation inputs.
        for key in ("labels", "decoder_input_ids", "decoder_attention_mask"):
            generate_kwargs.pop(key, None)
        self._check_input_features(input_features)
        self._check_prompt(input_ids, attention_mask, input_features.shape[0])
        qformer_outputs = self.get_qformer_features(input_features=input_features)
        query_output = qformer_outputs.last_hidden_state.to(self.language_projection.weight.dtype)
        language_model_inputs = self.language_projection(query_output)
        inputs_embeds, encoder_mask = self._language_model_inputs(language_model_inputs, input_ids, attention_mask)
        generation_config = copy.deepcopy(generation_config or self.generation_config)
        model_kwargs = generation_config.update(**generate_kwargs)  # what is not a generation option: streamer, ...
        # A model split over devices or offloaded by accelerate moves weights and inputs at the T5 block boundary,
        # so its cross-attention projections cannot be called on their own.
        dispatched = len(set(getattr(self, "hf_device_map", {}).values())) > 1
        if (
            generation_config.num_beams > 1
            and generation_config.use_cache is not False
            and generation_config.cache_implementation is None
            and model_kwargs.get("past_key_values") is None
            and not dispatched
        ):
            # Beam search: run the T5 encoder once per clip and project its output into every decoder layer's
            # cross-attention keys/values once per clip too; `generate` then only repeats them for the beams.
            encoder_outputs = self.language_model.get_encoder()(
                inputs_embeds=inputs_embeds,
                attention_mask=encoder_mask,
                output_attentions=generation_config.output_attentions,
                output_hidden_states=generation_config.output_hidden_states,
                return_dict=True,
            )
            model_kwargs["encoder_outputs"] = encoder_outputs
            model_kwargs["past_key_values"] = self._beam_search_cache(
                encoder_outputs.last_hidden_state, generation_config.num_beams
            )
        else:
            model_kwargs["inputs_embeds"] = inputs_embeds
        return self.language_model.generate(
            attention_mask=encoder_mask, generation_config=generation_config, **model_kwargs
        )

    def _beam_search_cache(self, encoder_hidden_states: torch.Tensor, num_beams: int) -> BlapBeamSearchCache:
        """
        A decoder cache whose cross-attention part is already filled: each decoder layer's keys and values are
        projected from the `batch_size` encoder outputs and repeated for the beams, instead of being projected from
        `batch_size * num_beams` identical copies at the first decoding step.

        Args:
            encoder_hidden_states (`torch.FloatTensor` of shape `(batch_size, encoder_length, d_model)`): the T5
                encoder's output, one row per clip.
            num_beams (`int`): beams per clip.

        Returns:
            [`BlapBeamSearchCache`]: cross-attention keys and values of shape
            `(batch_size * num_beams, num_heads, encoder_length, d_kv)` per layer, an empty self-attention cache.
        """
        cross_attention = []
        for block in self.language_model.decoder.block:
            attention = block.layer[1].EncDecAttention
            shape = (*encoder_hidden_states.shape[:-1], -1, attention.key_value_proj_dim)
            keys = attention.k(encoder_hidden_states).view(shape).transpose(1, 2)
            values = attention.v(encoder_hidden_states).view(shape).transpose(1, 2)
            cross_attention.append((keys.repeat_interleave(num_beams, 0), values.repeat_interleave(num_beams, 0)))
        return BlapBeamSearchCache(DynamicCache(config=self.language_model.config), DynamicCache(cross_attention))

    # ---------------------------------------------------------------- training

    def set_stage2_trainable(self) -> list[str]:
        """
        Freeze what stage 2 keeps frozen and unfreeze the rest: the audio encoder and the language model are frozen
        (the audio encoder is also held in eval mode, so its BatchNorm statistics never move); the Q-Former, the query
        tokens, the audio LayerNorm and the projection into the language model train.

        Returns:
            `list[str]`: the names of the trainable parameters.
        """
        for name, param in self.named_parameters():
            param.requires_grad = not name.startswith(("audio_encoder.", "language_model."))
        self._frozen_eval_modules = ("audio_encoder",)
        self.train(self.training)
        return [name for name, param in self.named_parameters() if param.requires_grad]

    def train(self, mode: bool = True) -> "BlapForConditionalGeneration":
        super().train(mode)
        for name in getattr(self, "_frozen_eval_modules", ()):
            getattr(self, name).eval()
        return self


__all__ = [
    "BlapBeamSearchCache",
    "BlapForConditionalGeneration",
    "BlapForConditionalGenerationModelOutput",
    "BlapPreTrainedModel",
]
