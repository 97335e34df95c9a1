"""Every ``bin/`` script: ``--help`` prints its usage and does nothing else; ``bin/test.sh`` hands
its arguments to pytest (running only the paths it is given)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer_helpers import REPO_ROOT

BIN = REPO_ROOT / "bin"
SCRIPTS = sorted(path.name for path in BIN.glob("*.sh") if not path.name.startswith("_"))


def test_every_script_is_covered():
    assert SCRIPTS == ["demo.sh", "register-image.sh", "run_local.sh", "setup-env.sh", "submit-dataflow.sh", "submit-predict.sh",
                       "submit-vertex.sh", "test.sh"]


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_usage_and_does_nothing_else(name, flag, tmp_path):
    """Run where a real run would leave traces: a fresh venv dir, demo outputs, a home; none appears."""
    venv, demo, home = tmp_path / "venv", tmp_path / "demo", tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, SPANWISE_VENV=str(venv), SPANWISE_DEMO_DIR=str(demo), HOME=str(home),
               PATH=f"{tmp_path / 'nothing'}{os.pathsep}{os.environ['PATH']}")
    before = sorted(path.name for path in REPO_ROOT.iterdir())
    proc = subprocess.run(["bash", str(BIN / name), flag], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"Usage: bin/{name}"), proc.stdout[:200]
    assert "-h, --help" in proc.stdout
    assert proc.stderr == ""
    assert not venv.exists() and not demo.exists() and os.listdir(home) == []
    assert sorted(path.name for path in REPO_ROOT.iterdir()) == before


@pytest.mark.parametrize("name", ["demo.sh", "setup-env.sh"])
def test_unknown_arguments_are_refused(name, tmp_path):
    env = dict(os.environ, SPANWISE_VENV=str(tmp_path / "venv"), SPANWISE_DEMO_DIR=str(tmp_path / "demo"))
    proc = subprocess.run(["bash", str(BIN / name), "--bogus"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown argument: --bogus (see --help)" in proc.stderr
    assert not (tmp_path / "venv").exists() and not (tmp_path / "demo").exists()


@pytest.fixture
def recording_venv(tmp_path):
    """A venv whose python records its argv (JSON) and exits with $FAKE_RC."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "argv.json"
    python = venv / "bin" / "python"
    python.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                      f"open({str(log)!r}, 'w').write(json.dumps(sys.argv[1:]))\nsys.exit(int(os.environ.get('FAKE_RC', '0')))\n")
    python.chmod(0o755)
    return venv, log


def _test_sh(venv: Path, *args: str, rc: int = 0) -> subprocess.CompletedProcess:
    env = dict(os.environ, SPANWISE_VENV=str(venv), FAKE_RC=str(rc))
    return subprocess.run(["bash", str(BIN / "test.sh"), "--no-setup", *args], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("args, expected", [
    ([], ["tests"]),
    (["-k", "resume"], ["tests", "-k", "resume"]),
    (["tests/test_tsv.py"], ["tests/test_tsv.py"]),
    (["tests/test_tsv.py::test_header_is_skipped", "-x"], ["tests/test_tsv.py::test_header_is_skipped", "-x"]),
    (["-k", "tests", "tests/test_manifest.py"], ["-k", "tests", "tests/test_manifest.py"]),
])
def test_test_sh_passes_its_arguments_to_pytest(recording_venv, args, expected):
    venv, log = recording_venv
    proc = _test_sh(venv, *args)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(log.read_text()) == ["-m", "pytest", "-q", "-p", "no:cacheprovider", *expected]


def test_test_sh_exit_codes(recording_venv, tmp_path):
    venv, _ = recording_venv
    assert _test_sh(venv, rc=1).returncode == 1
    nothing = _test_sh(venv, "-k", "no_such_test", rc=5)
    assert nothing.returncode == 5 and "pytest collected no tests; treating as failure" in nothing.stderr
    missing = _test_sh(tmp_path / "no-venv")
    assert missing.returncode == 2 and "no-venv/bin/python not found" in missing.stderr
