"""The training precision follows the CPU: mixed_bfloat16 only where the CPU computes bf16 natively (x86
AVX512-BF16 or AMX-BF16, Arm FEAT_BF16), float32 elsewhere (emulated bf16 is several times slower) and for
mobilenet_v2 and the embedding model; --precision overrides. The CPUs here are /proc/cpuinfo texts as Linux writes
them."""
import importlib.util
from pathlib import Path

import pytest

from locator.core import config, cpu

REPO = Path(__file__).resolve().parents[2]

EPYC_GENOA = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: AMD EPYC 9454P 48-Core Processor
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq avx512cd avx512bw avx512vl \
avx512_bf16 avx512vbmi avx512_vnni

processor\t: 1
model name\t: AMD EPYC 9454P 48-Core Processor
"""
XEON_AMX = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 avx avx2 avx512f avx512bw avx512_vnni amx_bf16 amx_tile amx_int8
"""
EPYC_ROME = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12 64-Core Processor
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni
"""
XEON_SKYLAKE = """processor\t: 0
model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
flags\t\t: fpu sse sse2 avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl
"""
GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc \
dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm \
bf16 dgh rng
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd40
CPU revision\t: 1
"""
GRAVITON2 = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1
"""


@pytest.mark.parametrize("text,model,bf16,precision", [
    (EPYC_GENOA, "AMD EPYC 9454P 48-Core Processor", True, "mixed_bfloat16"),
    (XEON_AMX, "Intel(R) Xeon(R) Platinum 8480+", True, "mixed_bfloat16"),
    (EPYC_ROME, "AMD EPYC 7B12 64-Core Processor", False, "float32"),
    (XEON_SKYLAKE, "Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz", False, "float32"),  # AVX-512 is not bf16
    (GRAVITON3, "Arm CPU (implementer 0x41, part 0xd40)", True, "mixed_bfloat16"),
    (GRAVITON2, "Arm CPU (implementer 0x41, part 0xd0c)", False, "float32"),
], ids=["x86 avx512_bf16", "x86 amx_bf16", "x86 avx2 only", "x86 avx512 without bf16", "arm bf16", "arm no bf16"])
def test_the_default_precision_follows_what_the_cpu_computes_natively(text, model, bf16, precision):
    c = cpu.parse_cpuinfo(text)
    assert (c.model, c.native_bf16) == (model, bf16)
    assert config.default_precision("compact", c) == config.default_precision("paper", c) == precision
    assert config.default_precision("mobilenet_v2", c) == "float32"  # slower in bf16 on any CPU
    _, why = config.precision_choice("compact", c)
    assert model in why and ("natively" if bf16 else "no native bf16") in why


def test_the_bench_names_the_flags_that_decide_the_speed():
    assert cpu.parse_cpuinfo(EPYC_ROME).shown_flags() == \
        "avx2 yes, avx512f no, avx512_bf16 no, amx_tile no, amx_bf16 no, bf16 no"
    assert "avx512_bf16 yes" in cpu.parse_cpuinfo(EPYC_GENOA).shown_flags()


@pytest.fixture
def on_cpu(tmp_path, monkeypatch):
    """Run as if /proc/cpuinfo said `text`."""
    def use(text):
        fake = tmp_path / "cpuinfo"
        fake.write_text(text)
        monkeypatch.setattr(cpu, "CPUINFO", fake)
        monkeypatch.setattr(cpu.platform, "system", lambda: "Linux")
        cpu.detect.cache_clear()
    yield use
    cpu.detect.cache_clear()


def cnn_module():
    spec = importlib.util.spec_from_file_location("cnn_script", REPO / "cnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cnn_py_trains_the_compact_net_in_float32_on_a_cpu_without_bf16_and_says_why(on_cpu):
    on_cpu(EPYC_ROME)
    cnn = cnn_module()
    a = cnn.parse_args(["--arch", "compact"])
    s = cnn.settings(a)
    assert s.precision == "float32"
    assert cnn.precision_reason(a, s) == "the CPU (AMD EPYC 7B12 64-Core Processor) has no native bf16"
    a = cnn.parse_args(["--arch", "compact", "--precision", "mixed_bfloat16"])
    assert (cnn.settings(a).precision, cnn.precision_reason(a, s)) == ("mixed_bfloat16", "--precision")


def test_cnn_py_trains_the_compact_net_in_bf16_where_the_cpu_has_it(on_cpu):
    on_cpu(GRAVITON3)
    cnn = cnn_module()
    assert cnn.settings(cnn.parse_args(["--arch", "compact"])).precision == "mixed_bfloat16"
    assert cnn.settings(cnn.parse_args(["--arch", "paper"])).precision == "mixed_bfloat16"
    assert cnn.settings(cnn.parse_args(["--arch", "compact", "--precision", "float32"])).precision == "float32"


def test_cnn_py_trains_the_embedding_model_by_default_in_float32_even_where_the_cpu_has_bf16(on_cpu):
    on_cpu(GRAVITON3)
    cnn = cnn_module()
    assert cnn.parse_args([]).arch == config.ARCH == "embedding"
    assert config.precision_choice("embedding")[0] == "float32"  # nothing trains on the bf16 units: frozen
