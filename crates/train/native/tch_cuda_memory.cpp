// What oomph needs from LibTorch's CUDA caching allocator that neither tch nor burn-tch
// exposes: `torch.cuda.empty_cache()` and the allocated / reserved / total bytes of a card
// (`torch.cuda.memory_allocated`, `memory_reserved`, and the card's total). Built only with the
// `tch` feature (crates/train/build.rs).
//
// It includes c10's device-generic allocator header only (no CUDA headers), calls nothing
// whose signature holds a std::string (so the C++ ABI flag of the libtorch build does not
// matter), and reaches the CUDA driver through dlopen, so a CPU-only libtorch or a machine
// without a driver gives an error code and a message, never a crash or a link failure. It
// never calls the CUDA runtime: no context is created on a device the run does not use, and
// no runtime error is left for libtorch's next kernel launch to report.
// Every C++ exception stops here: the functions are C ABI and never throw.

#include <c10/core/Allocator.h>
#include <c10/core/CachingDeviceAllocator.h>

#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>

namespace {

void say(char* msg, size_t len, const char* text) {
  if (msg != nullptr && len > 0) {
    std::snprintf(msg, len, "%s", text);
  }
}

// LibTorch's CUDA allocator, or null with the reason in `msg` (a CPU-only libtorch has none).
c10::DeviceAllocator* cuda_allocator(char* msg, size_t len) {
  try {
    c10::Allocator* any = c10::GetAllocator(c10::DeviceType::CUDA);
    auto* device = dynamic_cast<c10::DeviceAllocator*>(any);
    if (device == nullptr) {
      say(msg, len, "LibTorch's CUDA allocator is not a caching device allocator");
    }
    return device;
  } catch (const std::exception& e) {
    say(msg, len, e.what());
  } catch (...) {
    say(msg, len, "LibTorch has no CUDA allocator (a CPU-only libtorch?)");
  }
  return nullptr;
}

// The CUDA driver API, for the card's size: it needs no context (the runtime's cudaMemGetInfo
// would create one on the current device) and leaves no sticky runtime error behind.
using cu_init_fn = int (*)(unsigned int);
using cu_device_get_fn = int (*)(int*, int);
using cu_total_mem_fn = int (*)(size_t*, int);
using cu_error_name_fn = int (*)(int, const char**);

}  // namespace

extern "C" {

// Releases the blocks LibTorch's CUDA allocator caches but no tensor uses (what
// `torch.cuda.empty_cache()` does). 0: done; 1: nothing to release (no CUDA allocator, or
// it never allocated); 2: it failed, the reason is in `msg`.
int oomph_tch_cuda_empty_cache(char* msg, size_t len) {
  c10::DeviceAllocator* allocator = cuda_allocator(msg, len);
  if (allocator == nullptr) {
    return 1;
  }
  try {
    if (!allocator->initialized()) {
      return 1;
    }
    allocator->emptyCache();
    return 0;
  } catch (const std::exception& e) {
    say(msg, len, e.what());
  } catch (...) {
    say(msg, len, "emptyCache failed");
  }
  return 2;
}

// CUDA device `device`'s memory in bytes (`total`), from the driver: no context is created
// and the runtime's state is not touched. 0: set; otherwise the reason is in `msg`.
int oomph_tch_cuda_total(int device, uint64_t* total, char* msg, size_t len) {
  void* driver = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
  if (driver == nullptr) {
    say(msg, len, "the CUDA driver (libcuda.so.1) cannot be loaded");
    return 1;
  }
  auto init = reinterpret_cast<cu_init_fn>(dlsym(driver, "cuInit"));
  auto device_get = reinterpret_cast<cu_device_get_fn>(dlsym(driver, "cuDeviceGet"));
  auto total_mem = reinterpret_cast<cu_total_mem_fn>(dlsym(driver, "cuDeviceTotalMem_v2"));
  auto error_name = reinterpret_cast<cu_error_name_fn>(dlsym(driver, "cuGetErrorString"));
  int rc = 1;
  if (init == nullptr || device_get == nullptr || total_mem == nullptr) {
    say(msg, len, "the CUDA driver lacks cuInit, cuDeviceGet or cuDeviceTotalMem_v2");
  } else {
    int handle = 0;
    size_t bytes = 0;
    int err = init(0);
    if (err == 0) {
      err = device_get(&handle, device);
    }
    if (err == 0) {
      err = total_mem(&bytes, handle);
    }
    if (err == 0) {
      *total = static_cast<uint64_t>(bytes);
      rc = 0;
    } else {
      const char* text = nullptr;
      if (error_name == nullptr || error_name(err, &text) != 0 || text == nullptr) {
        text = "no description";
      }
      char line[256];
      std::snprintf(line, sizeof line, "the CUDA driver answered error %d (%s) for device %d", err, text, device);
      say(msg, len, line);
      rc = 2;
    }
  }
  dlclose(driver);
  return rc;
}

// The bytes in live tensors (`allocated`) and held from the driver (`reserved`) by LibTorch's
// CUDA allocator on `device` (`torch.cuda.memory_allocated` and `memory_reserved`): both 0
// before it first allocates. Only the allocator's own counters are read: no CUDA call. 0: set;
// otherwise the reason is in `msg`.
int oomph_tch_cuda_allocator(int device, uint64_t* allocated, uint64_t* reserved, char* msg, size_t len) {
  c10::DeviceAllocator* allocator = cuda_allocator(msg, len);
  if (allocator == nullptr) {
    return 1;
  }
  try {
    *allocated = 0;
    *reserved = 0;
    if (allocator->initialized()) {
      const auto stats = allocator->getDeviceStats(static_cast<c10::DeviceIndex>(device));
      const auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
      *allocated = static_cast<uint64_t>(stats.allocated_bytes[all].current);
      *reserved = static_cast<uint64_t>(stats.reserved_bytes[all].current);
    }
    return 0;
  } catch (const std::exception& e) {
    say(msg, len, e.what());
  } catch (...) {
    say(msg, len, "getDeviceStats failed");
  }
  return 2;
}

}  // extern "C"
