"""What a CPU target offers a schedule: vector width, dot-product instructions, threads.

Read from the TVM target (its ``mcpu``/``mattr``/``vector-width``/``num-cores``), never from
the machine doing the compiling: an rpi5 artifact built on an x86 host is scheduled for a
Cortex-A76.
"""

from __future__ import annotations

from dataclasses import dataclass

# -mcpu names whose feature sets TVM's target does not spell out in mattr.
_AVX512_CPUS = ("skylake-avx512", "cascadelake", "cooperlake", "icelake", "tigerlake", "sapphirerapids",
                "znver4", "znver5", "graniterapids", "emeraldrapids", "rocketlake", "alderlake-avx512")
_VNNI_CPUS = ("cascadelake", "cooperlake", "icelake", "tigerlake", "sapphirerapids", "znver4", "znver5",
              "graniterapids", "emeraldrapids", "rocketlake")
_AVX_VNNI_CPUS = ("alderlake", "raptorlake", "meteorlake", "sapphirerapids", "znver5", "graniterapids",
                  "arrowlake", "lunarlake")
_AVX2_CPUS = ("haswell", "broadwell", "skylake", "znver1", "znver2", "znver3", "alderlake", "raptorlake",
              "meteorlake", *_AVX512_CPUS)
_DOTPROD_CPUS = ("cortex-a55", "cortex-a75", "cortex-a76", "cortex-a77", "cortex-a78", "cortex-a78ae",
                 "cortex-x1", "cortex-a710", "cortex-x2", "neoverse-n1", "neoverse-n2", "neoverse-v1",
                 "apple-m1", "apple-m2")


@dataclass(frozen=True)
class CpuInfo:
    """The facts a CPU schedule rule chooses its shape from."""

    arch: str                 # "x86_64", "aarch64", "arm"
    mcpu: str
    vector_bits: int          # 128 (NEON, SSE), 256 (AVX2), 512 (AVX-512)
    num_cores: int
    avx2: bool = False
    avx512: bool = False
    avx512_vnni: bool = False
    avx_vnni: bool = False
    neon: bool = False
    dotprod: bool = False     # Armv8.2 sdot/udot
    i8mm: bool = False

    @property
    def f32_lanes(self) -> int:
        return self.vector_bits // 32

    @property
    def isa(self) -> str:
        """A short name for benchmarks and reports: "avx512+vnni", "avx2", "neon+dotprod", ..."""
        if self.arch == "x86_64":
            base = "avx512" if self.avx512 else "avx2" if self.avx2 else "sse"
            return base + ("+vnni" if self.avx512_vnni or self.avx_vnni else "")
        return ("neon" if self.neon else "scalar") + ("+dotprod" if self.dotprod else "")


def cpu_info(target) -> CpuInfo:
    """CpuInfo of a TVM llvm target (``tvm.target.Target``)."""
    attrs = target.attrs
    mcpu = str(attrs.get("mcpu", "") or "").lower()
    mtriple = str(attrs.get("mtriple", "") or "").lower()
    mattr = [str(a).lower() for a in (attrs.get("mattr") or [])]
    cores = int(attrs.get("num-cores", 1) or 1)

    def has(feature: str) -> bool:
        return f"+{feature}" in mattr

    if mtriple.startswith(("aarch64", "arm64")):
        arch = "aarch64"
    elif mtriple.startswith("arm"):
        arch = "arm"
    else:
        arch = "x86_64"
    if arch == "x86_64":
        avx512 = has("avx512f") or mcpu.startswith(_AVX512_CPUS)
        avx2 = avx512 or has("avx2") or mcpu.startswith(_AVX2_CPUS)
        info = dict(avx2=avx2, avx512=avx512,
                    avx512_vnni=has("avx512vnni") or (avx512 and mcpu.startswith(_VNNI_CPUS)),
                    avx_vnni=has("avxvnni") or mcpu.startswith(_AVX_VNNI_CPUS))
        default_bits = 512 if avx512 else 256 if avx2 else 128
    else:
        info = dict(neon=arch == "aarch64" or has("neon"),
                    dotprod=has("dotprod") or mcpu.startswith(_DOTPROD_CPUS),
                    i8mm=has("i8mm"))
        default_bits = 128
    bits = int(attrs.get("vector-width", 0) or 0) or default_bits
    return CpuInfo(arch=arch, mcpu=mcpu, vector_bits=bits, num_cores=cores, **info)
