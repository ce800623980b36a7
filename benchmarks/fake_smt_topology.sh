#!/bin/bash
# Run a command where this machine's logical CPUs look like pairs of threads of one core, as a virtual machine
# with SMT presented to the guest shows them (lscpu "Thread(s) per core: 2"):
#
#   benchmarks/fake_smt_topology.sh <command...>
#
# The script re-runs itself in a private mount namespace (unshare), so only that command sees the change, and
# refuses to mount anything unless its namespace differs from its parent's. Needs root (bind mounts over /sys
# and /proc/cpuinfo). CPUs 2k and 2k+1 become threads of core k.
#
# FAKE_SMT_CACHES_ONLY=1 changes only the caches: CPUs 2k and 2k+1 share their L1 and L2 (as on a host with SMT
# whose cache description a hypervisor passes through) while the core topology still says one thread per core.
set -euo pipefail
if [ "${1:-}" != "--inside-private-namespace" ]; then
  exec unshare --mount --propagation private "$0" --inside-private-namespace "$@"
fi
shift
own=$(readlink /proc/self/ns/mnt || true)
parent=$(readlink /proc/$PPID/ns/mnt || true)
if [ -z "$own" ] || [ -z "$parent" ] || [ "$own" = "$parent" ]; then
  echo "refusing to change the topology: not in a private mount namespace (own '$own', parent '$parent')" >&2
  exit 2
fi
fake=$(mktemp -d)
cpus=$(ls -d /sys/devices/system/cpu/cpu[0-9]* | sed 's#.*/cpu##' | sort -n)
for cpu in $cpus; do
  core=$((cpu / 2)); first=$((core * 2)); second=$((first + 1))
  [ -d /sys/devices/system/cpu/cpu$second ] || second=$first
  list="$first-$second"; [ "$first" = "$second" ] && list="$first"
  mask=$(printf '%x' $(( (1 << first) | (1 << second) )))
  echo "$list" > "$fake/list$cpu"; echo "$mask" > "$fake/mask$cpu"; echo "$core" > "$fake/core$cpu"
  topology=/sys/devices/system/cpu/cpu$cpu/topology
  if [ "${FAKE_SMT_CACHES_ONLY:-0}" != 1 ]; then
    for name in core_cpus thread_siblings; do mount --bind "$fake/mask$cpu" "$topology/$name"; done
    for name in core_cpus_list thread_siblings_list; do mount --bind "$fake/list$cpu" "$topology/$name"; done
    mount --bind "$fake/core$cpu" "$topology/core_id"
  fi
  for index in /sys/devices/system/cpu/cpu$cpu/cache/index[0-2]; do  # L1 and L2 belong to the core
    mount --bind "$fake/mask$cpu" "$index/shared_cpu_map"; mount --bind "$fake/list$cpu" "$index/shared_cpu_list"
    mount --bind "$fake/core$cpu" "$index/id"
  done
done
logical=$(echo "$cpus" | wc -l)
awk -v cores=$(( (logical + 1) / 2 )) -F'\t*: ' '
  /^processor/ {cpu = $2}
  /^core id/ {print "core id\t\t: " int(cpu / 2); next}
  /^cpu cores/ {print "cpu cores\t: " cores; next}
  {print}' /proc/cpuinfo > "$fake/cpuinfo"
[ "${FAKE_SMT_CACHES_ONLY:-0}" = 1 ] || mount --bind "$fake/cpuinfo" /proc/cpuinfo
exec "$@"
