#!/usr/bin/env bash
# Run the app through SLURM the two ways docs/singularity.md describes; print (and optionally
# record) a table.
#
#   bash scripts/check_slurm.sh [--setup-local] [--record docs/slurm-check.md] [--python PY]
#
# --setup-local  start a one-node cluster on this machine (root; Debian's slurm-wlm + munge:
#                apt-get install slurm-wlm munge): munged, slurmctld and slurmd with a
#                minimal slurm.conf in /etc/slurm. Without it, a working cluster is assumed.
# --python PY    the Python whose bids_auton2n the jobs run (default: python3 on PATH).
# Not part of the test suite: it submits jobs and waits for them (minutes).
#
# Cases:
#   1 array job, one participant per task (the recommended way), then the group level as a
#     job depending on the array                                    -> all COMPLETED, exit 0
#   2 one job running the app with the Nipype SLURM plugin (every node its own job), started
#     without LOGNAME or USER in its environment (env -i)           -> COMPLETED, exit 0
#   3 the shared files the array tasks all wrote are whole JSON / text -> parse
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
RECORD=""
SETUP=0
PY=python3
WORK=${CHECK_WORK:-/tmp/bids_auton2n-slurm-check}
while [ $# -gt 0 ]; do
    case "$1" in
        --setup-local) SETUP=1; shift ;;
        --record) RECORD=$2; shift 2 ;;
        --python) PY=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 64 ;;
    esac
done
log() { echo "[check_slurm] $*" >&2; }

if [ "$SETUP" = 1 ]; then
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
    mkdir -p /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm /run/munge
    chown munge:munge /run/munge
    cat >/etc/slurm/slurm.conf <<EOF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
    pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
    pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
    for _ in $(seq 30); do sinfo -h -o %T 2>/dev/null | grep -q idle && break; sleep 1; done
fi
sinfo -h >/dev/null 2>&1 || { echo "no SLURM cluster reachable (sinfo failed)" >&2; exit 69; }
SLURM_VERSION=$(sinfo --version)
log "cluster: $SLURM_VERSION, $(sinfo -h -o '%D node(s), %c CPUs, %m MB')"
APP_VERSION=$("$PY" -m bids_auton2n.cli.run --version)

rm -rf "$WORK" && mkdir -p "$WORK"
"$PY" - "$WORK/bids" <<'EOF'
import sys
from bids_auton2n.cli.demo import make_demo_dataset
make_demo_dataset(sys.argv[1], images=[(f"{i:02d}", None, None, "T1w", 3.0) for i in (1, 2, 3)])
EOF
RESULTS=()
FAILED=0
record() {  # name, command, outcome, verdict, notes
    RESULTS+=("| $1 | \`$2\` | $3 | $4 | $5 |")
    [ "$4" = PASS ] || FAILED=1
    log "$4 $1: $3 $5"
}
wait_jobs() {  # job ids...: wait until none is pending or running
    while squeue -h -j "$(IFS=,; echo "$*")" 2>/dev/null | grep -q .; do sleep 2; done
}
job_state() {  # job id -> STATE:EXIT for each task
    scontrol show job -o "$1" 2>/dev/null | grep -o 'JobState=[A-Z]* .*ExitCode=[0-9:]*' \
        | sed -E 's/JobState=([A-Z]+) .*ExitCode=([0-9:]+)/\1:\2/' | sort | uniq -c | xargs
}

# ---- 1: array job, one participant per task, then the group level -----------------------
cat >"$WORK/array.sbatch" <<EOF
#!/bin/bash
#SBATCH --job-name=auton2n
#SBATCH --array=1-3
#SBATCH --cpus-per-task=1
#SBATCH --mem=3G
#SBATCH --output=$WORK/array-%a.log
subject=\$(sed -n "\$((SLURM_ARRAY_TASK_ID + 1))p" $WORK/bids/participants.tsv | cut -f1)
exec $PY -m bids_auton2n.cli.run $WORK/bids $WORK/out participant \\
    --participant-label "\${subject}" -w $WORK/work/"\${subject}" \\
    --nprocs "\${SLURM_CPUS_PER_TASK}" --omp-nthreads "\${SLURM_CPUS_PER_TASK}"
EOF
begin=$(date +%s)
array=$(sbatch --parsable "$WORK/array.sbatch")
group=$(sbatch --parsable --dependency=afterok:"$array" --job-name=auton2n-group \
    --cpus-per-task=1 --mem=3G --output="$WORK/group.log" \
    --wrap="exec $PY -m bids_auton2n.cli.run $WORK/bids $WORK/out group -w $WORK/work/group")
