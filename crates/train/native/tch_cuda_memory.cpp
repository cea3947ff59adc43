// What oomph needs from LibTorch's CUDA caching allocator that neither tch nor burn-tch
// exposes: `torch.cuda.empty_cache()` and the allocated / reserved / total bytes of a card
// (`torch.cuda.memory_allocated`, `memory_reserved`, `mem_get_info`). Built only with the
// `tch` feature (crates/train/build.rs).
//
// It includes c10's device-generic allocator header only (no CUDA headers), calls nothing
// whose signature holds a std::string (so the C++ ABI flag of the libtorch build does not
// matter), and reaches the CUDA runtime through dlsym, so a CPU-only libtorch or a machine
// without a driver gives an error code and a message, never a crash or a link failure.
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

using cuda_int_fn = int (*)(int*);
using cuda_set_fn = int (*)(int);
using cuda_info_fn = int (*)(size_t*, size_t*);
using cuda_name_fn = const char* (*)(int);

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

// The bytes in live tensors (`allocated`) and held from the driver (`reserved`) by
// LibTorch's CUDA allocator on `device`, and the card's memory (`total`, from
// cudaMemGetInfo on that device). 0: all three are set; otherwise the reason is in `msg`.
int oomph_tch_cuda_memory(int device, uint64_t* allocated, uint64_t* reserved, uint64_t* total,
                          char* msg, size_t len) {
  auto get_device = reinterpret_cast<cuda_int_fn>(dlsym(RTLD_DEFAULT, "cudaGetDevice"));
  auto set_device = reinterpret_cast<cuda_set_fn>(dlsym(RTLD_DEFAULT, "cudaSetDevice"));
  auto mem_info = reinterpret_cast<cuda_info_fn>(dlsym(RTLD_DEFAULT, "cudaMemGetInfo"));
  if (get_device == nullptr || set_device == nullptr || mem_info == nullptr) {
    say(msg, len, "the CUDA runtime is not loaded (a CPU-only libtorch?)");
    return 1;
  }
  int previous = 0;
  int rc = get_device(&previous);
  if (rc == 0 && previous != device) {
    rc = set_device(device);
  }
  size_t free_bytes = 0;
  size_t total_bytes = 0;
  if (rc == 0) {
    rc = mem_info(&free_bytes, &total_bytes);
  }
  if (previous != device) {
    set_device(previous);
  }
  if (rc != 0) {
    auto name = reinterpret_cast<cuda_name_fn>(dlsym(RTLD_DEFAULT, "cudaGetErrorString"));
    char text[256];
    std::snprintf(text, sizeof text, "the CUDA runtime answered error %d (%s) for device %d", rc,
                  name != nullptr ? name(rc) : "no description", device);
    say(msg, len, text);
    return 2;
  }
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
    *total = static_cast<uint64_t>(total_bytes);
    return 0;
  } catch (const std::exception& e) {
    say(msg, len, e.what());
  } catch (...) {
    say(msg, len, "getDeviceStats failed");
  }
  return 2;
}

}  // extern "C"
