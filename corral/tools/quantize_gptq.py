"""`corral quantize-gptq HF_DIR OUT_DIR`: GPTQ-quantize an HF Llama folder, layer by layer.

Memory stays bounded by one decoder layer: the calibration hidden states (nsamples x
seq-len x hidden, float32) go through the layers one at a time, each layer's weights are
read from the input's safetensors (memory-mapped) only while it is quantized, and every
output tensor is written to its place in OUT_DIR/model.safetensors as soon as it exists.

Time goes into the calibration forward passes (five per layer: one per stage plus the
quantized output) and, for wide layers, GPTQ's column sweep; a CUDA device speeds both.

The input folder is only read. The output is assembled in a hidden sibling folder and
renamed to OUT_DIR at the end, so an interrupted run leaves no half-written checkpoint.
"""

import argparse
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from corral.checkpoints.hf import HFCheckpoint
from corral.config import ModelConfig
from corral.errors import ModelFormatError
from corral.formats.hf import SafetensorsWeights, read_json_object
from corral.formats.hf_config import tied_embeddings
from corral.quant.gptq_algorithm import GPTQSpec, dequantize_result, gptq_quantize
from corral.quant.gptq_pack import PACK_RUN, pack_gptq
from corral.tools.gptq_calibration import (
    LayerRunner,
    calibration_tokens,
    quantize_layer,
    read_calibration_text,
)
from corral.tools.gptq_output import (
    MODEL_FILE,
    StreamingSafetensorsWriter,
    TensorEntry,
    copy_side_files,
    safetensors_metadata,
    write_configs,
)
from corral.weights.hf_names import EMBEDDING, LAYER_LINEARS, LAYER_NORMS, LM_HEAD, linear_shapes

DEFAULT_DATASET = Path("/usr/share/common-licenses/GPL-3")
PACKED = ("qweight", "qzeros", "scales", "g_idx")


