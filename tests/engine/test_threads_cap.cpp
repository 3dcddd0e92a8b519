// --threads is capped at the CPUs the process may use (item 10 of issue 12): oversubscribed
// OpenMP threads spin on each other, so 1000 threads on 2 CPUs answered 20 tokens in 23 s.
#include <gtest/gtest.h>
#include <sched.h>

#include <nlohmann/json.hpp>

#include "common/run_process.h"

using cpuchat::test::run_process;

namespace {

const std::string kModel = std::string(CPUCHAT_SHARED_DIR) + "/models/hf/stories260K";

int threads_used(const std::vector<std::string>& prefix, const std::string& threads, std::string* err) {
  std::vector<std::string> argv = prefix;
  for (const char* a : {CPUCHAT_BINARY, "generate", "--backend", "int4", "--json", "--prompt", "Once", "--max-tokens", "4",
                        "--threads"})
    argv.push_back(a);
  argv.push_back(threads);
  argv.push_back("--model");
  argv.push_back(kModel);
  auto r = run_process(argv);
  *err = r.err;
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return nlohmann::json::parse(r.out)["metrics"]["threads"].get<int>();
}

TEST(ThreadsCap, MoreThreadsThanCpusIsCappedWithAWarning) {
  cpu_set_t set;
  ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  const int cpus = CPU_COUNT(&set);  // what this test process may use; the child inherits it
  std::string err;
  EXPECT_EQ(threads_used({}, "1000", &err), cpus);
  EXPECT_NE(err.find("--threads 1000 exceeds the " + std::to_string(cpus) + " CPUs available"), std::string::npos) << err;
  EXPECT_EQ(threads_used({}, "1", &err), 1);
  EXPECT_EQ(err.find("exceeds"), std::string::npos) << err;
}

TEST(ThreadsCap, AffinityMaskIsRespected) {
  // taskset pins the child to one CPU: the cap must follow the mask, not the machine.
  std::string err;
  EXPECT_EQ(threads_used({"/usr/bin/taskset", "-c", "0"}, "8", &err), 1);
  EXPECT_NE(err.find("--threads 8 exceeds the 1 CPUs available"), std::string::npos) << err;
}

}  // namespace
