"""Calibration for `corral quantize-gptq`: token windows from a text, and one decoder layer
run on them with corral's own layer modules, capturing the inputs of its linears.

A layer is quantized in AutoGPTQ's "true sequential" order: q/k/v (one shared input), then
o, then gate/up (shared), then down. Before each stage the layer is run over all calibration
sequences with the stages before it already quantized, and the Hessian of the stage's input
is accumulated by a forward hook; after the last stage the layer's output, computed with
every linear quantized, becomes the next layer's input.

Weights stay in HF layout (rows of q_proj/k_proj in rotate-half order): only the copy bound
into corral's Block has its Q/K rows interleaved for corral's RoPE (corral.weights.hf_names).
GPTQ quantizes output rows independently, so quantizing either layout gives the same codes.
"""

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from corral.config import ModelConfig
from corral.model.kv_cache import KVCache
from corral.model.layers import attention_span, rope_tables
from corral.model.llama import Block
from corral.quant.gptq_algorithm import HessianAccumulator
from corral.tokenizer import Tokenizer
from corral.weights.hf_names import LAYER_LINEARS, LAYER_NORMS, interleave_rope_rows

MAX_TEXT_BYTES = 16 << 20  # calibration needs ~nsamples * seq_len tokens, far less than this
# (module whose input is captured, HF linears quantized with that Hessian), in order
STAGES = (
    ("attn.wq", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("attn.wo", ("self_attn.o_proj",)),
    ("ffn.w_gate", ("mlp.gate_proj", "mlp.up_proj")),
    ("ffn.w_down", ("mlp.down_proj",)),
)


def read_calibration_text(path: Path) -> str:
    """The text of the calibration file (its first MAX_TEXT_BYTES bytes, decoded as UTF-8)."""
    if not path.is_file():
        raise FileNotFoundError(f"calibration text not found: {path} (pass --dataset TEXTFILE)")
    with path.open("rb") as f:
        data = f.read(MAX_TEXT_BYTES)
    text = data.decode("utf-8", errors="replace")
    if not text.strip():
        raise ValueError(f"calibration text {path} is empty")
    return text


def calibration_tokens(
    text: str, tokenizer: Tokenizer, n_samples: int, seq_len: int, seed: int, source: str
) -> torch.Tensor:
    """`n_samples` windows of `seq_len` tokens (n_samples, seq_len) int64 at random places of
    the tokenized `text` (windows may overlap), each starting with BOS when the tokenizer
    adds one."""
    if n_samples <= 0 or seq_len <= 1:
        raise ValueError(f"need nsamples >= 1 and seq-len >= 2, got {n_samples} and {seq_len}")
    ids = tokenizer.encode(text, add_special=False)
    bos = tokenizer.bos_id if tokenizer.add_bos else None
    window = seq_len - (bos is not None)
    if len(ids) < window:
        raise ValueError(
            f"{source}: {len(ids)} tokens, fewer than --seq-len {seq_len} needs; pass a longer "
            "--dataset or a smaller --seq-len"
        )
    stream = torch.tensor(ids, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - window + 1, (n_samples,), generator=generator)
    samples = torch.stack([stream[s : s + window] for s in starts.tolist()])  # (S, window)
    if bos is not None:
        samples = torch.cat([torch.full((n_samples, 1), bos), samples], dim=1)  # (S, T)
    return samples


class LayerRunner:
    """One decoder layer as corral's Block, run over the calibration hidden states."""

    def __init__(
        self,
        config: ModelConfig,
        norms: dict[str, torch.Tensor],
        linears: dict[str, torch.Tensor],
        seq_len: int,
        batch_size: int,
        device: torch.device,
    ) -> None:
        """`norms`: HF norm name (input_layernorm, ...) -> (E,); `linears`: HF linear name
        (self_attn.q_proj, ...) -> (N, K) weight in HF layout."""
        self.config = config
        self.batch_size = batch_size
        with torch.device("meta"):
            self.block = Block(config)
        state = {f"{LAYER_NORMS[name]}.weight": w.float() for name, w in norms.items()}
        state.update({f"{LAYER_LINEARS[n]}.weight": self._layout(n, w) for n, w in linears.items()})
        self.block.load_state_dict({k: v.to(device) for k, v in state.items()}, assign=True)
        self.block.eval()
        self.block.attn.cache = KVCache(
            batch_size, seq_len, config.n_head_kv, config.head_dim, torch.float32, device
        )
        self.positions = torch.arange(seq_len, device=device)[None]  # (1, T)
        self.rope = rope_tables(config, seq_len, device)[self.positions]  # (1, T, rd/2, 2)

    def _layout(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """An HF weight as corral's Block wants it: float32, Q/K rows interleaved."""
        weight = weight.float()
        if name == "self_attn.q_proj":
            return interleave_rope_rows(weight, self.config.n_head)
        if name == "self_attn.k_proj":
            return interleave_rope_rows(weight, self.config.n_head_kv)
        return weight

    def set_linear(self, name: str, weight: torch.Tensor) -> None:
        """Replace HF linear `name` (e.g. its quantized-dequantized weight, HF layout)."""
        module = self.block.get_submodule(LAYER_LINEARS[name])
        module.weight = nn.Parameter(self._layout(name, weight).to(module.weight.device), False)

    @torch.inference_mode()
    def run(self, hidden: torch.Tensor) -> torch.Tensor:
        """The layer's output (S, T, E) for its inputs `hidden` (S, T, E)."""
        out = torch.empty_like(hidden)
        for first in range(0, hidden.shape[0], self.batch_size):
            batch = hidden[first : first + self.batch_size]  # (b, T, E)
            span = attention_span(self.positions, self.positions.shape[1], len(batch))  # causal
            layer_out = self.block(batch, self.rope, self.positions, span)  # (b, T, E)
            out[first : first + len(batch)] = layer_out
        return out

    def input_hessian(self, module_name: str, hidden: torch.Tensor) -> torch.Tensor:
        """H = 2 X X^T / n of the inputs X of Block submodule `module_name` over `hidden`."""
        module = self.block.get_submodule(module_name)
        accumulator = HessianAccumulator(module.in_features, hidden.device)
        handle = module.register_forward_hook(lambda _m, inputs, _out: accumulator.add(inputs[0]))
        try:
            self.run(hidden)
        finally:
            handle.remove()
        return accumulator.hessian


def quantize_layer(
    runner: LayerRunner,
    hidden: torch.Tensor,
    quantize: Callable[[str, torch.Tensor], torch.Tensor],
) -> Iterator[str]:
    """Quantize the layer's linears stage by stage; yields each HF linear name once done.

    `quantize(name, hessian)` quantizes linear `name` and returns its dequantized weight
    (HF layout), which replaces the original before the next stage's inputs are captured.
    """
    for module_name, linear_names in STAGES:
        hessian = runner.input_hessian(module_name, hidden)
        for name in linear_names:
            runner.set_linear(name, quantize(name, hessian))
            yield name
        del hessian
