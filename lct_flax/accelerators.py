"""The accelerators `lct_flax.plan` compiles for, with their public figures: memory per device,
peak dense bfloat16 FLOP/s, HBM bandwidth, devices per host, and how JAX describes them for a
deviceless (ahead-of-time) compile. Plain Python.

Sources (dense, i.e. without structured sparsity):
* H100 SXM5 80 GB: 989 TFLOP/s bf16, 3.35 TB/s HBM3 (NVIDIA H100 datasheet,
  https://www.nvidia.com/en-us/data-center/h100/); 132 SMs, compute capability 9.0.
* H200 SXM 141 GB: 989 TFLOP/s bf16, 4.8 TB/s HBM3e
  (https://www.nvidia.com/en-us/data-center/h200/); the H100's die.
* A100 SXM4 80 GB: 312 TFLOP/s bf16, 2,039 GB/s HBM2e (NVIDIA A100 datasheet,
  https://www.nvidia.com/en-us/data-center/a100/); 108 SMs, compute capability 8.0.
* TPU v4: 275 TFLOP/s bf16, 32 GiB HBM2 at 1,200 GB/s per chip, 4 chips per host
  (https://cloud.google.com/tpu/docs/v4).
* TPU v5e: 197 TFLOP/s bf16, 16 GiB HBM2 at 819 GB/s, 8 chips per host (v5litepod-8)
  (https://cloud.google.com/tpu/docs/v5e).
* TPU v5p: 459 TFLOP/s bf16, 95 GiB HBM2e at 2,765 GB/s, 4 chips per host
  (https://cloud.google.com/tpu/docs/v5p).
* TPU v6e (Trillium): 918 TFLOP/s bf16, 32 GiB HBM at 1,640 GB/s, 8 chips per host
  (https://cloud.google.com/tpu/docs/v6e).

The GPUs' compile descriptions (XLA's GpuTargetConfig) hold the figures XLA's GPU compiler reads
(SM count, clock, shared memory, L2, memory size and bandwidth), as XLA's own
tools/hlo_opt/gpu_specs describe the same parts; the CUDA runtime is 12.8 (jax-cuda12-plugin's).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

GPU, TPU = "gpu", "tpu"
# JAX preallocates this share of a GPU's memory (XLA_PYTHON_CLIENT_MEM_FRACTION's default); a
# TPU step may use its HBM but for what the runtime keeps (taken as 5% here).
USABLE_FRACTION = {GPU: 0.75, TPU: 0.95}


@dataclasses.dataclass(frozen=True)
class Target:
  """One kind of accelerator. `per_host` devices make one ordinary host (an 8-GPU server, a
  v5e-8 or v4-8 TPU VM); `chip` is the TPU topology prefix, `gpu` the GPU's compile facts."""
  name: str
  kind: str
  description: str
  memory_bytes: int
  peak_flops: float          # dense bfloat16 FLOP/s
  hbm_bytes_per_second: float
  per_host: int
  chip: Optional[str] = None
  gpu: Optional[dict] = None

  @property
  def usable_bytes(self) -> int:
    return int(self.memory_bytes * USABLE_FRACTION[self.kind])


_H100_CORE = dict(core_count=132, fpus_per_core=128, clock_rate_ghz=1.98,
                  shared_memory_per_core=233472, shared_memory_per_block_optin=232448,
                  l2_cache_size=52428800, compute_capability=9)

TARGETS = {t.name: t for t in (
    Target("h100", GPU, "NVIDIA H100 80GB HBM3", 84929347584, 989e12, 3.35e12, 8,
           gpu=dict(_H100_CORE)),
    Target("h200", GPU, "NVIDIA H200", 150754820096, 989e12, 4.8e12, 8, gpu=dict(_H100_CORE)),
    Target("a100", GPU, "NVIDIA A100-SXM4-80GB", 85100068864, 312e12, 2.039e12, 8,
           gpu=dict(core_count=108, fpus_per_core=64, clock_rate_ghz=1.41,
                    shared_memory_per_core=167936, shared_memory_per_block_optin=166912,
                    l2_cache_size=41943040, compute_capability=8)),
    Target("v4", TPU, "TPU v4", 32 * 2**30, 275e12, 1.2e12, 4, chip="v4"),
    Target("v5e", TPU, "TPU v5 lite", 16 * 2**30, 197e12, 0.819e12, 8, chip="v5e"),
    Target("v5p", TPU, "TPU v5p", 95 * 2**30, 459e12, 2.765e12, 4, chip="v5p"),
    Target("v6e", TPU, "TPU v6 lite", 32 * 2**30, 918e12, 1.64e12, 8, chip="v6e"),
)}


class TargetError(ValueError):
  """A target or device count the plan cannot compile for."""


def get(name: str) -> Target:
  if name not in TARGETS:
    raise TargetError(f"unknown --target {name!r}; choose one of {', '.join(TARGETS)}.")
  return TARGETS[name]


def check_devices(target: Target, devices: Optional[int]) -> int:
  """The device count to compile for: one ordinary host by default, else a whole number of
  hosts' worth."""
  devices = target.per_host if devices is None else devices
  if devices < 1 or devices % target.per_host:
    raise TargetError(f"--devices={devices}: a {target.name} host has {target.per_host} "
                      f"devices; choose a multiple of {target.per_host}.")
  if target.kind == TPU:
    tpu_topology(target, devices)
  return devices


# Slice shapes by chip count: v5e and v6e are 2-D meshes, v4 and v5p 3-D tori (Cloud TPU's).
# One chip (the plan's one-device comparison) is a slice of its own.
SLICES_2D = {1: "1x1", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
SLICES_3D = {1: "1x1x1", 4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4",
             128: "4x4x8", 256: "4x8x8", 512: "8x8x8"}


def tpu_topology(target: Target, devices: int) -> tuple[str, tuple[int, int, int], str]:
  """(topology name, chips per host bounds, chip configuration) of a slice of `devices` chips:
  v4 and v5p chips are two TensorCores run as one ("megacore")."""
  three_d = target.chip in ("v4", "v5p")
  slices = SLICES_3D if three_d else SLICES_2D
  if devices not in slices:
    hosts = [size for size in sorted(slices) if size % target.per_host == 0]
    raise TargetError(f"--devices={devices}: no {target.name} slice of that size here; choose "
                      f"one of {hosts}.")
  host = (1, 1, 1) if devices == 1 else (2, 2, 1) if three_d else (2, 4, 1)
  return f"{target.chip}:{slices[devices]}", host, "megacore" if three_d else "default"


def gpu_target_config(target: Target) -> str:
  """XLA's GpuTargetConfig (text proto) of `target`: what a deviceless GPU compile reads."""
  g = target.gpu
  return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {g['shared_memory_per_core']}
  threads_per_core_limit: 2048
  core_count: {g['core_count']}
  fpus_per_core: {g['fpus_per_core']}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(target.hbm_bytes_per_second)}
  l2_cache_size: {g['l2_cache_size']}
  clock_rate_ghz: {g['clock_rate_ghz']}
  device_memory_size: {target.memory_bytes}
  shared_memory_per_block_optin: {g['shared_memory_per_block_optin']}
  cuda_compute_capability {{ major: {g['compute_capability']} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 7 }}
runtime_version {{ major: 12 minor: 8 patch: 0 }}
device_description_str: "{target.description}"
"""

