#!/bin/sh
# Trim a virtualenv for an image, in the stage that installed it (the final stage copies
# the result, so nothing removed here costs a layer). Run as `sh docker/slim-venv.sh VENV`.
#  - pip and setuptools: the image runs a service, it installs nothing;
#  - the packages' own test suites (numpy's alone is 17 MB), never imported at run time;
#  - what only a compiler or a type checker reads: C headers and sources, Cython
#    sources (.pyx, .pxd), type stubs (.pyi) (about 3 MB in the gateway's set);
#  - bytecode: the final stage compiles what the service imports, not every module;
#  - debug symbols of shared libraries (uvloop's 13 MB library is 1.6 MB stripped), with
#    binutils' strip, which the stage installs for this and does not ship. A library that
#    patchelf rewrote (auditwheel does, for wheels' bundled libraries) can be broken by
#    strip ("ELF load command address/offset not page-aligned"): each stripped library
#    must still load (dlopen), or its original is put back.
set -eu
venv=${1:-/opt/venv}
"$venv/bin/python" -m pip uninstall --quiet --yes pip setuptools
for site in "$venv"/lib/python3*/site-packages; do
  find "$site" -mindepth 2 -type d \( -name tests -o -name __pycache__ \) -prune -exec rm -rf {} +
  find "$site" -type f \( -name '*.pyi' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' \
    -o -name '*.h' -o -name '*.hpp' -o -name '*.c' -o -name '*.cc' -o -name '*.cpp' \) -delete
  libs=$(mktemp)
  find "$site" -type f -name '*.so*' >"$libs"  # listed first: the loop adds .orig files
  while read -r lib; do
    cp -p "$lib" "$lib.orig"
    if strip --strip-unneeded "$lib" 2>/dev/null \
       && "$venv/bin/python" -c 'import ctypes, sys; ctypes.CDLL(sys.argv[1])' "$lib" 2>/dev/null; then
      rm "$lib.orig"
    else
      mv "$lib.orig" "$lib"
    fi
  done <"$libs"
  rm "$libs"
done
# Nothing of pip may be left behind (a pip/ folder without its metadata would still run).
if "$venv/bin/python" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("pip") is None)'; then
  echo "slim-venv: pip is still importable in $venv" >&2
  exit 1
fi
