"""What the processor computes natively, read where the OS tells it: /proc/cpuinfo on Linux, sysctl on macOS.

Training picks its precision from this (config.default_precision): bfloat16 pays only where the CPU has bf16
instructions (x86: AVX512-BF16 or AMX-BF16; Arm: FEAT_BF16). Elsewhere oneDNN emulates bf16 through float32
conversions, and a bf16 training step is several times slower than a float32 one (docs/results.md)."""
import functools
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "svebf16")  # x86 flags; Arm Features (Linux names FEAT_BF16 bf16)
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "bf16")  # what decides training speed


@dataclass(frozen=True)
class CPU:
    model: str                   # "AMD EPYC 9454P 48-Core Processor", "Apple M2", ...
    flags: frozenset             # x86 `flags` and Arm `Features` of /proc/cpuinfo, lower case

    @property
    def bf16_flags(self) -> list:
        """The flags that say the CPU computes bf16 natively (empty: it has none)."""
        return [f for f in BF16_FLAGS if f in self.flags]

    @property
    def native_bf16(self) -> bool:
        return bool(self.bf16_flags)

    def shown_flags(self) -> str:
        """'avx2 yes, avx512f no, ...': the flags that decide training speed, for logs and benchmarks."""
        return ", ".join(f"{f} {'yes' if f in self.flags else 'no'}" for f in SHOWN_FLAGS)


def parse_cpuinfo(text: str) -> CPU:
    """A CPU from the text of /proc/cpuinfo (x86 or Arm): the first processor's model and flags."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    flags = frozenset((fields.get("flags", "") + " " + fields.get("features", "")).lower().split())
    model = fields.get("model name") or fields.get("hardware") or fields.get("cpu model")
    if not model and "cpu part" in fields:  # Arm Linux often names only the implementer and part numbers
        model = f"Arm CPU (implementer {fields.get('cpu implementer', '?')}, part {fields['cpu part']})"
    return CPU(model or platform.processor() or platform.machine() or "unknown CPU", flags)


def _sysctl(name: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.lru_cache(maxsize=None)
def detect() -> CPU:
    """The CPU this process runs on; a CPU with no flags where the OS does not say (nothing then counts as bf16)."""
    if platform.system() == "Darwin":
        flags = {"bf16"} if _sysctl("hw.optional.arm.FEAT_BF16") == "1" else set()
        return CPU(_sysctl("machdep.cpu.brand_string") or platform.machine(), frozenset(flags))
    try:
        return parse_cpuinfo(CPUINFO.read_text(errors="replace"))
    except OSError:
        return CPU(platform.processor() or platform.machine() or "unknown CPU", frozenset())


def cpu_model() -> str:
    return detect().model


def cpu_has_native_bf16() -> bool:
    return detect().native_bf16
