"""Format-neutral weights: quantized tensors (QTensor) and the tensor name tables of each format."""
