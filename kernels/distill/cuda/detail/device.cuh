// SPDX-License-Identifier: MIT
#pragma once
//! @file
//! What the kernels' launchers ask of the device: SM count, compute capability, shared-memory
//! limits. Queried once per device and process (attribute queries, no synchronisation) and
//! cached in a table indexed by the device ordinal, so a thread that switches devices with
//! cudaSetDevice gets the new device's values. nvcc only.
//!
//!   const device_properties& dp = current_device_properties();
//!   DISTILL_TRY(allow_dynamic_smem(fn, kernel, bytes));   // before kernel<<<grid, block, bytes>>>

#if !defined(__CUDACC__)
#error "distill/cuda/detail/device.cuh must be compiled by nvcc"
#endif

#include <cuda_runtime.h>

#include <cstddef>
#include <mutex>
#include <string>

#include "distill/cuda/runtime.cuh"

namespace distill::cuda_detail {

struct device_properties {
  int sms = 1;                               ///< multiprocessors
  int major = 0, minor = 0;                  ///< compute capability
  int smem_per_block = 48 * 1024;            ///< shared memory per block without opting in
  int smem_per_block_optin = 48 * 1024;      ///< with cudaFuncAttributeMaxDynamicSharedMemorySize
  bool queried = false;                      ///< false: the query failed, the values are defaults
};

namespace device_detail {
inline constexpr int cached_devices = 64;
struct slot {
  std::once_flag once;
  device_properties props;
};
inline slot* table() {
  static slot slots[cached_devices];
  return slots;
}
inline device_properties query(int dev) {
  device_properties p;
  const bool ok = cudaDeviceGetAttribute(&p.sms, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess &&
                  cudaDeviceGetAttribute(&p.major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
                  cudaDeviceGetAttribute(&p.minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess &&
                  cudaDeviceGetAttribute(&p.smem_per_block, cudaDevAttrMaxSharedMemoryPerBlock, dev) == cudaSuccess &&
                  cudaDeviceGetAttribute(&p.smem_per_block_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) == cudaSuccess;
  if (!ok) {
    (void)cudaGetLastError();  // attribute queries leave no sticky error; clear the last-error slot
    return device_properties{};
  }
  p.queried = true;
  return p;
}
}  // namespace device_detail

/// Properties of device `dev` (cached for the first 64 ordinals, queried each time beyond).
inline device_properties properties_of_device(int dev) {
  if (dev < 0 || dev >= device_detail::cached_devices) return device_detail::query(dev);
  device_detail::slot& s = device_detail::table()[dev];
  std::call_once(s.once, [&] { s.props = device_detail::query(dev); });
  return s.props;
}

/// Properties of the calling thread's current device (defaults when no device can be queried:
/// one SM, 48 KiB, compute capability 0).
inline device_properties current_device_properties() {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return device_properties{};
  }
  return properties_of_device(dev);
}

/// Lets `kernel` launch with `dynamic_bytes` of dynamic shared memory on the current device. The
/// kernel's static shared memory counts against the same per-block limit: anything above the
/// default 48 KiB in total needs the opt-in attribute, and more than the opt-in limit cannot run
/// (shape_mismatch: the shapes are too large for this device).
template <class Kernel>
status allow_dynamic_smem(const char* fn, Kernel kernel, std::size_t dynamic_bytes) {
  cudaFuncAttributes fa{};
  DISTILL_CUDA_TRY(cudaFuncGetAttributes(&fa, kernel));
  const device_properties dp = current_device_properties();
  const std::size_t total = fa.sharedSizeBytes + dynamic_bytes;
  if (total > static_cast<std::size_t>(dp.smem_per_block_optin))
    return fail(errc::shape_mismatch, fn,
                "the shapes need " + std::to_string(total) + " bytes of shared memory per block (" +
                    std::to_string(fa.sharedSizeBytes) + " static), the device offers " +
                    std::to_string(dp.smem_per_block_optin));
  if (dynamic_bytes > static_cast<std::size_t>(fa.maxDynamicSharedSizeBytes))  // default: 48 KiB - static
    DISTILL_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dynamic_bytes)));
  return {};
}

}  // namespace distill::cuda_detail
