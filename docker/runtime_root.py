"""Gather the files a Python service needs at run time into a folder, and nothing else.

The gateway's image starts ``FROM scratch`` and copies this folder in: the interpreter,
its standard library, the shared libraries those and the service's virtualenv load, the
CA bundle, and the two user entries. No shell, no package manager, no Perl, no docs: what
a base image carries for building is most of its size, and none of it runs. Run it in a
stage of the base image, with that image's interpreter:

    python runtime_root.py ROOT --links-of /opt/venv --user memgate

``--links-of DIR`` is a folder the Dockerfile copies in by itself (the virtualenv): what
its links point at outside it (``bin/python``) and the libraries its ELF files need
(found with ``ldd``) are gathered too. Paths keep their place, and every link on the way
to a file (``/lib`` -> ``usr/lib`` on a merged-/usr system) is recreated, so the loader
and the interpreter find everything where the base image had it.

Left out of the standard library: its test suites, what only builds extensions
(``config-*``), IDLE and Tk, 2to3, ensurepip, and bytecode (the image's last step
compiles what the service imports).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import ssl
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

STDLIB_LEFT_OUT = frozenset(
    {"test", "idlelib", "tkinter", "_tkinter*", "turtledemo", "lib2to3", "ensurepip", "config-*"}
)
# ldd's lines: "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" and the loader's
# "/lib64/ld-linux-x86-64.so.2 (0x...)".
_LDD_PATH = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)")
_LDD_MISSING = re.compile(r"(\S+) => not found")


def mirror(path: Path, root: Path) -> Path:
    return root / path.relative_to("/")


def place(path: Path, root: Path) -> Path:
    """Recreate under ``root`` every link on the way to ``path``; return its real path."""
    real = Path("/")
    for part in path.parts[1:]:
        here = real / part
        if here.is_symlink():
            link = mirror(here, root)
            if not link.is_symlink():
                link.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(os.readlink(here), link)
            # An absolute link replaces the path so far; a relative one goes on from its folder.
            here = place(Path(os.path.normpath(real / os.readlink(here))), root)
        real = here
    return real


def copy(path: Path, root: Path, skip: frozenset[str] = frozenset()) -> None:
    """Copy a file or a folder (less the names in ``skip``) to the same place under ``root``."""
    real = place(path, root)
    copied = mirror(real, root)
    if real.is_dir():
        ignore = shutil.ignore_patterns(*skip, "__pycache__")
        shutil.copytree(real, copied, symlinks=True, ignore=ignore, dirs_exist_ok=True)
        for target in link_targets(real):
            if not target.is_relative_to(real):
                copy(target, root)
    elif not copied.exists():
        copied.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(real, copied)


def link_targets(folder: Path) -> Iterator[Path]:
    """Where the links in ``folder`` (a real path) point."""
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            entry = Path(dirpath, name)
            if entry.is_symlink():
                yield Path(os.path.normpath(entry.parent / os.readlink(entry)))


def elf_files(folder: Path) -> Iterator[Path]:
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            path = Path(dirpath, name)
            if path.is_symlink() or not path.is_file():
                continue
            with path.open("rb") as file:
                if file.read(4) == b"\x7fELF":
                    yield path


def libraries_of(files: Iterable[Path]) -> set[Path]:
    """The shared libraries (and the loader) that ``files`` need, as ``ldd`` resolves them."""
    files = list(files)
    # A library that another one of these loads first (a wheel's own, found through its
    # loader's RUNPATH) is "not found" to ldd, and is there all the same.
    ours = {file.name for file in files}
    needed: set[Path] = set()
    for file in files:
        result = subprocess.run(["ldd", str(file)], capture_output=True, text=True, check=False)
        missing = set(_LDD_MISSING.findall(result.stdout)) - ours
        if missing:
            sys.exit(f"runtime_root: {file} needs {sorted(missing)}, which the image lacks")
        needed.update(Path(m[1]) for m in _LDD_PATH.finditer(result.stdout))
    return needed


def user_entries(names: list[str]) -> dict[str, str]:
    """/etc/passwd and /etc/group, with only root and ``names``."""
    kept = {"root", *names}
    return {
        table: "".join(
            line
            for line in Path("/etc", table).read_text().splitlines(keepends=True)
            if line.split(":", 1)[0] in kept
        )
        for table in ("passwd", "group")
    }


def gather(root: Path, links_of: list[Path], users: list[str]) -> None:
    interpreter = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    # The base interpreter's, not a virtualenv's (platstdlib is the venv's own in one).
    base = {"base": sys.base_prefix, "installed_base": sys.base_prefix}
    base |= {"platbase": sys.base_exec_prefix, "installed_platbase": sys.base_exec_prefix}
    stdlib = {
        Path(os.path.realpath(sysconfig.get_path(name, vars=base)))
        for name in ("stdlib", "platstdlib")
    }
    copy(interpreter, root)
    for folder in stdlib:
        copy(folder, root, skip=STDLIB_LEFT_OUT | {"site-packages", "dist-packages"})
    elf = [interpreter, *[f for folder in stdlib for f in elf_files(mirror(folder, root))]]
    for folder in links_of:  # the Dockerfile copies the folder; here only what it points at
        for target in link_targets(folder):
            if not target.is_relative_to(folder):
                copy(target, root)
        elf += elf_files(folder)
    libraries = libraries_of(elf)
    # glibc loads libgcc_s when a thread is cancelled, which ldd cannot see.
    libc = next(p for p in libraries if p.name.startswith("libc.so"))
    libraries.update(Path(os.path.realpath(libc)).parent.glob("libgcc_s.so.*"))
    for library in libraries:
        if not any(Path(os.path.realpath(library)).is_relative_to(f) for f in links_of):
            copy(library, root)
    verify = ssl.get_default_verify_paths()
    for path in (verify.cafile, verify.openssl_cafile):
        if path and Path(path).exists():
            copy(Path(path), root)
    (root / "etc").mkdir(exist_ok=True)
    for table, text in user_entries(users).items():
        (root / "etc" / table).write_text(text)
    (root / "tmp").mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--links-of", type=Path, action="append", default=[])
    parser.add_argument("--user", action="append", default=[])
    args = parser.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    gather(args.root, args.links_of, args.user)


if __name__ == "__main__":
    main()
