"""What a gradient holds in memory (the tensors autograd saves for the backward pass), and what a device has free."""
import os

import torch


def available_bytes(device):
    """Free memory of ``device``: the CUDA allocator's free bytes, or the host's available physical memory."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


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
