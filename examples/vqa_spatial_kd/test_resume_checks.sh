#!/usr/bin/env bash
# End-to-end checks of the flagship's command line and checkpoints (a CTest test):
#   - a bad command line stops the program before it does anything (non-zero exit, the option named);
#   - --resume under other settings is refused, naming each setting that differs;
#   - a checkpoint that cannot be written stops the run (non-zero exit, a clear message), since a
#     later --resume could not continue from it; so does a checkpoint folder that cannot be written.
#   test_resume_checks.sh <vqa_spatial_kd binary> <work folder>
set -uo pipefail
bin=$1
work=$2
rm -rf "$work" && mkdir -p "$work"
failures=0
run=(--preset smoke --device cpu --threads 2 --render 0 --epochs 1 --models baseline)

# expect_failure <name> <text the message must contain> <arguments...>
expect_failure() {
  local name=$1 text=$2
  shift 2
  "$bin" "$@" >"$work/$name.log" 2>&1
  local rc=$?
  if [[ $rc -eq 0 ]]; then
    echo "FAIL $name: exit status 0, expected a failure"; failures=$((failures + 1))
  elif ! grep -qF -- "$text" "$work/$name.log"; then
    echo "FAIL $name: exit status $rc but the message lacks '$text':"; cat "$work/$name.log"; failures=$((failures + 1))
  else
    echo "ok   $name (exit $rc): $(grep -F -m1 -- "$text" "$work/$name.log" | cut -c1-160)"
  fi
}
expect_success() {
  local name=$1
  shift
  if "$bin" "$@" >"$work/$name.log" 2>&1; then echo "ok   $name"; else
    echo "FAIL $name: exit status $?"; cat "$work/$name.log"; failures=$((failures + 1)); fi
}

# The command line, before any work: nothing may be written.
expect_failure negative_seed "--first-seed" "${run[@]}" --out "$work/cli" --first-seed -1
expect_failure seed_overflow "--first-seed" "${run[@]}" --out "$work/cli" --first-seed 18446744073709551615 --seeds 2
expect_failure nan_lr "--lr" "${run[@]}" --out "$work/cli" --lr nan
expect_failure empty_out "--out" "${run[@]}" --out ""
if [[ -e "$work/cli" ]]; then echo "FAIL: a refused command line created $work/cli"; failures=$((failures + 1)); fi

# --resume under other settings.
expect_success first_run "${run[@]}" --out "$work/resume"
expect_failure resume_other_lr "lr = 0.001 in the checkpoint, 0.002 now" "${run[@]}" --out "$work/resume" --resume --lr 0.002
expect_failure resume_other_data "data_seed = 1 in the checkpoint, 5 now" "${run[@]}" --out "$work/resume" --resume --data-seed 5
expect_failure resume_other_batch "batch = 32 in the checkpoint, 16 now" "${run[@]}" --out "$work/resume" --resume --batch 16
expect_success resume_same "${run[@]}" --out "$work/resume" --resume
grep -q "resumed baseline seed 1 after epoch 1" "$work/resume_same.log" || { echo "FAIL resume_same: did not resume"; failures=$((failures + 1)); }

# A checkpoint that cannot be written (a folder in its place: refused even to root).
mkdir -p "$work/blocked/checkpoints/baseline-seed1.ckpt/x"
expect_failure checkpoint_not_saved "not saved" "${run[@]}" --out "$work/blocked"
# A checkpoint folder that cannot be written at all: found before training (not checkable as root).
if [[ $(id -u) -ne 0 ]]; then
  mkdir -p "$work/readonly/checkpoints" && chmod 555 "$work/readonly/checkpoints"
  expect_failure checkpoint_folder_readonly "cannot write checkpoints" "${run[@]}" --out "$work/readonly"
  chmod 755 "$work/readonly/checkpoints"
else
  echo "skip checkpoint_folder_readonly (root ignores folder permissions)"
fi

if ((failures)); then echo "$failures check(s) failed"; exit 1; fi
echo "all checks passed"
