"""The source's own teacher, optional: a frozen SmolVLM (Idefics3) reads the plot of a window and a trained head turns
its last hidden state into per-step anomaly logits.

The source (../shared/seeds/003) fine-tunes a head on ``HuggingFaceTB/SmolVLM-Instruct`` with the vision tower and the
language model frozen: the last hidden state is mean-pooled over the tokens, then Linear -> LayerNorm -> GELU -> a
bidirectional LSTM -> Linear to 256 per-step logits, trained with :func:`training.signals.teacher.teacher_loss`
(``alpha`` 0.5 and 1). The project's default teacher (:mod:`training.signals.teacher`) installs offline; this one
needs the ``vlm`` extra (transformers) and a SmolVLM folder the user has downloaded: nothing here reaches the network.

Choices, and why:

* **How the LSTM gets a sequence.** A mean-pooled vector has no time axis, and an LSTM over a sequence of one step
  is a plain MLP. The first Linear therefore projects the pooled vector to ``chunks x width`` features, viewed as a
  sequence of ``chunks`` (32) coarse time positions; LayerNorm and GELU act per position, the BiLSTM runs along them
  (so neighbouring chunks inform each other), and the last Linear gives each position the logits of its own
  ``steps / chunks`` (8) steps. This keeps the source's pooling and layer order and gives the LSTM a real axis to run
  along, at the price of the head having to learn where on the time axis each pooled feature points (the pooled
  vector has no columns to read).
* **One image, no tiling.** SmolVLM's processor splits a large image into tiles plus a global view (17 images of 81
  tokens for a 1536 px side). A 256 px plot gains nothing from tiling, so the plot is resized to the vision tower's
  own side (384 px for SmolVLM-Instruct) and fed once, as the processor does with ``do_image_splitting=False``:
  ``<fake_token_around_image><global-img><image> x image_seq_len <fake_token_around_image>``.
* **Preprocessing in the module.** Resize, rescale by 1/255 and normalise with the image processor's mean and std
  happen in :meth:`VLMTeacher.preprocess`, so the exported network takes the uint8 plots ``(N, S, S, 3)`` that
  :func:`kdcore.series_plot.render_plots` draws. The resize is an exact box filter when the plot's side is a multiple
  of the tower's (thin 1 px lines survive it; plain bilinear downsampling drops them) and bilinear otherwise (the
  processor's LANCZOS has no ONNX opset-17 equivalent); an upscale, as 256 -> 384, is bilinear either way.
* **The frozen forward is composed from the model's parts** (patch and position embeddings, vision encoder,
  post-layernorm, connector, token embeddings with the image features spliced in at the prompt's image tokens, the
  language model with an explicit causal mask) instead of calling ``Idefics3Model.forward``. The library's forward
  loops over the batch to place variable-resolution patches (the tracer would fix the batch size) and builds its
  causal mask with ``vmap``, which the legacy ONNX exporter cannot trace. For a full-size image and a fixed prompt
  the composition is the same computation; the tests check it against ``Idefics3Model.forward``.
* **Export.** The legacy exporter (``dynamo=False``, opset 17) exports the whole teacher with a dynamic batch axis;
  the tests compare onnxruntime with PyTorch on the tiny configuration.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import (
    AutoTokenizer,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Model,
    PreTrainedTokenizerBase,
)

from training.signals.teacher import teacher_loss

#: Steps of a window, one logit each.
STEPS = 256
#: Coarse time positions the head's LSTM runs along (8 steps each for 256 steps).
CHUNKS = 32
#: Features per coarse position (the head's width).
WIDTH = 256
#: Hidden units of each direction of the head's LSTM.
LSTM_HIDDEN = 128
#: The question after the image in the real model's prompt (SmolVLM's chat format). The source's wording is not
#: published; the head reads a pooled state, so any fixed question works as long as training and serving share it.
QUESTION = "Which time steps of this two-lead ECG plot are anomalous?"
#: Tokens of SmolVLM's image block (its processor's spelling).
FAKE_IMAGE_TOKEN = "<fake_token_around_image>"
GLOBAL_IMAGE_TOKEN = "<global-img>"
IMAGE_TOKEN = "<image>"
#: Files of a checkpoint's weights; one of them must be in the folder given to :func:`load_vlm_teacher`.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
#: Files a tokenizer is loaded from; without one, the prompt is built from ids the config names (the tiny model's).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class ImageNorm:
    """How pixels are scaled before the vision tower: ``(u8 * rescale - mean) / std`` per channel."""

    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """Idefics3's image processor defaults; a folder's preprocessor_config.json overrides them."""
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale: float = 1.0 / 255.0


class VLMHead(nn.Module):
    """The trained part: pooled hidden state ``(N, hidden)`` -> per-step logits ``(N, steps)``.

    Linear(hidden, chunks * width) -> view (N, chunks, width) -> LayerNorm -> GELU -> BiLSTM -> Linear(2 * lstm,
    steps / chunks) -> (N, steps); see the module docstring for why the pooled vector becomes a sequence this way.
    """

    def __init__(self, hidden: int, steps: int = STEPS, chunks: int = CHUNKS, width: int = WIDTH,
                 lstm_hidden: int = LSTM_HIDDEN) -> None:
        super().__init__()
        if steps % chunks:
            raise ValueError(f"the steps ({steps}) must be a multiple of the head's chunks ({chunks})")
        self.steps, self.chunks, self.width = steps, chunks, width
        self.project = nn.Linear(hidden, chunks * width)
        self.norm = nn.LayerNorm(width)
        self.lstm = nn.LSTM(width, lstm_hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * lstm_hidden, steps // chunks)

    def forward(self, pooled: Tensor) -> Tensor:
        x = F.gelu(self.norm(self.project(pooled).view(-1, self.chunks, self.width)))
        x, _ = self.lstm(x)
        return self.out(x).reshape(-1, self.steps)


class VLMTeacher(nn.Module):
    """A frozen Idefics3 model (SmolVLM) and the trainable :class:`VLMHead`: uint8 plots ``(N, S, S, 3)`` ->
    logits ``(N, steps)``.

    Args:
        backbone: The Idefics3 model (``Idefics3Model``, or ``Idefics3ForConditionalGeneration``, whose ``.model``
            is taken). It is frozen here: no gradients, and it stays in eval mode whatever ``train()`` is called with.
        prompt_ids: The whole prompt with the image block expanded: exactly ``backbone.image_seq_len`` image tokens,
            in one run (:func:`prompt_ids_from_tokenizer`, :func:`prompt_ids_from_config`).
        steps: Logits per window.
        norm: Pixel scaling of the model's image processor.
        chunks, width, lstm_hidden: The head's shape (:class:`VLMHead`).

    Raises:
        ValueError: The prompt does not hold one run of ``image_seq_len`` image tokens.
    """

    def __init__(self, backbone: Idefics3Model | Idefics3ForConditionalGeneration, prompt_ids: Sequence[int],
                 steps: int = STEPS, norm: ImageNorm = ImageNorm(), *, chunks: int = CHUNKS, width: int = WIDTH,
                 lstm_hidden: int = LSTM_HIDDEN) -> None:
        super().__init__()
        if isinstance(backbone, Idefics3ForConditionalGeneration):
            backbone = backbone.model  # its language-model head is unused: the teacher reads the last hidden state
        config = backbone.config
        ids = torch.as_tensor(list(prompt_ids), dtype=torch.long)
        where = torch.nonzero(ids == config.image_token_id).flatten()
        seq = backbone.image_seq_len
        if len(where) != seq or (len(where) and int(where[-1] - where[0]) != seq - 1):
            raise ValueError(f"the prompt must hold one run of {seq} image tokens (id {config.image_token_id}), "
                             f"it holds {len(where)}")
        self.backbone = backbone.eval().requires_grad_(False)
        self.image_start = int(where[0])
        self.image_size = int(config.vision_config.image_size)
        # Buffers, not parameters: they move with .to() and are traced as constants. Not persistent, so a saved
        # state dict is the head's and the frozen model's weights only.
        self.register_buffer("prompt_ids", ids, persistent=False)
        self.register_buffer("position_ids", _full_image_position_ids(backbone), persistent=False)
        self.register_buffer("mean", torch.tensor(norm.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(norm.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.rescale = float(norm.rescale)
        # The language model is causal over the whole prompt, as in Idefics3Model.forward. The mask is passed in
        # 4D, which transformers' mask builder returns as-is: its own path uses vmap, which the ONNX tracer cannot
        # follow. True above the diagonal: the future a token may not see.
        future = torch.ones(len(ids), len(ids), dtype=torch.bool).triu(1).view(1, 1, len(ids), len(ids))
        self.register_buffer("future", future, persistent=False)
        self.head = VLMHead(config.text_config.hidden_size, steps, chunks, width, lstm_hidden)
        self.steps = steps

    def train(self, mode: bool = True) -> VLMTeacher:
        """Train or evaluate the head; the frozen model stays in eval mode (no dropout in the features)."""
        super().train(mode)
        self.backbone.eval()
        return self

    def preprocess(self, plots: Tensor) -> Tensor:
        """uint8 plots ``(N, H, W, 3)`` RGB -> normalised pixels ``(N, 3, image_size, image_size)`` float32.

        The plot's size is a Python value here: an exported network keeps the size it was traced with (the batch
        axis stays dynamic).

        Raises:
            ValueError: Not ``(N, H, W, 3)`` uint8.
        """
        if plots.ndim != 4 or plots.shape[-1] != 3 or plots.dtype != torch.uint8:
            raise ValueError(f"plots are uint8 (N, H, W, 3), got {plots.dtype} {tuple(plots.shape)}")
        x = plots.permute(0, 3, 1, 2).float() * self.rescale
        height, width = int(x.shape[-2]), int(x.shape[-1])
        size = self.image_size
        if height == width and height > size and height % size == 0:
            # A box filter: every pixel counts, so the plot's 1 px lines survive the downscale.
            x = F.avg_pool2d(x, height // size)
        elif (height, width) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std

    def features(self, pixels: Tensor) -> Tensor:
        """The frozen model's last hidden state ``(N, prompt length, hidden)`` for normalised pixels.

        The library's computation for one full-size image per prompt, composed from its parts (module docstring).
        """
        model = self.backbone
        embeddings = model.vision_model.embeddings
        dtype = embeddings.patch_embedding.weight.dtype
        patches = embeddings.patch_embedding(pixels.to(dtype)).flatten(2).transpose(1, 2)
        patches = patches + embeddings.position_embedding(self.position_ids)
        hidden = model.vision_model.encoder(inputs_embeds=patches, attention_mask=None).last_hidden_state
        image = model.connector(model.vision_model.post_layernorm(hidden))
        text = model.get_input_embeddings()(self.prompt_ids).unsqueeze(0).expand(pixels.shape[0], -1, -1)
        start, stop = self.image_start, self.image_start + image.shape[1]
        merged = torch.cat([text[:, :start], image.to(text.dtype), text[:, stop:]], dim=1)
        # Additive, in the model's dtype: eager and SDPA attention both take it.
        mask = torch.zeros(self.future.shape, dtype=merged.dtype, device=merged.device)
        mask = mask.masked_fill(self.future, torch.finfo(merged.dtype).min)
        out = model.text_model(inputs_embeds=merged, attention_mask=mask, use_cache=False)
        return out.last_hidden_state

    def frozen_features(self, plots: Tensor) -> Tensor:
        """What the head reads: the frozen model's last hidden state mean-pooled over the prompt, ``(N, hidden)``
        float32 (training computes it once per window, as for :class:`~training.signals.teacher.PlotTeacher`)."""
        with torch.no_grad():  # the frozen part: no graph kept, whatever the caller's grad mode
            return self.features(self.preprocess(plots)).float().mean(dim=1)

    def forward(self, plots: Tensor) -> Tensor:
        """uint8 plots ``(N, S, S, 3)`` -> per-step logits ``(N, steps)`` float32."""
        return self.head(self.frozen_features(plots))


def _full_image_position_ids(backbone: Idefics3Model) -> Tensor:
    """The patch position ids ``(1, patches)`` the library gives a full-size image.

    Taken from one call of the library's own embedding rather than assumed to be 0 .. patches - 1: its bucketing
    (``bucketize`` of ``i / side * (1 - 1e-6)``) maps the grid onto the position table in its own way (on an 8 x 8
    grid the first two rows share ids, and so do the first two columns), and the pretrained tower was trained with
    exactly those ids.
    """
    embeddings = backbone.vision_model.embeddings
    weight = embeddings.patch_embedding.weight
    side = embeddings.num_patches_per_side
    captured: list[Tensor] = []
    hook = embeddings.position_embedding.register_forward_hook(lambda _m, args, _o: captured.append(args[0].clone()))
    try:
        with torch.no_grad():
            image = torch.zeros(1, 3, embeddings.image_size, embeddings.image_size, dtype=weight.dtype,
                                device=weight.device)
            embeddings(image, torch.ones(1, side, side, dtype=torch.bool, device=weight.device))
    finally:
        hook.remove()
    return captured[0].long()


def prompt_ids_from_config(config: Idefics3Config) -> list[int]:
    """The image block's ids from the config alone: ``[bos] <fake> <global> <image> x seq <fake>``.

    For models whose config names ``fake_image_token_id`` and ``global_image_token_id`` (the tiny model of
    :func:`tiny_vlm_config`): no tokenizer, no text question. A real SmolVLM folder has a tokenizer
    (:func:`prompt_ids_from_tokenizer`).

    Raises:
        ValueError: The config does not name the two wrapper tokens.
    """
    fake, glob = getattr(config, "fake_image_token_id", None), getattr(config, "global_image_token_id", None)
    if fake is None or glob is None:
        raise ValueError("the config names no fake_image_token_id / global_image_token_id; the prompt needs the "
                         "model's tokenizer")
    bos = config.text_config.bos_token_id
    return ([bos] if bos is not None else []) + [fake, glob] + [config.image_token_id] * image_seq_len(config) + [fake]


def prompt_ids_from_tokenizer(tokenizer: PreTrainedTokenizerBase, config: Idefics3Config,
                              question: str = QUESTION) -> list[int]:
    """SmolVLM's chat prompt with one unsplit image: ``<|im_start|>User:<image block>question<end_of_utterance>
    \\nAssistant:``, tokenised by the model's own tokenizer."""
    block = FAKE_IMAGE_TOKEN + GLOBAL_IMAGE_TOKEN + IMAGE_TOKEN * image_seq_len(config) + FAKE_IMAGE_TOKEN
    text = f"<|im_start|>User:{block}{question}<end_of_utterance>\nAssistant:"
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def image_seq_len(config: Idefics3Config) -> int:
    """Tokens one image becomes after the connector's pixel shuffle (81 for SmolVLM-Instruct)."""
    vision = config.vision_config
    return (vision.image_size // vision.patch_size) ** 2 // config.scale_factor**2


def tiny_vlm_config(image_size: int = 64) -> Idefics3Config:
    """A tiny Idefics3 configuration of SmolVLM's architecture (SigLIP-style tower, pixel-shuffle connector, Llama
    language model) for tests and smoke runs: 2 + 2 layers, widths 32 and 64, a 128-token vocabulary, 8 px patches
    (64 px: an 8 x 8 grid, 16 image tokens). Randomly initialised by ``Idefics3Model(config)``; the wrapper token
    ids are in the config so the prompt needs no tokenizer."""
    return Idefics3Config(
        image_token_id=127, scale_factor=2, pad_token_id=0,
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": image_size, "patch_size": 8},
        text_config={"model_type": "llama", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 256, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
        fake_image_token_id=126, global_image_token_id=125,
    )


def teacher_from_config(config: Idefics3Config, steps: int = STEPS, **head: int) -> VLMTeacher:
    """A teacher on a randomly initialised model of ``config`` (no download), the prompt from the config's ids;
    ``head`` passes ``chunks``, ``width``, ``lstm_hidden`` on."""
    return VLMTeacher(Idefics3Model(config), prompt_ids_from_config(config), steps, **head)


def _image_norm(folder: Path) -> ImageNorm:
    """The image processor's scaling from the folder's preprocessor_config.json, the defaults without one."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return ImageNorm()
    raw = json.loads(path.read_text())
    default = ImageNorm()

    def three(value: float | list[float] | None, fallback: tuple[float, float, float]) -> tuple[float, float, float]:
        if value is None:
            return fallback
        values = [float(v) for v in value] if isinstance(value, list) else [float(value)] * 3
        return (values[0], values[1], values[2])

    return ImageNorm(three(raw.get("image_mean"), default.mean), three(raw.get("image_std"), default.std),
                     float(raw.get("rescale_factor", default.rescale)))


def load_vlm_teacher(folder: Path, steps: int = STEPS, *, dtype: torch.dtype | None = None, **head: int) -> VLMTeacher:
    """A teacher on the SmolVLM (Idefics3) checkpoint in a local ``folder`` (e.g. what
    ``huggingface-cli download HuggingFaceTB/SmolVLM-Instruct --local-dir folder`` wrote), with a fresh head.

    Only the folder is read (``local_files_only``). The prompt is tokenised by the folder's tokenizer when it has one,
    else built from the ids its config names (:func:`prompt_ids_from_config`). ``dtype`` loads the frozen model in
    e.g. bfloat16 (SmolVLM-Instruct's 2.2 B parameters are 9 GB in float32); the head stays float32.

    Raises:
        FileNotFoundError: The folder, its config.json or its weights are missing; the message names the folder and
            what is missing.
        ValueError: The config is not an Idefics3 model's, the weights do not cover the model, or the prompt
            cannot be built.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no SmolVLM folder at {folder}: download HuggingFaceTB/SmolVLM-Instruct there first")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a transformers model folder")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(f"{folder} has no model weights (none of {', '.join(WEIGHT_FILES)})")
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if model_type != "idefics3":
        raise ValueError(f"{folder}/config.json is a {model_type!r} model, not an Idefics3 one (SmolVLM-Instruct)")
    # A checkpoint of Idefics3ForConditionalGeneration (SmolVLM's) loads into the base model: the "model." prefix is
    # the base model prefix and the unused lm_head is dropped. Missing keys would be silently random: refuse them.
    backbone, info = Idefics3Model.from_pretrained(folder, local_files_only=True, dtype=dtype,
                                                   output_loading_info=True)
    if info["missing_keys"]:
        raise ValueError(f"the weights in {folder} do not cover the model: {len(info['missing_keys'])} missing, "
                         f"e.g. {sorted(info['missing_keys'])[:3]}")
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        ids = prompt_ids_from_tokenizer(tokenizer, backbone.config)
    else:
        ids = prompt_ids_from_config(backbone.config)
    return VLMTeacher(backbone, ids, steps, _image_norm(folder), **head)


def train_step(teacher: VLMTeacher, optimizer: torch.optim.Optimizer, plots: Tensor, labels: Tensor,
               alpha: float = 0.5) -> float:
    """One optimisation step of the head on a batch: uint8 plots ``(N, S, S, 3)``, per-step labels ``(N, steps)``;
    returns the batch's :func:`teacher_loss` before the step."""
    teacher.train()
    optimizer.zero_grad(set_to_none=True)
    loss = teacher_loss(teacher(plots), labels, alpha)
    loss.backward()
    optimizer.step()
    return float(loss.detach())
