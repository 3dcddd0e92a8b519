#include <stdexcept>
#include "cli/commands.h"
namespace cpuchat {
int bench_command(int, char**) { throw std::runtime_error("bench is not implemented yet"); }
}  // namespace cpuchat
