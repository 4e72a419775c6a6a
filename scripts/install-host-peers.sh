#!/usr/bin/env bash
# Installs the peer allocators the host benchmark loads with LD_PRELOAD (Debian bookworm names).
# Idempotent: does nothing when all three libraries are already present.
set -euo pipefail
libdir=/usr/lib/x86_64-linux-gnu
need=0
for f in libjemalloc.so.2 libmimalloc.so.2 libtcmalloc_minimal.so.4; do
  [ -e "$libdir/$f" ] || need=1
done
[ "$need" = 1 ] || exit 0
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq libjemalloc2 libmimalloc2.0 libtcmalloc-minimal4 >/dev/null
