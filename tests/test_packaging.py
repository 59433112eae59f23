"""Packaging: one distribution, folders mapped into the edgernn namespace, and a
core (runtime + firmware bridge) that imports without torch or onnx."""

import os
import shutil
import subprocess
import sys
import zipfile

from conftest import ROOT, run_cli


def test_wheel_maps_folders_into_the_edgernn_namespace(tmp_path):
    # Build from a copy: an in-tree build would leave build/ in the checkout.
    src = tmp_path / "src"
    shutil.copytree(
        ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info")
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # Every data folder is declared: no "Package would be ignored" walls on install.
    assert "would be ignored" not in proc.stdout + proc.stderr
    (wheel,) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"edgernn"}, top  # nothing named train/export/runtime at top level
    for sub in ("train", "export", "runtime", "firmware_bridge"):
        assert f"edgernn/{sub}/__init__.py" in names
    for data in ("PROTOCOL.md", "firmware/edgernn_frame.c", "firmware/edgernn_frame.h",
                 "firmware/edgernn_sensor/edgernn_sensor.ino"):  # fmt: skip
        assert f"edgernn/firmware_bridge/{data}" in names
    for unit in ("edgernn.service", "edgernn@.service", "edgernn.env", "edgernn.logrotate"):
        assert f"edgernn/deploy/{unit}" in names  # `edgernn deploy` finds them after pip
    assert not any(n.startswith("edgernn/tests") for n in names)
    meta = next(n for n in names if n.endswith("METADATA"))
    text = zipfile.ZipFile(tmp_path / wheel).read(meta).decode()
    requires = [ln for ln in text.splitlines() if ln.startswith("Requires-Dist:")]
    core = [r for r in requires if "extra ==" not in r]
    assert sorted(r.split()[1].split(">")[0].split("=")[0] for r in core) == [
        "numpy", "onnxruntime", "pyserial",
    ]  # fmt: skip
    assert any("torch" in r and 'extra == "train"' in r for r in requires)


def test_core_imports_without_torch_or_onnx():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "sys.modules['onnx'] = None\n"
        "import edgernn, edgernn.runtime, edgernn.firmware_bridge, edgernn.cli\n"
        "from edgernn.runtime import Model, read_csv\n"
        "assert 'torch' not in [m for m, v in sys.modules.items() if v is not None]\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_python_m_edgernn_is_the_console_script():
    a = run_cli("--version")
    exe = os.path.join(os.path.dirname(sys.executable), "edgernn")
    b = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout and a.stdout.startswith("edgernn ")
    assert (
        run_cli("--help").stdout
        == subprocess.run([exe, "--help"], capture_output=True, text=True).stdout
    )


def test_checkout_package_finds_its_mapped_folders_without_the_install_mapping():
    # What `python -m edgernn` in the repository root sees after a non-editable install:
    # the checkout's edgernn/ first on sys.path, and no editable-install finder (-S skips
    # the .pth files) to map train/, export/, runtime/ into it.
    import sysconfig

    site = sysconfig.get_paths()["purelib"]
    code = (
        "import sys\n"
        f"sys.path[:0] = [{str(ROOT)!r}, {site!r}]\n"
        "import edgernn.runtime, edgernn.firmware_bridge\n"
        "from edgernn.runtime import Model\n"
        "print(edgernn.runtime.__file__)\n"
    )
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == os.path.join(str(ROOT), "runtime", "__init__.py")


def test_deploy_lists_and_copies_the_units_never_over_existing_files(tmp_path):
    listed = run_cli("deploy")
    assert listed.returncode == 0, listed.stderr
    names = {os.path.basename(p) for p in listed.stdout.split()}
    assert {"edgernn.service", "edgernn@.service", "edgernn.env"} <= names
    copied = run_cli("deploy", "--to", str(tmp_path / "d"))
    assert copied.returncode == 0, copied.stderr
    assert sorted(os.listdir(tmp_path / "d")) == sorted(names)
    (tmp_path / "d" / "edgernn.env").write_text("MODEL=mine\n")
    again = run_cli("deploy", "--to", str(tmp_path / "d"))
    assert again.returncode == 1 and "nothing copied" in again.stderr
    assert (tmp_path / "d" / "edgernn.env").read_text() == "MODEL=mine\n"
