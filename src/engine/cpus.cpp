#include "engine/cpus.h"

#include <sched.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <string>
#include <thread>

#include <spdlog/spdlog.h>

#include "cpuchat/engine.h"

namespace cpuchat {

namespace {

// The cgroup quota as a CPU count (rounded up), or 0 when there is none.
int cgroup_cpu_quota() {
  // v2: "max 100000" (no limit) or "<quota> <period>".
  if (std::ifstream v2("/sys/fs/cgroup/cpu.max"); v2) {
    std::string quota;
    double period = 0;
    if (v2 >> quota >> period && quota != "max" && period > 0) {
      const double q = std::atof(quota.c_str());
      if (q > 0) return int(std::ceil(q / period));
    }
    return 0;
  }
  // v1: quota -1 means no limit.
  std::ifstream quota_file("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), period_file("/sys/fs/cgroup/cpu/cpu.cfs_period_us");
  double quota = -1, period = 0;
  if (quota_file >> quota && period_file >> period && quota > 0 && period > 0) return int(std::ceil(quota / period));
  return 0;
}

}  // namespace

int available_cpus() {
  int n = int(std::max(1u, std::thread::hardware_concurrency()));
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) n = CPU_COUNT(&set);
  if (const int quota = cgroup_cpu_quota(); quota > 0) n = std::min(n, quota);
  return n;
}

int thread_count(int requested) {
  const int available = available_cpus();
  if (requested <= 0) return std::min(physical_cores(), available);
  if (requested > available) {
    spdlog::warn("--threads {} exceeds the {} CPUs available to this process; using {}", requested, available, available);
    return available;
  }
  return requested;
}

}  // namespace cpuchat
