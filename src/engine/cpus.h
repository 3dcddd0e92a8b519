// How many CPUs this process may really use, and the thread count to run with.
#pragma once

namespace cpuchat {

// CPUs the scheduler lets us run on: the affinity mask (taskset, cpusets), further capped by
// a cgroup CPU quota (cgroup v2 cpu.max or v1 cfs_quota_us, rounded up), as containers set.
int available_cpus();

// The threads to use for `requested` (0: physical cores): never more than available_cpus(),
// since oversubscribed OpenMP threads spin-wait on each other (1000 threads on 2 CPUs made a
// 20-token answer take 23 s). Warns when it caps a request.
int thread_count(int requested);

}  // namespace cpuchat
