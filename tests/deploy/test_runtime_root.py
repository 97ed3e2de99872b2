"""docker/runtime_root.py: the gateway image's runtime, gathered from its base image."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_files import load_tool

runtime = load_tool("runtime_root", "docker")


def test_links_on_the_way_to_a_file_are_recreated(tmp_path: Path) -> None:
    # A merged-/usr layout: lib -> usr/lib (relative), and an absolute link to a library.
    live = tmp_path / "live"
    (live / "usr" / "lib").mkdir(parents=True)
    (live / "usr" / "lib" / "libz.so.1.2").write_bytes(b"\x7fELF library")
    os.symlink("libz.so.1.2", live / "usr" / "lib" / "libz.so.1")
    os.symlink("usr/lib", live / "lib")
    os.symlink(live / "lib" / "libz.so.1", live / "libz-link")
    root = tmp_path / "root"

    runtime.copy(live / "libz-link", root)

    def inside(path: Path) -> Path:
        return root / path.relative_to("/")

    assert os.readlink(inside(live / "libz-link")) == str(live / "lib" / "libz.so.1")
    assert os.readlink(inside(live / "lib")) == "usr/lib"
    assert os.readlink(inside(live / "usr" / "lib" / "libz.so.1")) == "libz.so.1.2"
    assert inside(live / "usr" / "lib" / "libz.so.1.2").read_bytes() == b"\x7fELF library"
    # Only what was asked for, and the links to it: no other file of the folders.
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    assert files == [inside(live / "usr" / "lib" / "libz.so.1.2")]


def test_a_folder_is_copied_less_what_it_leaves_out(tmp_path: Path) -> None:
    live = tmp_path / "live" / "python3.11"
    for name in ("json", "test", "__pycache__", "config-3.11-x86_64-linux-gnu"):
        (live / name).mkdir(parents=True)
        (live / name / "x.py").write_text("")
    outside = tmp_path / "etc" / "sitecustomize.py"  # Debian links its sitecustomize so
    outside.parent.mkdir()
    outside.write_text("# site")
    os.symlink(outside, live / "sitecustomize.py")
    root = tmp_path / "root"

    runtime.copy(live, root, skip=runtime.STDLIB_LEFT_OUT)

    copied = root / live.relative_to("/")
    assert sorted(p.name for p in copied.iterdir()) == ["json", "sitecustomize.py"]
    assert (root / outside.relative_to("/")).read_text() == "# site"  # the link's target too


@pytest.mark.slow
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("chroot") is None or shutil.which("ldd") is None,
    reason="running the gathered interpreter needs chroot (root) and ldd",
)
def test_the_gathered_runtime_runs_python_with_tls_and_sqlite(tmp_path: Path) -> None:
    # This machine's interpreter, gathered as the image's build gathers its base's, must
    # run in a root that holds nothing else (chroot, as the image starts FROM scratch).
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    os.symlink(base, venv / "bin" / "python")
    root = tmp_path / "root"
    runtime.main([str(root), "--links-of", str(venv), "--user", "root"])
    shutil.copytree(venv, root / venv.relative_to("/"), symlinks=True)

    script = (
        "import ssl, sqlite3, asyncio, json, uuid, zlib\n"
        "ssl.create_default_context()\n"
        "sqlite3.connect(':memory:').execute('select 1')\n"
        "print('ran', ssl.OPENSSL_VERSION.split()[0])\n"
    )
    python = "/" + str((venv / "bin" / "python").relative_to("/"))
    result = subprocess.run(
        ["chroot", str(root), python, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ran OpenSSL"
    assert not (root / "bin" / "sh").exists() and not (root / "usr" / "bin" / "apt").exists()
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert (root / "etc" / "passwd").read_text().startswith("root:")
