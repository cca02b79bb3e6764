#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM pod slice: the same `radial train` command runs on all hosts
# (gcloud compute tpus tpu-vm ssh --worker=all), each joins the run through jax.distributed (JAX finds
# the pod's workers itself), and process 0 logs, writes metrics and TensorBoard events.
#
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a bash launch/tpu_pod.sh configs/radial_1b.yaml run.dir=/mnt/runs/r1
#
# Environment: TPU_NAME, ZONE (required); PROJECT (optional gcloud project);
#   REPO_DIR  the checkout on the workers (default: radial_jax in the home directory)
#   SETUP=1   first copy this checkout to every worker and install it with jax[tpu] into REPO_DIR/.venv
#   DRY_RUN=1 print the gcloud commands instead of running them
# run.dir must be a filesystem every worker sees (NFS/Filestore, or a gcsfuse-mounted bucket): all
# processes write their shards of each checkpoint there, and process 0 writes the logs.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME to the TPU VM name}" "${ZONE:?set ZONE to its zone}"
[ $# -ge 1 ] || { echo "usage: TPU_NAME=... ZONE=... $0 CONFIG [section.key=value ...]" >&2; exit 2; }
REPO_DIR=${REPO_DIR:-radial_jax}
GCLOUD=${GCLOUD:-gcloud}
where=(--zone "$ZONE")
[ -n "${PROJECT:-}" ] && where+=(--project "$PROJECT")
run() { if [ -n "${DRY_RUN:-}" ]; then printf '%q ' "$@"; echo; else "$@"; fi; }

if [ -n "${SETUP:-}" ]; then
  src="$(cd "$(dirname "$0")/.." && pwd)"
  run "$GCLOUD" compute tpus tpu-vm scp --recurse "$src" "$TPU_NAME:$REPO_DIR" "${where[@]}" --worker=all
  run "$GCLOUD" compute tpus tpu-vm ssh "$TPU_NAME" "${where[@]}" --worker=all --command \
    "cd $REPO_DIR && python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]'"
fi
args=$(printf '%q ' "$@")
run "$GCLOUD" compute tpus tpu-vm ssh "$TPU_NAME" "${where[@]}" --worker=all --command \
  "cd $REPO_DIR && RADIAL_DISTRIBUTED=1 .venv/bin/radial train $args"
