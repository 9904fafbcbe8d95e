// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! A layer's view of data-parallel training: this process (a *replica*) holds rows
//! [first_row, first_row + n) of a global batch of `global_rows`, and `sum` adds values over all
//! replicas. Two layers need it to compute exactly what one process would on the global batch:
//!   batch norm  statistics over the global batch (synchronised batch norm): the per-channel sums
//!               of the forward (sum x, then sum (x - mu)^2) and of the backward (sum dy,
//!               sum dy xhat) go through `sum`; the parameters' gradients stay local (they are
//!               averaged with the others, distill/distributed/data_parallel.hpp)
//!   dropout     the mask of global row first_row + r, so the replicas together drop what one
//!               process would; the element counter advances by the global batch
//! The default (global_rows = 0, no `sum`) is a single process. distill/distributed/data_parallel.hpp
//! builds one from a communicator; `nn::sequential::set_replica` hands it to every layer.

#include <functional>
#include <span>

#include "distill/core/status.hpp"
#include "distill/core/tensor_view.hpp"

namespace distill::nn {

/// In place: every element becomes its sum over all replicas (an all-reduce).
using replica_sum = std::function<status(std::span<double>)>;

struct replica {
  index_t first_row = 0;    ///< first row of this process's rows in the global batch
  index_t global_rows = 0;  ///< rows of the global batch; 0: no data parallelism
  replica_sum sum;          ///< empty: a single process (statistics are local)
  bool data_parallel() const noexcept { return global_rows > 0; }
};

}  // namespace distill::nn
