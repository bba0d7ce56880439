"""Memory estimates (corral.engine.memory) against the sizes gguf-py reads from the file."""

import gguf
import torch

from corral.checkpoints import open_checkpoint
from corral.default_model import default_model_path
from corral.engine.memory import estimate_memory


def test_gguf_estimate_counts_the_packed_matrices_at_their_stored_size():
    path = default_model_path()  # SmolLM2: Q4_1 matrices, a Q8_0 embedding tied to the head
    tensors = gguf.GGUFReader(path).tensors
    matrices = [t for t in tensors if len(t.shape) == 2 and t.name != "token_embd.weight"]
    embedding = next(t for t in tensors if t.name == "token_embd.weight")
    stored = sum(int(t.n_bytes) for t in matrices) + int(embedding.n_bytes)  # + the head copy
    all_params = sum(int(t.n_elements) for t in tensors)  # the tied head is not in the file
    dense_params = all_params - sum(int(t.n_elements) for t in matrices)
    with open_checkpoint(path) as checkpoint:
        packed = checkpoint.packed_weights()
        estimate = estimate_memory(checkpoint.config, 256, torch.float32, packed)
    assert estimate.weights == stored + 4 * dense_params
