"""BLAP: HTS-AT audio encoder -> Q-Former -> T5, as a transformers model."""

import contextlib
import copy
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import (
    AttentionInterface,
    AttentionMaskInterface,
    AutoModel,
    AutoModelForSeq2SeqLM,
    Blip2QFormerConfig,
    Cache,
    CacheLayerMixin,
    ClapAudioModel,
    DynamicCache,
    EncoderDecoderCache,
    GenerationConfig,
    T5ForConditionalGeneration,
)
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.generation import GenerationMixin
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions, Seq2SeqLMOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.blip_2.modeling_blip_2 import Blip2TextEmbeddings
from transformers.utils import ModelOutput

from .configuration_blap import BlapConfig
from .remote_code_blap import HUB_TAGS, add_remote_code

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
    """
    What the BLAP models share: the audio path (`audio_encoder` (`ClapAudioModel`), `audio_layernorm`, `query_tokens`,
    `qformer` (`Blip2QFormerModel`), with the same parameter names in both, so that a stage-1 checkpoint initialises
    stage 2), the float32 Q-Former under mixed precision, frozen modules held in eval mode, weight initialisation and
    the loading/saving machinery.
    """

    config: BlapConfig
    config_class = BlapConfig
    base_model_prefix = "blap"
    main_input_name = "input_features"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _keep_in_fp32_modules_strict = ["query_tokens", "qformer"]
    # Quantizers (bitsandbytes, ...) leave out `_keep_in_fp32_modules`, not the strict list: the same modules.
    _keep_in_fp32_modules = _keep_in_fp32_modules_strict
    _no_split_modules = ["ClapAudioLayer", "Blip2QFormerLayer", "T5Block"]
    _skip_keys_device_placement = ["past_key_values", "cache"]  # the cache argument before and from transformers 5.25

    # Top-level modules held in eval mode whatever `train()` says (frozen ones: BatchNorm statistics never move).
    _frozen_eval_modules: tuple[str, ...] = ()

    def __init__(self, config: BlapConfig, qformer_text_input: bool = False):
        """
        Build the audio path.

        Args:
            config ([`BlapConfig`]).
            qformer_text_input (`bool`, *optional*, defaults to `False`): build the Q-Former's text feed-forward layers
                (stage 1) whatever `qformer_config.use_qformer_text_input` says. The flag is set only while they are
                built, so the configuration keeps its stage-2 value and a stage-1 checkpoint initialises
                [`BlapForConditionalGeneration`] without them.
        """
        super().__init__(config)
        qformer_config = config.qformer_config
        # Sub-models are built in the dtype and attention implementation that `from_pretrained` / `from_config` set
        # for the whole model (the default dtype while it builds; the sub-configs' `_attn_implementation`).
        self.audio_encoder = ClapAudioModel(config.audio_config)
        self.audio_layernorm = nn.LayerNorm(config.audio_config.hidden_size)
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, qformer_config.hidden_size))
        use_text_input = qformer_config.use_qformer_text_input
        qformer_config.use_qformer_text_input = use_text_input or qformer_text_input
        try:
            self.qformer = AutoModel.from_config(qformer_config)
        finally:
            qformer_config.use_qformer_text_input = use_text_input

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, BlapPreTrainedModel):
            init.normal_(module.query_tokens, mean=0.0, std=self.config.initializer_range)

    # ------------------------------------------------------------------ audio path

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

    def _qformer_precision(self, device: torch.device) -> contextlib.AbstractContextManager:
        """
        Autocast off around the Q-Former while it is float32 (`_keep_in_fp32_modules_strict`), so that mixed precision
        does not run it in half precision; a no-op otherwise.
        """
        if (
            self.qformer.layernorm.weight.dtype == torch.float32
            and torch.amp.is_autocast_available(device.type)
            and torch.is_autocast_enabled(device.type)
        ):
            return torch.autocast(device_type=device.type, enabled=False)
        return contextlib.nullcontext()

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
        with self._qformer_precision(audio_embeds.device):
            return self.qformer(
                query_embeds=query_tokens,
                encoder_hidden_states=audio_embeds.to(query_tokens.dtype),
                return_dict=True,
            )

    # ---------------------------------------------------------------- training

    def _freeze(self, frozen: tuple[str, ...], held_in_eval: tuple[str, ...]) -> list[str]:
        """
        Freeze the parameters of the `frozen` top-level modules and unfreeze the rest; hold the `held_in_eval` modules
        in eval mode from now on (`train()` leaves them there).

        Returns:
            `list[str]`: the names of the trainable parameters.
        """
        for name, param in self.named_parameters():
            param.requires_grad = name.split(".", 1)[0] not in frozen
        self._frozen_eval_modules = held_in_eval
        self.train(self.training)
        return [name for name, param in self.named_parameters() if param.requires_grad]

    def train(self, mode: bool = True) -> "BlapPreTrainedModel":
        super().train(mode)
        for name in self._frozen_eval_modules:
            getattr(self, name).eval()
        return self


def caption_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
) -> torch.Tensor:
    """
    Token-level cross-entropy of the caption, computed in float32.

    Args:
        logits (`torch.FloatTensor` of shape `(batch_size, target_length, vocab_size)`).
        labels (`torch.LongTensor` of shape `(batch_size, target_length)`): -100 on ignored positions.
        num_items_in_batch (`torch.Tensor` or `int`, *optional*): the number of caption tokens in the whole optimizer
            step (all accumulated micro-batches, all processes), as `Trainer` counts it. When given, the loss is the
            sum over this micro-batch divided by it, so gradient accumulation and data parallelism add up to the mean
            over the whole step's tokens; otherwise it is the mean over this batch's tokens (T5's own loss).

    Returns:
        `torch.FloatTensor` of shape `()`.
    """
    logits = logits.float()
    labels = labels.to(logits.device)
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction=reduction
    )
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss


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