@dataclass(frozen=True)
class QuantizeOptions:
    """What `corral quantize-gptq` does besides the GPTQSpec."""

    dataset: Path = DEFAULT_DATASET
    seq_len: int = 2048
    n_samples: int = 128
    seed: int = 0
    batch_size: int = 1
    device: torch.device = torch.device("cpu")
    progress: bool = True


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register `quantize-gptq` on the CLI's subparsers."""
    parser = commands.add_parser(
        "quantize-gptq",
        help="quantize an HF Llama folder with GPTQ (AutoGPTQ checkpoint format)",
        description="Quantize the linear layers of an HF Llama folder (safetensors) with GPTQ "
        "and write an AutoGPTQ-format checkpoint (model.safetensors, config.json with "
        "quantization_config, quantize_config.json, tokenizer files).",
    )
    parser.add_argument("hf_dir", type=Path, metavar="HF_DIR", help="input HF model folder")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="new output folder")
    add = parser.add_argument
    add("--bits", type=int, choices=(2, 3, 4, 8), default=4, help="bits per weight (4)")
    add(
        "--group-size",
        type=int,
        choices=(32, 64, 128, -1),
        default=128,
        help="input columns sharing a scale/zero (128); -1: whole rows",
    )
    add("--act-order", action="store_true", help="desc_act: columns by descending Hessian diagonal")
    add(
        "--damp",
        type=float,
        default=0.01,
        help="Hessian dampening: fraction of its mean diagonal (0.01)",
    )
    add(
        "--sym",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="symmetric grid (default) or min/max",
    )
    add(
        "--dataset",
        type=Path,
        default=DEFAULT_DATASET,
        metavar="TEXTFILE",
        help=f"calibration text (default {DEFAULT_DATASET})",
    )
    add("--seq-len", type=int, default=2048, help="tokens per calibration sample (2048)")
    add("--nsamples", type=int, default=128, help="calibration samples (128)")
    add("--seed", type=int, default=0, help="seed choosing the calibration windows (0)")
    add("--batch-size", type=int, default=1, help="samples per calibration forward pass (1)")
    add("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    return parser


def run(args: argparse.Namespace) -> None:
    """Entry point of `corral quantize-gptq`."""
    spec = GPTQSpec(
        bits=args.bits,
        group_size=args.group_size,
        sym=args.sym,
        act_order=args.act_order,
        damp=args.damp,
        min_zero=1,
    )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    options = QuantizeOptions(
        dataset=args.dataset,
        seq_len=args.seq_len,
        n_samples=args.nsamples,
        seed=args.seed,
        batch_size=args.batch_size,
        device=torch.device(device),
    )
    out = quantize_folder(args.hf_dir, args.out_dir, spec, options)
    size = (out / MODEL_FILE).stat().st_size / (1 << 20)
    order = ", act-order" if spec.act_order else ""
    print(f"wrote {out} ({spec.bits}-bit, group size {spec.group_size}{order}; {size:.1f} MiB)")


def quantize_folder(hf_dir: Path, out_dir: Path, spec: GPTQSpec, options: QuantizeOptions) -> Path:
    """Quantize the HF Llama folder `hf_dir` into the new folder `out_dir`; returns it."""
    hf_dir, out_dir = hf_dir.expanduser().resolve(), out_dir.expanduser().resolve()
    _check_folders(hf_dir, out_dir)
    _check_options(options)
    with HFCheckpoint(hf_dir) as checkpoint:
        if checkpoint.kind == "gptq":
            raise ModelFormatError(f"{hf_dir}: already a GPTQ checkpoint")
        config, tokenizer = checkpoint.config, checkpoint.tokenizer()
    if options.seq_len > config.context_length:
        raise ValueError(
            f"--seq-len {options.seq_len} exceeds the model's context ({config.context_length})"
        )
    raw_config = read_json_object(hf_dir / "config.json")
    assert raw_config is not None
    text = read_calibration_text(options.dataset)
    tokens = calibration_tokens(
        text, tokenizer, options.n_samples, options.seq_len, options.seed, str(options.dataset)
    )
    prefixes = _quantized_prefixes(config, tied_embeddings(raw_config, str(hf_dir)))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{secrets.token_hex(4)}"
    staging.mkdir()  # (mkdtemp would make it private to the user)
    try:
        store = SafetensorsWeights(hf_dir)
        try:
            _write_model(store, staging / MODEL_FILE, config, prefixes, spec, tokens, options)
        finally:
            store.close()
        write_configs(staging, raw_config, spec)
        copy_side_files(hf_dir, staging)
        if out_dir.exists():
            out_dir.rmdir()  # checked empty above
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _check_folders(hf_dir: Path, out_dir: Path) -> None:
    if not hf_dir.is_dir():
        raise FileNotFoundError(f"input folder not found: {hf_dir}")
    if out_dir == hf_dir or out_dir.is_relative_to(hf_dir) or hf_dir.is_relative_to(out_dir):
        raise ValueError(f"OUT_DIR {out_dir} must lie outside HF_DIR {hf_dir} (and not hold it)")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"OUT_DIR {out_dir} already exists and is not an empty folder")


def _check_options(options: QuantizeOptions) -> None:
    if options.n_samples < 1 or options.seq_len < 2 or options.batch_size < 1:
        raise ValueError("--nsamples and --batch-size must be >= 1 and --seq-len >= 2")


def _quantized_prefixes(config: ModelConfig, tied: bool) -> dict[str, tuple[int, int]]:
    """HF prefix -> (N, K) of every decoder linear (the LM head stays fp16, as AutoGPTQ)."""
    shapes = {p: shape for p, (_, shape) in linear_shapes(config, tied).items() if p != LM_HEAD}
    for prefix, (n_out, n_in) in shapes.items():
        if n_out % PACK_RUN or n_in % PACK_RUN:
            raise ModelFormatError(
                f"'{prefix}.weight' is {n_out} x {n_in}: GPTQ packing needs both sides to be "
                f"multiples of {PACK_RUN}"
            )
    return shapes


