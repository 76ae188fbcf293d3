// Instantiates every variant of the update kernels for __half storage (one file per storage type so
// the CUDA build compiles them in parallel). Torch-free.
#include "update_kernel.cuh"

namespace samplers {
namespace cuda {
cudaError_t launch_update_storage(StorageTag<__half>, const UpdateParams& p, cudaStream_t s) {
  return launch_update_typed<__half>(p, s);
}
}  // namespace cuda
}  // namespace samplers
