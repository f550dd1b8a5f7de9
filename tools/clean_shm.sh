#!/usr/bin/env bash
# Remove DeepSpeed CPU all-reduce buffers that no running process maps.
#
# DeepSpeed's CPU shm all-reduce gives every rank a 66 MB file in /dev/shm
# (deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>) and never deletes it. humpback-ds
# unlinks its own right after start-up (humpback_ds/dist.py: release_shm_buffer), but runs of
# plain DeepSpeed, older versions, or a job killed during start-up leave them behind, and on a
# machine that is never rebooted they add up to all of its RAM. Files still mapped by a live
# process are kept.
#
# usage: bash tools/clean_shm.sh
set -euo pipefail
removed=0 bytes=0
for f in /dev/shm/deepspeed_allreduce_buffer_*; do
  [ -e "$f" ] || continue
  if ! grep -qsF -- "$f" /proc/[0-9]*/maps; then
    bytes=$((bytes + $(stat -c %s "$f")))
    rm -f -- "$f"
    removed=$((removed + 1))
  fi
done
echo "clean_shm: removed $removed stale DeepSpeed shm buffer(s), $((bytes / 1048576)) MiB"
