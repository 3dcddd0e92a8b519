// Placeholder until the kernels land.
#include <stdexcept>
#include "model/model.h"
namespace cpuchat {
std::unique_ptr<Linear> make_int4_linear(const torch::Tensor&, QuantScheme) {
  throw std::runtime_error("the int4 backend is not available yet; use --backend bf16 or fp32");
}
std::string int4_isa_name() { return ""; }
}  // namespace cpuchat