class BlapBufferedLayer(CacheLayerMixin):
    """
    A decoder self-attention cache layer for BLAP's beam search, on transformers' public cache-layer interface
    (`CacheLayerMixin`): its keys and values live in buffers of `capacity` positions allocated at the first step,
    `keys`/`values` being views of the filled part, so that attention reads what transformers' `DynamicLayer` would
    give it. `DynamicLayer` allocates a new, longer copy of every layer's cache at every step (concatenation) and again
    for every beam reordering; those growing allocations fragment the heap, which held 0.3 GiB more after captioning
    8 clips x 10 beams at Flan-T5-base dims. Here a step writes its token in place and a reordering writes into a
    spare buffer handed over by [`BlapBeamSearchCache`].

    Args:
        capacity (`int`): positions to allocate: the decoder inputs of the longest caption (`max_new_tokens`); a
            longer generation moves the cache into larger buffers.
    """

    is_sliding = False

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Allocate `capacity` positions for states shaped like these (`(batch_size, num_heads, -, head_dim)`)."""
        self.device = key_states.device
        self.keys, self.values = key_states[:, :, :0], value_states[:, :, :0]
        self._allocate(self.capacity)
        self.is_initialized = True

    def _allocate(self, capacity: int) -> None:
        """Move `keys`/`values` (of shape `(batch_size, num_heads, length, head_dim)`) into new buffers."""
        length = self.keys.shape[-2]
        self.key_buffer = self.keys.new_empty((*self.keys.shape[:2], capacity, self.keys.shape[-1]))
        self.value_buffer = self.values.new_empty((*self.values.shape[:2], capacity, self.values.shape[-1]))
        self.key_buffer[:, :, :length] = self.keys
        self.value_buffer[:, :, :length] = self.values
        self.keys, self.values = self.key_buffer[:, :, :length], self.value_buffer[:, :, :length]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            key_states, value_states (`torch.FloatTensor` of shape `(batch_size, num_heads, new_length, head_dim)`).

        Returns:
            `(keys, values)` of shape `(batch_size, num_heads, cached_length + new_length, head_dim)`.
        """
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.keys.shape[-2]
        end = start + key_states.shape[-2]
        capacity = self.key_buffer.shape[-2]
        if end > capacity:
            self._allocate(max(end, 2 * capacity))
        self.key_buffer[:, :, start:end] = key_states
        self.value_buffer[:, :, start:end] = value_states
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.keys.shape[-2] if self.is_initialized else 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """The key length and offset of the attention mask for `query_length` new positions."""
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        """-1: the buffers grow past `capacity` when needed."""
        return -1

    def reset(self) -> None:
        """Empty the layer; the next `update` allocates again."""
        self.keys = self.values = self.key_buffer = self.value_buffer = None
        self.is_initialized = False

    def reorder_cache(
        self, beam_idx: torch.LongTensor, spare: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """
        Reorder the beams into `spare` buffers (shaped like this layer's; new ones without), which become this layer's.

        Returns:
            The buffers given up, to be the next layer's spare (`spare` itself when there was nothing to reorder).
        """
        length = self.get_seq_length()
        if length == 0:
            return spare
        if spare is None or spare[0].shape != self.key_buffer.shape or spare[1].shape != self.value_buffer.shape:
            spare = (torch.empty_like(self.key_buffer), torch.empty_like(self.value_buffer))
        beam_idx = beam_idx.to(self.keys.device)
        torch.index_select(self.keys, 0, beam_idx, out=spare[0][:, :, :length])
        torch.index_select(self.values, 0, beam_idx, out=spare[1][:, :, :length])
        given_up = (self.key_buffer, self.value_buffer)
        self.key_buffer, self.value_buffer = spare
        self.keys, self.values = self.key_buffer[:, :, :length], self.value_buffer[:, :, :length]
        return given_up


class BlapBeamSearchCache(EncoderDecoderCache):
    """
    The T5 decoder's cache in BLAP's beam search. The cross-attention keys and values are computed once per clip
    ([`BlapForConditionalGeneration.generate`] fills them in before decoding): kept once per clip for SDPA attention
    (read by [`beam_grouped_sdpa_attention`]), repeated for the beams otherwise. They are the same for every beam of a
    clip, and beam search only ever reorders beams within a clip, so reordering leaves them as they are and only the
    self-attention cache ([`BlapBufferedLayer`]s) is reordered, each layer into the buffers the previous layer gave up:
    one spare layer's worth of memory for the whole reordering, no allocation.
    """

    def __init__(self, self_attention_cache: Cache, cross_attention_cache: Cache):
        super().__init__(self_attention_cache, cross_attention_cache)
        self._spare_buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        spare = self._spare_buffers
        for layer in self.self_attention_cache.layers:
            spare = layer.reorder_cache(beam_idx, spare)
        self._spare_buffers = spare


BEAM_GROUPED_SDPA = "blap_beam_grouped_sdpa"
# The name models and `generate` take a cache under: transformers 5.25 renamed `past_key_values` to `cache` (the old
# name warns until 6.0).
CACHE_ARGUMENT = (
    "cache" if "cache" in inspect.signature(T5ForConditionalGeneration.forward).parameters else "past_key_values"
)


def beam_grouped_sdpa_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_bias: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """
    The attention of BLAP's T5 decoder where the language model is set to SDPA (registered as
    `"blap_beam_grouped_sdpa"`, see [`BlapForConditionalGeneration.set_attn_implementation`]): transformers' SDPA
    attention, which in BLAP's beam search also reads cross-attention keys and values kept once per clip while the
    queries come once per beam: the beams of a clip are attended as extra query positions of that clip, so the keys
    and values are never repeated `num_beams` times. Where queries and keys have the same batch (self-attention,
    training, any other generation) it is plain SDPA.

    Args:
        query (`torch.FloatTensor` of shape `(batch_size * num_beams, num_heads, query_length, head_dim)`): beams of a
            clip consecutive, as `generate` expands them.
        key, value (`torch.FloatTensor` of shape `(batch_size, num_heads, key_length, head_dim)`).
        attention_mask (`torch.Tensor` of shape `(batch_size * num_beams, 1, 1 or query_length, key_length)`,
            *optional*): the same for every beam of a clip.
        position_bias (`torch.FloatTensor` of shape `(1 or batch_size * num_beams, num_heads, query_length,
            key_length)`, *optional*).

    Returns:
        `(attn_output, None)`, `attn_output` of shape `(batch_size * num_beams, query_length, num_heads, head_dim)`.
    """
    sdpa_attention = ALL_ATTENTION_FUNCTIONS["sdpa"]
    num_beams = query.shape[0] // key.shape[0]
    if num_beams == 1:
        return sdpa_attention(module, query, key, value, attention_mask, position_bias=position_bias, **kwargs)
    batch_size, num_heads, query_length, head_dim = key.shape[0], *query.shape[1:]

    def per_clip(tensor: torch.Tensor | None) -> torch.Tensor | None:
        """(batch * beams or 1, h, query_length, k) -> (batch or 1, h, beams * query_length or 1, k)."""
        if tensor is None:
            return None
        if tensor.shape[0] > 1:
            tensor = tensor[::num_beams]
        return tensor.repeat(1, 1, num_beams, 1) if tensor.shape[2] > 1 else tensor

    query = query.view(batch_size, num_beams, num_heads, query_length, head_dim).transpose(1, 2)
    query = query.reshape(batch_size, num_heads, num_beams * query_length, head_dim)
    attn_output, _ = sdpa_attention(
        module, query, key, value, per_clip(attention_mask), position_bias=per_clip(position_bias), **kwargs
    )
    # (batch, beams * query_length, heads, head_dim) -> (batch * beams, query_length, heads, head_dim)
    return attn_output.reshape(batch_size * num_beams, query_length, num_heads, head_dim), None


# With SDPA's masks: transformers builds none for an attention implementation without a registered mask function.
AttentionInterface.register(BEAM_GROUPED_SDPA, beam_grouped_sdpa_attention)
AttentionMaskInterface.register(BEAM_GROUPED_SDPA, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


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
    # `forward` normalises its loss by the `num_items_in_batch` that `Trainer` passes (see `caption_loss`), so Trainer
    # must not divide it again by the gradient-accumulation steps.
    accepts_loss_kwargs = True
    # A stage-1 checkpoint (`BlapForRepresentationLearning`) initialises this model: its text-side Q-Former weights,
    # projections, matching head and temperature have no use here and are skipped without a warning.
    _keys_to_ignore_on_load_unexpected = [
        r"^text_embeddings\.",
        r"^lm_head\.",
        r"^audio_projection\.",
        r"^text_projection\.",
        r"^atm_head\.",
        r"^temperature$",
        r"^qformer\.encoder\.layer\.\d+\.(intermediate|output)\.",
    ]

    def __init__(self, config: BlapConfig):
        super().__init__(config)
        self.language_projection = nn.Linear(config.qformer_config.hidden_size, config.text_config.d_model)
        self.language_model = AutoModelForSeq2SeqLM.from_config(config.text_config)
        if not config.text_config.scale_decoder_outputs:
            untie_lm_head(self.language_model)
        self._set_language_model_stack_attention()
        self.post_init()
        self.generation_config = self._default_generation_config(config)
        self.add_model_tags(list(HUB_TAGS))  # the tags of transformers' `push_to_hub` model card

    def save_pretrained(
        self, save_directory: str | os.PathLike, is_main_process: bool = True, push_to_hub: bool = False, **kwargs
    ) -> None:
        """
        `PreTrainedModel.save_pretrained`, and the folder loads with `trust_remote_code=True` where this package is
        not installed: the saved `config.json` gets the `auto_map` and `custom_pipelines` entries and the package's
        flat modules are copied beside it (`remote_code_blap.add_remote_code`). `self.config` is not changed.
        With `push_to_hub=True` the model is then uploaded with [`~PreTrainedModel.push_to_hub`] (`repo_id`,
        `commit_message`, `commit_description`, `private`, `token`, `revision`, `create_pr` pass through).
        """
        push_options = ("repo_id", "commit_message", "commit_description", "private", "revision", "create_pr")
        push_kwargs = {key: kwargs.pop(key) for key in push_options if key in kwargs}
        super().save_pretrained(save_directory, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            add_remote_code(save_directory)
        if push_to_hub:
            repo_id = push_kwargs.pop("repo_id", os.path.basename(os.path.normpath(save_directory)))
            self.push_to_hub(repo_id, token=kwargs.get("token"), **push_kwargs)

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

    def set_attn_implementation(self, attn_implementation: str | dict, **kwargs) -> None:
        """
        `PreTrainedModel.set_attn_implementation`, with the T5's encoder and decoder following the language model
        (see `_set_language_model_stack_attention`).
        """
        super().set_attn_implementation(attn_implementation, **kwargs)
        self._set_language_model_stack_attention()

    def _set_language_model_stack_attention(self) -> None:
        """
        Put the T5's encoder and decoder stacks on the language model's attention implementation, the decoder on
        `"blap_beam_grouped_sdpa"` ([`beam_grouped_sdpa_attention`]: SDPA that also attends the beams of a clip to
        cross-attention keys kept once per clip) where that implementation is SDPA. The stacks hold copies of the
        language model's config, which transformers 5.23 leaves as they were when the implementation is set per
        sub-config (`{"text_config": "eager"}`). Set when the model is built and by `set_attn_implementation`, never
        while generating, so that threads captioning with one model do not interfere; the saved config does not carry
        the name (transformers does not serialise attention implementations).
        """
        implementation = self.language_model.config._attn_implementation
        self.language_model.encoder.set_attn_implementation(implementation)
        self.language_model.decoder.set_attn_implementation(
            BEAM_GROUPED_SDPA if implementation == "sdpa" else implementation
        )

    # ---------------------------------------------------------------- features

    def _project_queries(self, query_output: torch.Tensor) -> torch.Tensor:
        """
        The Q-Former's query outputs projected into the language model's embedding space.

        Args:
            query_output (`torch.FloatTensor` of shape `(batch_size, num_query_tokens, qformer_hidden_size)`).

        Returns:
            `torch.FloatTensor` of shape `(batch_size, num_query_tokens, d_model)`. The projection runs in its own
            dtype (or autocast's): float32 when it trains beside a bfloat16 language model, also outside autocast
            (`generate`); `_language_model_inputs` casts its output to the language model's dtype. A quantized
            projection (bitsandbytes 8-bit / 4-bit: integer weights) takes the language model's embedding dtype.
        """
        dtype = self.language_projection.weight.dtype
        if not dtype.is_floating_point:
            dtype = self.language_model.get_input_embeddings().weight.dtype
        return self.language_projection(query_output.to(dtype))

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
                padding; gives `loss` (see [`caption_loss`]).
            kwargs: `num_items_in_batch` (from `Trainer`) normalises the loss; the rest goes to the language model.

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
        language_model_inputs = self._project_queries(qformer_outputs.last_hidden_state)
        inputs_embeds, encoder_mask = self._language_model_inputs(language_model_inputs, input_ids, attention_mask)
        if decoder_input_ids is None and labels is None:
            # No target given: score the first caption token after the decoder start token.
            start = self.config.text_config.decoder_start_token_id
            decoder_input_ids = torch.full((inputs_embeds.shape[0], 1), start, device=inputs_embeds.device)

        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        if labels is not None and decoder_input_ids is None:
            decoder_input_ids = self.language_model.prepare_decoder_input_ids_from_labels(labels=labels)
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=encoder_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            return_dict=True,
            **kwargs,
        )
        loss = caption_loss(outputs.logits, labels, num_items_in_batch) if labels is not None else None
        output = BlapForConditionalGenerationModelOutput(
            loss=loss,
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
        defaults. In beam search the T5 encoder and the decoder's cross-attention keys/values are computed once per
        clip and shared by its beams ([`BlapBeamSearchCache`]); the captions are transformers' own beam search's.

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
        language_model_inputs = self._project_queries(qformer_outputs.last_hidden_state)
        inputs_embeds, encoder_mask = self._language_model_inputs(language_model_inputs, input_ids, attention_mask)
        # Options left `None` in a given config (transformers 5 defaults) are taken from `self.generation_config`
        # (the language model's `generate` fills the rest with transformers' global defaults).
        generation_config = copy.deepcopy(generation_config or self.generation_config)
        generation_config.update(**self.generation_config.to_dict(), defaults_only=True)
        model_kwargs = generation_config.update(**generate_kwargs)  # what is not a generation option: streamer, ...
        num_beams = generation_config.num_beams  # unset: transformers' default, no beam search
        # A model split over devices or offloaded by accelerate takes transformers' own path: BLAP's beam-search cache
        # is not tested across devices.
        dispatched = len(set(getattr(self, "hf_device_map", {}).values())) > 1
        if (
            num_beams is not None
            and num_beams > 1
            and generation_config.use_cache is not False
            and generation_config.cache_implementation is None
            and all(model_kwargs.get(name) is None for name in ("past_key_values", "cache"))
            and not dispatched
        ):
            # Beam search: run the T5 encoder once per clip and fill every decoder layer's cross-attention keys and
            # values once per clip too (`_beam_search_cache`).
            encoder_outputs = self.language_model.get_encoder()(
                inputs_embeds=inputs_embeds,
                attention_mask=encoder_mask,
                output_attentions=generation_config.output_attentions,
                output_hidden_states=generation_config.output_hidden_states,
                return_dict=True,
            )
            model_kwargs["encoder_outputs"] = encoder_outputs
            model_kwargs[CACHE_ARGUMENT] = self._beam_search_cache(
                encoder_outputs.last_hidden_state, encoder_mask, num_beams, self._caption_capacity(generation_config)
            )
        else:
            model_kwargs["inputs_embeds"] = inputs_embeds
        return self.language_model.generate(
            attention_mask=encoder_mask, generation_config=generation_config, **model_kwargs
        )

    @staticmethod
    def _caption_capacity(generation_config: GenerationConfig) -> int:
        """
        The decoder positions of the longest caption `generation_config` allows: the start token and every generated
        token but the last. Without a length there (transformers' default applies) BLAP's default length, which the
        self-attention cache grows past when needed.
        """
        if generation_config.max_new_tokens is not None:
            return generation_config.max_new_tokens
        if generation_config.max_length is not None:
            return max(generation_config.max_length - 1, 1)
        return BLAP_GENERATION_DEFAULTS["max_new_tokens"]

    def _beam_search_cache(
        self, encoder_hidden_states: torch.Tensor, encoder_mask: torch.Tensor, num_beams: int, capacity: int
    ) -> BlapBeamSearchCache:
        """
        A decoder cache whose cross-attention part is already filled, by one decoder step on the `batch_size` encoder
        outputs (the decoder start token per clip), instead of projecting `batch_size * num_beams` identical copies at
        the first decoding step. Under `"blap_beam_grouped_sdpa"` (the decoder of a model set to SDPA) the keys and
        values stay once per clip and [`beam_grouped_sdpa_attention`] attends the beams of a clip to them; other
        attention implementations get them repeated for the beams. The self-attention part is allocated at the first
        step for `capacity` positions ([`BlapBufferedLayer`]).

        Args:
            encoder_hidden_states (`torch.FloatTensor` of shape `(batch_size, encoder_length, d_model)`): the T5
                encoder's output, one row per clip.
            encoder_mask (`torch.LongTensor` of shape `(batch_size, encoder_length)`).
            num_beams (`int`): beams per clip.
            capacity (`int`): decoder positions the self-attention cache is allocated for.

        Returns:
            [`BlapBeamSearchCache`]: cross-attention keys and values of shape
            `(batch_size or batch_size * num_beams, num_heads, encoder_length, d_kv)` per layer, an empty
            self-attention cache.
        """
        decoder = self.language_model.decoder
        start = self.config.text_config.decoder_start_token_id
        start_ids = torch.full((encoder_hidden_states.shape[0], 1), start, device=encoder_hidden_states.device)
        cross_attention = DynamicCache()
        decoder(
            input_ids=start_ids,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_mask,
            use_cache=True,
            **{CACHE_ARGUMENT: EncoderDecoderCache(DynamicCache(), cross_attention)},
        )
        if decoder.config._attn_implementation != BEAM_GROUPED_SDPA:
            cross_attention.batch_repeat_interleave(num_beams)
        self_attention = Cache(layers=[BlapBufferedLayer(capacity) for _ in cross_attention.layers])
        return BlapBeamSearchCache(self_attention, cross_attention)

    # ---------------------------------------------------------------- training

    def set_stage2_trainable(self) -> list[str]:
        """
        Freeze what stage 2 keeps frozen and unfreeze the rest: the audio encoder and the language model are frozen
        (the audio encoder is also held in eval mode, so its BatchNorm statistics never move); the Q-Former, the query
        tokens, the audio LayerNorm and the projection into the language model train.

        Returns:
            `list[str]`: the names of the trainable parameters.
        """
        return self._freeze(frozen=("audio_encoder", "language_model"), held_in_eval=("audio_encoder",))


# ====================================================================================================
# Stage 1: representation learning (audio-text contrastive, audio-text matching, audio-grounded caption generation)
# ====================================================================================================


@dataclass
class BlapRepresentationLearningOutput(ModelOutput):
    r"""
    Output of [`BlapForRepresentationLearning.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): `loss_atc + loss_atm + loss_lm`, with `return_loss=True`.
        loss_atc (`torch.FloatTensor` of shape `()`, *optional*): audio-text contrastive loss.
        loss_atm (`torch.FloatTensor` of shape `()`, *optional*): audio-text matching loss.
        loss_lm (`torch.FloatTensor` of shape `()`, *optional*): audio-grounded caption-generation loss.
        logits_per_audio (`torch.FloatTensor` of shape `(num_audio, num_text)`): audio-text similarities divided by
            the temperature; a softmax over a row ranks the texts for that clip.
        logits_per_text (`torch.FloatTensor` of shape `(num_text, num_audio)`): the transpose.
        audio_embeds (`torch.FloatTensor` of shape `(num_audio, num_query_tokens, embed_dim)`): unit-norm audio
            embeddings, one per query token.
        text_embeds (`torch.FloatTensor` of shape `(num_text, embed_dim)`): unit-norm text embeddings.
        lm_logits (`torch.FloatTensor` of shape `(batch_size, text_length, qformer_vocab_size)`, *optional*): the
            Q-Former's next-token scores when it decodes the captions (with `return_loss=True`).
    """

    loss: torch.FloatTensor | None = None
    loss_atc: torch.FloatTensor | None = None
    loss_atm: torch.FloatTensor | None = None
    loss_lm: torch.FloatTensor | None = None
    logits_per_audio: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    audio_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    lm_logits: torch.FloatTensor | None = None


class BlapProjection(nn.Module):
    """
    BLAP's projection into the shared audio-text space: `LayerNorm(h + Dropout(Linear(GELU(h))))` with
    `h = Linear(x)`, both linear maps without bias.
    """

    def __init__(self, in_features: int, out_features: int, dropout: float):
        super().__init__()
        self.linear1 = nn.Linear(in_features, out_features, bias=False)
        self.linear2 = nn.Linear(out_features, out_features, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(out_features)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(..., in_features)` -> `(..., out_features)`."""
        projected = self.linear1(hidden_states)
        return self.layer_norm(projected + self.dropout(self.linear2(F.gelu(projected))))


class BlapQFormerLMHead(nn.Module):
    """BERT's masked-LM head on the Q-Former: dense -> activation -> LayerNorm -> decoder to the vocabulary."""

    def __init__(self, config: Blip2QFormerConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(batch_size, text_length, hidden_size)` -> `(batch_size, text_length, vocab_size)`."""
        return self.decoder(self.layer_norm(self.transform_act_fn(self.dense(hidden_states))))


class _GatherWithGrad(torch.autograd.Function):
    """
    All-gather along dim 0 (local batch sizes may differ between processes) whose backward pass sums the gradients
    of every process's copy and returns this process's slice: each process's loss then back-propagates into every
    process's local features, as one process computing on the whole batch would.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
        ctx.start = sum(sizes[:rank])
        ctx.stop = ctx.start + sizes[rank]
        return _all_gather(tensor, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.start : ctx.stop], None, None


def _all_gather(tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate every process's `tensor` (first dimensions `sizes`, other dimensions equal) along dim 0."""
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([part[:size] for part, size in zip(gathered, sizes)])


def _distributed_layout(batch_size: int, device: torch.device) -> tuple[int, list[int]]:
    """This process's rank and every process's local batch size (`(0, [batch_size])` outside torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 0, [batch_size]
    local = torch.tensor([batch_size], device=device)
    sizes = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, local)
    return dist.get_rank(), [int(size) for size in sizes]


def _all_reduce_sum(value: torch.Tensor, world_size: int) -> torch.Tensor:
    """Sum of a (non-differentiable) tensor over all processes."""
    if world_size > 1:
        value = value.clone()
        dist.all_reduce(value)
    return value


# `from_pretrained` arguments that say where a checkpoint's files are (for reading its config.json first).
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")


class BlapForRepresentationLearning(BlapPreTrainedModel):
    r"""
    BLAP stage 1: learns audio-text representations in the Q-Former with three losses (docs/design.md, BLIP-2):

    - audio-text contrastive (ATC): unit-norm `audio_projection` of every query output against the unit-norm
      `text_projection` of the text's `[CLS]` output; the similarity of a pair is the maximum over queries, divided by
      a learnable temperature; label-smoothed cross-entropy in both directions over the whole (all-process) batch.
      Audio and text go through the Q-Former separately.
    - audio-text matching (ATM): queries and text attend to each other (queries also to the audio); a linear head on
      the mean of the query outputs tells matching from non-matching pairs, with one hard negative text per clip and
      one hard negative clip per text drawn from the softmaxed similarities of the whole batch.
    - audio-grounded caption generation (LM): the Q-Former decodes the caption with `[DEC]` in place of `[CLS]`; text
      attends to all queries and to earlier text, queries never see text.

    Shares `audio_encoder`, `audio_layernorm`, `query_tokens` and `qformer` with [`BlapForConditionalGeneration`] (same
    parameter names), so `BlapForConditionalGeneration.from_pretrained(stage1_checkpoint)` starts stage 2 from these
    weights; the stage-1-only weights listed below are skipped there without warnings, and the language model and
    its projection are newly initialised. It adds `text_embeddings` (word + position embeddings), `lm_head` (tied to
    the word embeddings when `config.tie_word_embeddings`), `audio_projection`, `text_projection`, `atm_head`,
    `temperature`, and the Q-Former's text feed-forward layers (`intermediate` / `output`, built whatever
    `qformer_config.use_qformer_text_input` says). It holds no language model: a stage-1 checkpoint never contains
    the T5, whose configuration (`config.text_config`) only travels along for stage 2.

    Beyond training: [`~BlapForRepresentationLearning.get_audio_embeddings`],
    [`~BlapForRepresentationLearning.get_text_embeddings`], [`~BlapForRepresentationLearning.similarity`] for
    text-to-music retrieval, and `forward` without `return_loss` for zero-shot tagging (the
    `zero-shot-audio-classification` pipeline).

    Example:

    ```python
    >>> from transformers_blap import BlapForRepresentationLearning, BlapStage1Processor
    >>> processor = BlapStage1Processor.from_pretrained("path/to/stage1")
    >>> model = BlapForRepresentationLearning.from_pretrained("path/to/stage1")
    >>> audio = model.get_audio_embeddings(**processor(audio=clips, sampling_rate=48_000))
    >>> text = model.get_text_embeddings(**processor(text=["calm solo piano", "distorted guitars"]))
    >>> ranking = model.similarity(audio, text).argsort(dim=0, descending=True)  # best clips per text
    ```
    """

    _tied_weights_keys = {"lm_head.decoder.weight": "text_embeddings.word_embeddings.weight"}
    # `forward` takes no loss kwargs: Trainer divides each micro-batch's loss by the gradient-accumulation steps.
    accepts_loss_kwargs = False

    def __init__(self, config: BlapConfig):
        qformer_config = config.qformer_config
        if not 0 <= config.qformer_dec_token_id < qformer_config.vocab_size:
            raise ValueError(
                f"`qformer_dec_token_id` ({config.qformer_dec_token_id}) must be a token of the Q-Former's vocabulary"
                f" of {qformer_config.vocab_size} (`qformer_config.vocab_size`)."
            )
        # Stage 1 needs the Q-Former's text feed-forward layers.
        super().__init__(config, qformer_text_input=True)
        hidden_size = qformer_config.hidden_size
        # Word and position embeddings of the text positions (positions count from 0 at the first text token; query
        # tokens have none); their LayerNorm is `qformer.layernorm`, which normalises queries and text alike.
        self.text_embeddings = Blip2TextEmbeddings(qformer_config)
        self.lm_head = BlapQFormerLMHead(qformer_config)
        self.audio_projection = BlapProjection(hidden_size, config.embed_dim, config.projection_dropout)
        self.text_projection = BlapProjection(hidden_size, config.embed_dim, config.projection_dropout)
        self.atm_head = nn.Linear(hidden_size, 2)
        self.temperature = nn.Parameter(torch.tensor(config.initial_temperature))
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, BlapForRepresentationLearning):
            init.constant_(module.temperature, self.config.initial_temperature)
        elif isinstance(module, Blip2TextEmbeddings):  # a non-persistent buffer, never in a checkpoint
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))

    def get_input_embeddings(self) -> nn.Module:
        return self.text_embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_embeddings.word_embeddings = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head.decoder = new_embeddings

    def set_stage1_trainable(self, train_audio_encoder: bool = True) -> list[str]:
        """
        Make every parameter trainable, except the audio encoder's when `train_audio_encoder=False`; a frozen audio
        encoder is also held in eval mode, so its BatchNorm statistics never move. The paper fine-tunes the audio
        encoder in stage 1 (the released code freezes it).

        Returns:
            `list[str]`: the names of the trainable parameters.
        """
        frozen = () if train_audio_encoder else ("audio_encoder",)
        return self._freeze(frozen=frozen, held_in_eval=frozen)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *model_args, **kwargs
    ) -> "BlapForRepresentationLearning":
        """
        `PreTrainedModel.from_pretrained` (also what `AutoModel.from_pretrained` runs for a "blap" checkpoint), which
        refuses a captioning (stage-2) checkpoint: it has none of stage 1's own weights (text embeddings, projections,
        matching head), which would all be initialised at random. Those load with `AutoModelForSpeechSeq2Seq`.

        Raises:
            ValueError: the checkpoint's `config.json` names `BlapForConditionalGeneration` as its architecture.
        """
        config = kwargs.get("config")
        if not isinstance(config, BlapConfig):
            hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
            config = BlapConfig.from_pretrained(config or pretrained_model_name_or_path, **hub_kwargs)
        architectures = config.architectures or []
        if BlapForConditionalGeneration.__name__ in architectures and cls.__name__ not in architectures:
            raise ValueError(
                f"{pretrained_model_name_or_path} holds a captioning (stage-2) model, BlapForConditionalGeneration:"
                ' load it with AutoModelForSpeechSeq2Seq.from_pretrained (or pipeline("audio-to-text")). AutoModel'
                f" gives {cls.__name__}, the stage-1 embedding model, whose weights this checkpoint does not have."
            )
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    # ------------------------------------------------------------------ Q-Former passes

    @staticmethod
    def audio_text_attention_mask(
        text_attention_mask: torch.Tensor, num_query_tokens: int, causal: bool, dtype: torch.dtype
    ) -> torch.Tensor:
        r"""
        The additive self-attention mask of a Q-Former pass over `[queries ; text]`.

        Every position sees every query and the non-padding text, except with `causal=True` (caption generation):
        queries then see queries only, and a text position sees the text up to itself. Masked entries hold the most
        negative `dtype` value (an additive mask: `Blip2QFormerModel` adds a float mask to the scores and passes a 4D
        mask through unchanged).

        Args:
            text_attention_mask (`torch.LongTensor` of shape `(batch_size, text_length)`): 1 for tokens, 0 for padding.
            num_query_tokens (`int`): 0 for a text-only pass.
            causal (`bool`): the caption-generation pattern.
            dtype (`torch.dtype`): the dtype of the attention scores.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, 1, num_query_tokens + text_length, num_query_tokens +
            text_length)`: 0 where attention is allowed.
        """
        batch_size, text_length = text_attention_mask.shape
        length = num_query_tokens + text_length
        device = text_attention_mask.device
        keys = torch.cat(
            [torch.ones(batch_size, num_query_tokens, dtype=torch.bool, device=device), text_attention_mask.bool()],
            dim=1,
        )
        allowed = keys[:, None, :].expand(batch_size, length, length).clone()
        if causal:
            allowed[:, :num_query_tokens, num_query_tokens:] = False
            earlier = torch.ones(text_length, text_length, dtype=torch.bool, device=device).tril()
            allowed[:, num_query_tokens:, num_query_tokens:] &= earlier
        mask = torch.zeros(batch_size, 1, length, length, dtype=dtype, device=device)
        return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)

    def _embed_text(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """`(batch_size, text_length)` token ids -> `(batch_size, text_length, hidden_size)` text embeddings."""
        num_positions = self.text_embeddings.position_embeddings.num_embeddings
        if input_ids.shape[1] > num_positions:
            raise ValueError(
                f"`input_ids` has {input_ids.shape[1]} tokens but the Q-Former has {num_positions} positions: truncate"
                " the text (the processor's `max_txt_len`)."
            )
        return self.text_embeddings(input_ids=input_ids)

    def _text_pass(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text alone through the Q-Former (text feed-forward, no cross-attention): `(batch_size, text_length, H)`."""
        embeds = self._embed_text(input_ids)
        dtype = self.qformer.layernorm.weight.dtype
        mask = self.audio_text_attention_mask(attention_mask, 0, causal=False, dtype=dtype)
        with self._qformer_precision(embeds.device):
            return self.qformer(query_embeds=embeds.to(dtype), query_length=0, attention_mask=mask).last_hidden_state

    def _audio_text_pass(
        self, audio_embeds: torch.Tensor, input_ids: torch.LongTensor, attention_mask: torch.Tensor, causal: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Queries (cross-attending to `audio_embeds`) and text through the Q-Former together.

        Returns:
            `tuple(torch.FloatTensor)`: query outputs `(batch_size, num_query_tokens, H)` and text outputs
            `(batch_size, text_length, H)`.
        """
        num_queries = self.query_tokens.shape[1]
        queries = self.query_tokens.expand(input_ids.shape[0], -1, -1)
        text = self._embed_text(input_ids)
        embeds = torch.cat([queries, text.to(queries.dtype)], dim=1)
        dtype = self.qformer.layernorm.weight.dtype
        mask = self.audio_text_attention_mask(attention_mask, num_queries, causal, dtype)
        with self._qformer_precision(embeds.device):
            hidden = self.qformer(
                query_embeds=embeds.to(dtype),
                query_length=num_queries,
                attention_mask=mask,
                encoder_hidden_states=audio_embeds.to(dtype),
            ).last_hidden_state
        return hidden[:, :num_queries], hidden[:, num_queries:]

    # ------------------------------------------------------------------ embeddings

    def get_audio_embeddings(
        self, input_features: torch.Tensor | None = None, audio_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Unit-norm audio embeddings in the shared audio-text space, one per query token.

        Args:
            input_features (`torch.FloatTensor` of shape `(batch_size, 1, num_frames, num_mel_bins)`, *optional*).
            audio_embeds (`torch.FloatTensor` of shape `(batch_size, num_audio_tokens, audio_hidden_size)`,
                *optional*): audio tokens from `get_audio_features`, instead of `input_features`.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, num_query_tokens, embed_dim)`.
        """
        query_output = self.get_qformer_features(input_features=input_features, audio_embeds=audio_embeds)
        return F.normalize(self.audio_projection(query_output.last_hidden_state), dim=-1)

    def get_text_embeddings(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Unit-norm text embeddings in the shared audio-text space (the projected `[CLS]` output of a text-only pass).

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`): BERT tokens starting with `[CLS]`
                ([`BlapStage1Processor`]).
            attention_mask (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*).

        Returns:
            `torch.FloatTensor` of shape `(batch_size, embed_dim)`.
        """
        if input_ids is None or input_ids.ndim != 2:
            shape = None if input_ids is None else tuple(input_ids.shape)
            raise ValueError(f"`input_ids` must have shape (batch_size, text_length), got {shape}.")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"`attention_mask` has shape {tuple(attention_mask.shape)} but `input_ids` has"
                f" {tuple(input_ids.shape)}."
            )
        text_output = self._text_pass(input_ids, attention_mask)
        return F.normalize(self.text_projection(text_output[:, 0]), dim=-1)

    @staticmethod
    def similarity(audio_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """
        Cosine similarity of every clip with every text: the best-matching query token's.

        Args:
            audio_embeds (`torch.FloatTensor` of shape `(num_audio, num_query_tokens, embed_dim)`): from
                `get_audio_embeddings`.
            text_embeds (`torch.FloatTensor` of shape `(num_text, embed_dim)`): from `get_text_embeddings`.

        Returns:
            `torch.FloatTensor` of shape `(num_audio, num_text)`, in [-1, 1]. For text-to-music retrieval, sort a
            column; for music-to-text, a row.
        """
        if audio_embeds.ndim != 3 or text_embeds.ndim != 2 or audio_embeds.shape[-1] != text_embeds.shape[-1]:
            raise ValueError(
                "`audio_embeds` must be (num_audio, num_query_tokens, embed_dim) and `text_embeds` (num_text,"
                f" embed_dim), got {tuple(audio_embeds.shape)} and {tuple(text_embeds.shape)}."
            )
        return torch.einsum("aqd,td->atq", audio_embeds, text_embeds.to(audio_embeds.dtype)).amax(dim=-1)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        input_features: torch.Tensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        return_loss: bool = False,
        return_dict: bool | None = None,
    ) -> BlapRepresentationLearningOutput | tuple:
        r"""
        Similarities of every clip with every text and, with `return_loss=True`, the three stage-1 losses over paired
        clips and captions.

        Under `torch.distributed` (an initialised default process group of several processes) the losses use the
        whole batch of all processes: contrastive similarities against every process's features, with gradients
        flowing back into each process's local features; hard negatives for matching drawn from the whole batch; the
        caption loss averaged over all processes' tokens. Each process's losses are scaled so that their mean over
        processes (what DDP's gradient averaging computes) equals the losses of one process holding the whole batch.
        Every process must then call `forward` with `return_loss=True` together.

        Args:
            input_features (`torch.FloatTensor` of shape `(num_audio, 1, num_frames, num_mel_bins)`): log-mel.
            input_ids (`torch.LongTensor` of shape `(num_text, text_length)`): BERT tokens starting with `[CLS]`;
                with `return_loss`, clip `i`'s caption is row `i`.
            attention_mask (`torch.LongTensor` of shape `(num_text, text_length)`, *optional*).
            return_loss (`bool`, *optional*, defaults to `False`): compute `loss`, `loss_atc`, `loss_atm`, `loss_lm`
                (needs as many captions as clips, and at least two pairs over all processes).

        Returns:
            [`BlapRepresentationLearningOutput`].
        """
        self._check_input_features(input_features)
        if input_ids is None:
            raise ValueError("`input_ids` is required: the texts tokenized by BlapStage1Processor.")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        audio_embeds = self.get_audio_features(input_features)
        query_output = self.get_qformer_features(audio_embeds=audio_embeds).last_hidden_state
        audio_feats = F.normalize(self.audio_projection(query_output), dim=-1)
        text_feat = self.get_text_embeddings(input_ids, attention_mask)
        temperature = self.temperature.clamp(0.001, 0.5)
        logits_per_audio = self.similarity(audio_feats, text_feat) / temperature

        output = BlapRepresentationLearningOutput(
            logits_per_audio=logits_per_audio,
            logits_per_text=logits_per_audio.t(),
            audio_embeds=audio_feats,
            text_embeds=text_feat,
        )
        if return_loss:
            if input_ids.shape[0] != input_features.shape[0]:
                raise ValueError(
                    f"`return_loss=True` needs one caption per clip: `input_features` has {input_features.shape[0]}"
                    f" clips but `input_ids` has {input_ids.shape[0]} rows."
                )
            losses = self._stage1_losses(audio_embeds, audio_feats, text_feat, input_ids, attention_mask, temperature)
            output.loss_atc, output.loss_atm, output.loss_lm, output.lm_logits = losses
            output.loss = output.loss_atc + output.loss_atm + output.loss_lm
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    def _stage1_losses(
        self,
        audio_embeds: torch.Tensor,
        audio_feats: torch.Tensor,
        text_feat: torch.Tensor,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        temperature: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """ATC, ATM and LM losses of `B` local pairs within a global batch of `N` pairs over `W` processes."""
        batch_size = input_ids.shape[0]
        rank, sizes = _distributed_layout(batch_size, input_ids.device)
        world_size, total = len(sizes), sum(sizes)
        if total < 2:
            raise ValueError("The stage-1 losses need at least 2 audio-caption pairs per batch (over all processes).")
        start = sum(sizes[:rank])
        local = slice(start, start + batch_size)

        def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
            return tensor if world_size == 1 else _GatherWithGrad.apply(tensor, sizes, rank)

        def gather(tensor: torch.Tensor) -> torch.Tensor:
            return tensor if world_size == 1 else _all_gather(tensor, sizes)

        # ATC: local clips against all texts, local texts against all clips; targets offset by this process's start.
        audio_feats_all = gather_with_grad(audio_feats)  # (N, Q, D)
        text_feat_all = gather_with_grad(text_feat)  # (N, D)
        sim_a2t = self.similarity(audio_feats, text_feat_all) / temperature  # (B, N)
        sim_t2a = self.similarity(audio_feats_all, text_feat).t() / temperature  # (B, N)
        targets = torch.arange(start, start + batch_size, device=sim_a2t.device)
        smoothing = self.config.label_smoothing
        loss_atc = (
            F.cross_entropy(sim_a2t, targets, reduction="sum", label_smoothing=smoothing)
            + F.cross_entropy(sim_t2a, targets, reduction="sum", label_smoothing=smoothing)
        ) / 2
        loss_atc = loss_atc * world_size / total

        # ATM: for every text a hard negative clip, for every clip a hard negative text, drawn for the whole batch
        # at once (so that a fixed seed draws the same negatives however the batch is split over processes).
        with torch.no_grad():
            own = torch.eye(total, dtype=torch.bool, device=sim_a2t.device)
            weights_t2a = gather(sim_t2a.detach().float()).masked_fill(own, float("-inf")).softmax(dim=1)
            weights_a2t = gather(sim_a2t.detach().float()).masked_fill(own, float("-inf")).softmax(dim=1)
            negative_audio = torch.multinomial(weights_t2a, 1).squeeze(1)[local]
            negative_text = torch.multinomial(weights_a2t, 1).squeeze(1)[local]
        audio_embeds_all = gather_with_grad(audio_embeds)
        length = torch.tensor([input_ids.shape[1]], device=input_ids.device)
        max_length = max(_all_gather(length, [1] * world_size).tolist()) if world_size > 1 else input_ids.shape[1]
        pad = (0, max_length - input_ids.shape[1])
        ids = F.pad(input_ids, pad, value=self.config.qformer_config.pad_token_id)
        mask = F.pad(attention_mask, pad, value=0)
        ids_all, mask_all = gather(ids), gather(mask)
        atm_audio = torch.cat([audio_embeds, audio_embeds_all[negative_audio], audio_embeds])
        atm_ids = torch.cat([ids, ids, ids_all[negative_text]])
        atm_mask = torch.cat([mask, mask, mask_all[negative_text]])
        atm_queries, _ = self._audio_text_pass(atm_audio, atm_ids, atm_mask, causal=False)
        atm_logits = self.atm_head(atm_queries).mean(dim=1)  # (3B, 2)
        atm_labels = torch.cat([atm_logits.new_ones(batch_size), atm_logits.new_zeros(2 * batch_size)]).long()
        loss_atm = F.cross_entropy(atm_logits, atm_labels, reduction="sum") * world_size / (3 * total)

        # LM: [DEC] replaces [CLS]; predict token t+1 from tokens <= t and all queries; mean over all tokens.
        decoder_ids = input_ids.clone()
        decoder_ids[:, 0] = self.config.qformer_dec_token_id
        labels = decoder_ids.masked_fill(attention_mask == 0, -100)[:, 1:]
        _, text_hidden = self._audio_text_pass(audio_embeds, decoder_ids, attention_mask, causal=True)
        lm_logits = self.lm_head(text_hidden)
        token_loss = F.cross_entropy(
            lm_logits[:, :-1].flatten(0, 1).float(),
            labels.flatten(),
            ignore_index=-100,
            reduction="sum",
            label_smoothing=smoothing,
        )
        num_tokens = _all_reduce_sum((labels != -100).sum(), world_size).clamp(min=1)
        loss_lm = token_loss * world_size / num_tokens
        return loss_atc, loss_atm, loss_lm, lm_logits


__all__ = [
    "BlapBeamSearchCache",
    "BlapBufferedLayer",
    "BlapForConditionalGeneration",
    "BlapForConditionalGenerationModelOutput",
    "BlapForRepresentationLearning",
    "BlapPreTrainedModel",
    "BlapRepresentationLearningOutput",
]
