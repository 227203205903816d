"""GPTQ and AWQ checkpoints written from a dense HF folder with quire's own packing code
(quire.models.hf_quant, from the formats' specifications; round to nearest, no calibration),
plus the dense folder of the same weights dequantized: the reference the quantized path is
checked against. No network.

    python -m quire.testing.quantized_models SRC DST --method gptq [--bits 4] \\
        [--group-size 128] [--desc-act] [--reference REF_DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import zlib
from typing import Any

import numpy as np

from quire.models.checkpoint import read_safetensors, safetensors_files
from quire.models.hf_quant import dequantize_reference, quantize_awq, quantize_gptq

# The projections GPTQ / AWQ tools quantize (embedding, head and norms stay dense).
_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
           "qkv_proj", "gate_up_proj", "w1", "w2", "w3")


def _input_seed(prefix: str) -> int:
    """Layers that read the same input share GPTQ's act-order (it follows that input's
    Hessian): q/k/v, and gate/up, get one seed per decoder layer."""
    module, _, proj = prefix.rpartition(".")
    shared = {"q_proj": "in", "k_proj": "in", "v_proj": "in", "qkv_proj": "in",
              "gate_proj": "mlp", "up_proj": "mlp", "gate_up_proj": "mlp", "w1": "mlp",
              "w3": "mlp"}
    return zlib.crc32(f"{module.rpartition('.')[0]}/{shared.get(proj, proj)}".encode())


def write_quantized(src: str, dst: str, method: str = "gptq", bits: int = 4,
                    group_size: int = 128, desc_act: bool = False, sym: bool = True,
                    reference: str | None = None) -> str:
    """Copy the folder src to dst with every 2-D projection weight quantized; with
    reference, also write there the dense folder of the dequantized weights. Returns dst."""
    from safetensors.numpy import save_file

    qc: dict[str, Any] = {"quant_method": method, "bits": bits, "group_size": group_size}
    if method == "gptq":
        qc.update(desc_act=desc_act, sym=sym, checkpoint_format="gptq")
    else:
        qc.update(version="gemm", zero_point=True)
    tensors: dict[str, np.ndarray] = {}
    dense: dict[str, np.ndarray] = {}
    for path in safetensors_files(src):
        for name, w in read_safetensors(path):
            prefix, _, leaf = name.rpartition(".")
            if leaf == "weight" and w.ndim == 2 and prefix.rsplit(".", 1)[-1] in _LINEAR:
                w32 = np.asarray(w, np.float32)
                parts = quantize_gptq(w32, bits, group_size, desc_act, sym,
                                      seed=_input_seed(prefix)) \
                    if method == "gptq" else quantize_awq(w32, group_size)
                tensors.update({f"{prefix}.{k}": v for k, v in parts.items()})
                dense[name] = dequantize_reference(method, parts, qc).astype(w.dtype)
            else:
                tensors[name] = np.ascontiguousarray(w)
                dense[name] = np.ascontiguousarray(w)
    for out, content, config_qc in ((dst, tensors, qc), (reference, dense, None)):
        if out is None:
            continue
        shutil.copytree(src, out, ignore=shutil.ignore_patterns("*.safetensors",
                                                                "*.safetensors.index.json"))
        save_file(content, os.path.join(out, "model.safetensors"))
        with open(os.path.join(out, "config.json")) as f:
            config = json.load(f)
        config.pop("quantization_config", None)
        if config_qc is not None:
            config["quantization_config"] = config_qc
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(config, f, indent=1)
    return dst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--method", choices=["gptq", "awq"], default="gptq")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--desc-act", action="store_true")
    p.add_argument("--reference", default=None)
    a = p.parse_args()
    write_quantized(a.src, a.dst, a.method, a.bits, a.group_size, a.desc_act,
                    reference=a.reference)


if __name__ == "__main__":
    main()