def _packed_entries(prefix: str, shape: tuple[int, int], spec: GPTQSpec) -> list[TensorEntry]:
    n_out, n_in = shape
    groups = 1 if spec.group_size == -1 else -(-n_in // spec.group_size)
    return [
        TensorEntry(f"{prefix}.qweight", torch.int32, (n_in * spec.bits // 32, n_out)),
        TensorEntry(f"{prefix}.qzeros", torch.int32, (groups, n_out * spec.bits // 32)),
        TensorEntry(f"{prefix}.scales", torch.float16, (groups, n_out)),
        TensorEntry(f"{prefix}.g_idx", torch.int32, (n_in,)),
    ]


def _stored(tensor: torch.Tensor) -> torch.Tensor:
    """A copied tensor as written: floating point as float16, anything else unchanged."""
    return tensor.to(torch.float16) if tensor.is_floating_point() else tensor


def _write_model(
    store: SafetensorsWeights,
    path: Path,
    config: ModelConfig,
    prefixes: dict[str, tuple[int, int]],
    spec: GPTQSpec,
    tokens: torch.Tensor,
    options: QuantizeOptions,
) -> None:
    """Write model.safetensors: copied tensors first, then each layer as it is quantized."""
    dense = {f"{prefix}.weight" for prefix in prefixes}
    copied = [name for name in store.location if name not in dense]
    entries = []
    for name in copied:
        info = store.info(name)
        dtype = torch.float16 if info.torch_dtype.is_floating_point else info.torch_dtype
        entries.append(TensorEntry(name, dtype, info.shape))
    for prefix, shape in prefixes.items():
        entries.extend(_packed_entries(prefix, shape, spec))
    writer = StreamingSafetensorsWriter(path, entries, safetensors_metadata(spec))
    try:
        for name in copied:
            writer.write(name, _stored(store.tensor(name)))
        embedding = store.tensor(EMBEDDING)
        hidden = F.embedding(tokens, embedding).to(options.device, torch.float32)  # (S, T, E)
        del embedding
        with _progress(options.progress) as progress:
            task = progress.add_task("quantizing", total=len(prefixes))
            for layer in range(config.n_layer):
                done = _LayerJob(store, writer, config, layer, hidden, spec, options)
                for name in done:
                    text = f"layer {layer + 1}/{config.n_layer} {name}"
                    progress.update(task, advance=1, description=text)
                hidden = done.output
    except BaseException:
        writer.discard()
        raise
    writer.close()


class _LayerJob:
    """Quantize one decoder layer, writing its packed linears: iterate for the names of the
    linears as they are done, then read `output`, the layer's output (S, T, E)."""

    def __init__(
        self,
        store: SafetensorsWeights,
        writer: StreamingSafetensorsWriter,
        config: ModelConfig,
        layer: int,
        hidden: torch.Tensor,
        spec: GPTQSpec,
        options: QuantizeOptions,
    ) -> None:
        self.base = f"model.layers.{layer}"
        self.writer, self.spec, self.hidden = writer, spec, hidden
        device = options.device
        norms = {name: store.tensor(f"{self.base}.{name}.weight") for name in LAYER_NORMS}
        self.linears = {
            name: store.tensor(f"{self.base}.{name}.weight").to(device, torch.float32)
            for name in LAYER_LINEARS
        }
        self.runner = LayerRunner(
            config, norms, self.linears, hidden.shape[1], options.batch_size, device
        )
        self.output: torch.Tensor | None = None

    def _quantize(self, name: str, hessian: torch.Tensor) -> torch.Tensor:
        result = gptq_quantize(self.linears[name], hessian, self.spec)
        packed = pack_gptq(result, self.spec.bits)
        for field in PACKED:
            self.writer.write(f"{self.base}.{name}.{field}", packed[field])
        return dequantize_result(result)

    def __iter__(self) -> Iterator[str]:
        yield from quantize_layer(self.runner, self.hidden, self._quantize)
        self.output = self.runner.run(self.hidden)


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description:<32}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )
