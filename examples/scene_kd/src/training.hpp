// SPDX-License-Identifier: MIT
#pragma once
// scene_kd's training runs are examples/common/training_run.hpp's: AdamW with a per-step cosine
// schedule, a progress bar, a validation number and a checkpoint after every epoch, exact
// --resume (batches, masks and everything random depend only on (seed, epoch, index)).

#include "../../common/training_run.hpp"

namespace skd {

using examples::epoch_record;
using examples::run_log;
using examples::training_run;

}  // namespace skd
