// gtest main that first says which ISA paths this CPU offers (the aarch64 script shows it) and
// ends with the plain "N passed, N failed" line CI reads.
#include <gtest/gtest.h>

#include <cstdio>

#include "cpuchat_kernels/int4_matmul.h"

int main(int argc, char** argv) {
  using namespace cpuchat::kernels;
  ::testing::InitGoogleTest(&argc, argv);
  std::printf("cpuchat_kernels: detected ISA %s, active %s; levels tested:", isa_name(detected_isa()),
              active_isa_name());
  for (IsaLevel l : supported_isas()) std::printf(" %s", isa_name(l));
  std::printf("\n");
  const int rc = RUN_ALL_TESTS();
  const auto* unit = ::testing::UnitTest::GetInstance();
  std::printf("%d passed, %d failed\n", unit->successful_test_count(), unit->failed_test_count());
  return rc;
}
