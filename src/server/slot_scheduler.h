// Slots and the waiting queue of one engine. `--parallel N` sessions (KV caches) serve
// requests; up to `--max-queue` more wait in FIFO order; beyond that a request is
// refused (429). A request gets the free slot whose cached tokens share the longest
// prefix with its prompt (as llama.cpp does), so a chat's next turn lands on the slot
// that already holds the conversation and only its new suffix is processed.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <vector>

namespace cpuchat::server {

class SlotScheduler;

// A place in the queue (RAII: dropping it leaves the queue).
class Admission {
 public:
  Admission(Admission&& o) noexcept : sched_(o.sched_), ticket_(o.ticket_) { o.sched_ = nullptr; }
  Admission(const Admission&) = delete;
  ~Admission();

 private:
  friend class SlotScheduler;
  Admission(SlotScheduler* s, uint64_t ticket) : sched_(s), ticket_(ticket) {}
  SlotScheduler* sched_;
  uint64_t ticket_;
};

// An acquired slot (RAII: dropping it frees the slot). Tell it what the slot's KV cache
// now holds so the next request can be routed by prefix.
class SlotLease {
 public:
  SlotLease(SlotLease&& o) noexcept : sched_(o.sched_), slot_(o.slot_), cached_(std::move(o.cached_)) { o.sched_ = nullptr; }
  SlotLease(const SlotLease&) = delete;
  ~SlotLease();
  int slot() const { return slot_; }
  void set_cached_tokens(std::vector<int> tokens) { cached_ = std::move(tokens); }

 private:
  friend class SlotScheduler;
  SlotLease(SlotScheduler* s, int slot) : sched_(s), slot_(slot) {}
  SlotScheduler* sched_;
  int slot_;
  std::vector<int> cached_;
};

class SlotScheduler {
 public:
  SlotScheduler(int n_slots, int max_queue);

  // Takes a place in the queue, or nothing when max_queue requests already wait
  // (a request that can start at once never counts as waiting).
  std::optional<Admission> try_admit();
  // Blocks until this request is first in line and a slot is free. Returns nothing if
  // `keep_waiting` turns false (polled every `poll_ms`) or on shutdown().
  std::optional<SlotLease> acquire(Admission admission, const std::vector<int>& prompt,
                                   const std::function<bool()>& keep_waiting, int poll_ms = 50);
  // Wakes every waiter; later acquires fail.
  void shutdown();

  int slots() const { return static_cast<int>(slots_.size()); }
  int active() const;   // slots in use
  int waiting() const;  // admitted requests without a slot

  // The slot choice, exposed for tests: among free slots, the longest common prefix with
  // the prompt if it covers at least half the prompt; else the least recently used slot.
  struct SlotView { bool busy; const std::vector<int>* cached; uint64_t last_used; };
  static int choose_slot(const std::vector<SlotView>& slots, const std::vector<int>& prompt);

 private:
  friend class Admission;
  friend class SlotLease;
  void leave_queue(uint64_t ticket);
  void release(int slot, std::vector<int> cached);

  struct Slot { bool busy = false; std::vector<int> cached; uint64_t last_used = 0; };
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Slot> slots_;
  std::set<uint64_t> queue_;  // tickets in arrival order
  int max_queue_;
  uint64_t next_ticket_ = 1;
  uint64_t use_clock_ = 0;
  bool shutdown_ = false;
};

size_t common_prefix_length(const std::vector<int>& a, const std::vector<int>& b);

}  // namespace cpuchat::server
