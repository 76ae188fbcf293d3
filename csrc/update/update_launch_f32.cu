// Instantiates every variant of the update kernels for float storage (one file per storage type so
// the CUDA build compiles them in parallel). Torch-free.
#include "update_kernel.cuh"

namespace samplers {
namespace cuda {
cudaError_t launch_update_storage(StorageTag<float>, const UpdateParams& p, cudaStream_t s) {
  return launch_update_typed<float>(p, s);
}
}  // namespace cuda
}  // namespace samplers
