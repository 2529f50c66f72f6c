"""Speed on this machine, behind one door: the torch inference fast path (`inference`: BN folding,
TorchScript freeze, ONNX Runtime), and bf16 training on CPUs (`bf16_backward`, `fused_bn_act`, compiled
`ckernels`). The CPU facts these choices read are in `base.runtime` (torch-free).
"""