wait_jobs "$array" "$group"
seconds=$(( $(date +%s) - begin ))
sleep 2
states_array=$(sacct -n -X -j "$array" -o State,ExitCode 2>/dev/null | xargs || true)
# Without accounting (the one-node setup) sacct knows nothing: slurmctld still holds the jobs.
[ -n "$states_array" ] || states_array="array: $(job_state "$array"); group: $(job_state "$group")"
n_ok=$(cat "$WORK"/array-*.log | grep -c "Denoised 1 of 1 image(s)" || true)  # one count, not one per file
if [ "$n_ok" = 3 ] && grep -q "Group report:" "$WORK/group.log" \
        && [ -s "$WORK/out/group_denoising.tsv" ] \
        && [ "$(tail -n +2 "$WORK/out/group_denoising.tsv" | grep -c success)" = 3 ]; then
    verdict=PASS
else
    verdict=FAIL; tail -5 "$WORK"/array-*.log "$WORK/group.log" >&2
fi
record "array job, one participant per task; group job afterok" \
    "sbatch array.sbatch; sbatch --dependency=afterok:<array> ... group" \
    "3/3 tasks denoised their participant, group table with 3 rows, ${seconds} s" \
    "$verdict" "${states_array:-sacct unavailable (no accounting)}"

# ---- 3: shared files every task wrote -----------------------------------------------------
if "$PY" -c "import json, sys; json.load(open(sys.argv[1]))" "$WORK/out/dataset_description.json" \
        && grep -q "### References" "$WORK/out/logs/CITATION.md" \
        && [ "$(ls "$WORK"/out/logs/status_*.json | wc -l)" = 3 ] \
        && for f in "$WORK"/out/logs/status_*.json; do "$PY" -c "import json, sys; json.load(open(sys.argv[1]))" "$f" || exit 1; done; then
    record "shared outputs written by 3 concurrent tasks" "dataset_description.json, logs/CITATION.md, 3 status files" "all parse" PASS ""
else
    record "shared outputs written by 3 concurrent tasks" "dataset_description.json, logs/CITATION.md, status files" "unreadable" FAIL ""
fi

# ---- 2: Nipype SLURM plugin, no LOGNAME/USER in the environment ----------------------------
cat >"$WORK/plugin.yml" <<EOF
plugin: SLURM
plugin_args:
  sbatch_args: "--cpus-per-task=1 --mem=3G"
  max_jobs: 4
EOF
begin=$(date +%s)
plugin_job=$(sbatch --parsable --job-name=auton2n-plugin --cpus-per-task=1 --mem=1G \
    --output="$WORK/plugin.log" --export=NONE \
    --wrap="exec env -i PATH=/usr/bin:/bin HOME=$WORK $PY -m bids_auton2n.cli.run $WORK/bids \
$WORK/out-plugin participant --participant-label 01 -w $WORK/work-plugin --use-plugin $WORK/plugin.yml")
wait_jobs "$plugin_job"
seconds=$(( $(date +%s) - begin ))
n_jobs=$(find "$WORK/work-plugin" -name 'batchscript_*.sh' 2>/dev/null | wc -l)
if grep -q "Denoised 1 of 1 image(s)" "$WORK/plugin.log" && [ "$n_jobs" -gt 3 ]; then
    verdict=PASS
else
    verdict=FAIL; tail -20 "$WORK/plugin.log" >&2
fi
record "Nipype SLURM plugin inside a job, env -i (no LOGNAME, no USER)" \
    "bids_auton2n ... participant --use-plugin plugin.yml" \
    "$n_jobs node jobs submitted, participant denoised, ${seconds} s" "$verdict" \
    "$(grep -c LOGNAME "$WORK/plugin.log" || true) mentions of LOGNAME in the log"

{
    echo "SLURM check ($(date -u +%Y-%m-%d), \`bash scripts/check_slurm.sh\`, $SLURM_VERSION, $APP_VERSION)"
    echo
    echo "One-node cluster ($(sinfo -h -o '%c CPUs, %m MB')); data: three generated participants, one 40x48x40 T1w each; times are whole jobs on a shared machine, not performance figures."
    echo
    echo "| case | command | outcome | result | notes |"
    echo "|---|---|---|---|---|"
    printf '%s\n' "${RESULTS[@]}"
} | tee "$WORK/results.md"
[ -n "$RECORD" ] && cp "$WORK/results.md" "$RECORD"
exit $FAILED
