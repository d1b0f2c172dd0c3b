"""train.amp_cpu: bfloat16 autocast on CPU only where the CPU has it natively (``auto``)."""
import warnings

import pytest

from kit import config as kconfig
from kit.models import cellpose as kcp
from kit.models.maskrcnn import load_config as load_maskrcnn
from kit.models.precision import cpu_autocast, cpu_has_native_bf16


def test_auto_follows_the_cpu_true_warns_where_it_would_be_emulated():
    native = cpu_has_native_bf16()
    assert isinstance(native, bool)
    assert cpu_autocast("auto") is native
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cpu_autocast(False) is False
        assert cpu_autocast("auto") is native
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert cpu_autocast(True) is True
    emulated = [w for w in seen if issubclass(w.category, RuntimeWarning)
                and "without native bfloat16" in str(w.message)]
    assert len(emulated) == (0 if native else 1)


@pytest.mark.parametrize("name", ["cellpose_cpu.yaml", "cellpose_cpu_real.yaml",
                                  "maskrcnn_cpu_demo.yaml", "maskrcnn_cpu_real.yaml"])
def test_cpu_recipes_use_bfloat16_only_where_native(name):
    path = kcp.DEFAULT_CONFIG.parent / name
    cfg = kcp.load_config(path) if name.startswith("cellpose") else load_maskrcnn(path)
    assert cfg.train.amp_cpu == "auto"


def test_amp_cpu_accepts_true_false_auto_and_nothing_else(tmp_path):
    for value, expected in (("true", True), ("false", False), ("auto", "auto")):
        p = tmp_path / f"{value}.yaml"
        p.write_text(f"train:\n  amp_cpu: {value}\n")
        assert load_maskrcnn(p).train.amp_cpu == expected
        assert kcp.load_config(p).train.amp_cpu == expected
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  amp_cpu: sometimes\n")
    for load in (load_maskrcnn, kcp.load_config):
        with pytest.raises(kconfig.ConfigError, match=r"train\.amp_cpu: 'sometimes' matches none"):
            load(bad)
