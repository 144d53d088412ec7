#!/usr/bin/env bash
# Source this file: points podman at a private configuration and storage under $PODMAN_SCRATCH
# (default target/podman), so test runs leave nothing behind in the host's podman state.
# Rootful podman on these machines needs runc and cgroupfs (crun refuses the host's hybrid cgroups),
# a file events logger, and explicit ulimits.
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PODMAN_SCRATCH=${PODMAN_SCRATCH:-$top/target/podman}
mkdir -p "$PODMAN_SCRATCH"
hard_nofile=$(ulimit -Hn)
cat >"$PODMAN_SCRATCH/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=${hard_nofile}:${hard_nofile}", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
cat >"$PODMAN_SCRATCH/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$PODMAN_SCRATCH/storage"
runroot = "$PODMAN_SCRATCH/run"
CONF
export CONTAINERS_CONF="$PODMAN_SCRATCH/containers.conf"
export CONTAINERS_STORAGE_CONF="$PODMAN_SCRATCH/storage.conf"
