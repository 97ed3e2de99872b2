#!/bin/sh
# Trim a virtualenv for an image, in the stage that installed it (the final stage copies
# the result, so nothing removed here costs a layer). Run as `sh docker/slim-venv.sh VENV`.
#  - the packages' own test suites (numpy's alone is 17 MB), never imported at run time;
#  - bytecode: the final stage compiles what the service imports, not every module;
#  - debug symbols of shared libraries (uvloop's 13 MB library is 1.6 MB stripped), with
#    binutils' strip, which the stage installs for this and does not ship. A library that
#    patchelf rewrote (auditwheel does, for wheels' bundled libraries) can be broken by
#    strip ("ELF load command address/offset not page-aligned"): each stripped library
#    must still load (dlopen), or its original is put back.
set -eu
venv=${1:-/opt/venv}
for site in "$venv"/lib/python3*/site-packages; do
  find "$site" -mindepth 2 -type d \( -name tests -o -name __pycache__ \) -prune -exec rm -rf {} +
  find "$site" -type f -name '*.so*' | while read -r lib; do
    cp -p "$lib" "$lib.orig"
    if strip --strip-unneeded "$lib" 2>/dev/null \
       && "$venv/bin/python" -c 'import ctypes, sys; ctypes.CDLL(sys.argv[1])' "$lib" 2>/dev/null; then
      rm "$lib.orig"
    else
      mv "$lib.orig" "$lib"
    fi
  done
done
