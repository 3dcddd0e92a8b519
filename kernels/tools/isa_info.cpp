// Prints the detected and the active ISA level and the kernels matmul() would use.
#include <cstdio>

#include "cpuchat_kernels/int4_matmul.h"

int main() {
  using namespace cpuchat::kernels;
  const PackedWeights w = PackedWeights::allocate(16, 32, Scheme::Q4G32);
  std::printf("detected=%s active=%s layout=%s gemv=%s gemm=%s\n", isa_name(detected_isa()), active_isa_name(),
              layout_name(w.header().layout), selected_kernel_name(w, 1), selected_kernel_name(w, 8));
  return 0;
}
