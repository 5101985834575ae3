// The row kernel for any CPU (at::vec's portable implementation).
#define CPU_CAPABILITY DEFAULT
#include "cpu/gate_kernel.h"

namespace eexit::cpu {
void gate_rows_default(const GateArgs& args, int64_t begin, int64_t end) {
  DEFAULT::gate_rows_dispatch(args, begin, end);
}
}  // namespace eexit::cpu
