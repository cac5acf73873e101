"""What a gradient holds in memory: the tensors autograd saves for the backward pass."""
import torch


def autograd_saved_bytes(fn):
    """``(fn(), bytes)``: the result of ``fn`` and the bytes of the distinct storages autograd saved for backward
    while it ran (activations, traces, weights), a device-independent measure of a BPTT gradient's memory."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[(storage.data_ptr(), tensor.device)] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = fn()
    return result, sum(storages.values())
