#include "server/slot_scheduler.h"

#include <chrono>

namespace cpuchat::server {

size_t common_prefix_length(const std::vector<int>& a, const std::vector<int>& b) {
  size_t n = std::min(a.size(), b.size()), i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return i;
}

Admission::~Admission() {
  if (sched_) sched_->leave_queue(ticket_);
}

SlotLease::~SlotLease() {
  if (sched_) sched_->release(slot_, std::move(cached_));
}

SlotScheduler::SlotScheduler(int n_slots, int max_queue)
    : slots_(static_cast<size_t>(std::max(1, n_slots))), max_queue_(std::max(0, max_queue)) {}

std::optional<Admission> SlotScheduler::try_admit() {
  std::lock_guard<std::mutex> lock(mu_);
  if (shutdown_) return std::nullopt;
  int free_slots = 0;
  for (const Slot& s : slots_) free_slots += !s.busy;
  // Requests already queued take the free slots first; only the rest must wait.
  int would_wait = static_cast<int>(queue_.size()) + 1 - free_slots;
  if (would_wait > max_queue_) return std::nullopt;
  uint64_t ticket = next_ticket_++;
  queue_.insert(ticket);
  return Admission(this, ticket);
}

void SlotScheduler::leave_queue(uint64_t ticket) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.erase(ticket);
  }
  cv_.notify_all();  // the next in line may now be first
}

int SlotScheduler::choose_slot(const std::vector<SlotView>& slots, const std::vector<int>& prompt) {
  int best = -1, lru = -1;
  size_t best_len = 0;
  for (int i = 0; i < static_cast<int>(slots.size()); ++i) {
    const SlotView& s = slots[i];
    if (s.busy) continue;
    size_t len = common_prefix_length(*s.cached, prompt);
    if (best < 0 || len > best_len ||
        (len == best_len && s.last_used < slots[best].last_used)) {
      best = i;
      best_len = len;
    }
    if (lru < 0 || s.last_used < slots[lru].last_used) lru = i;
  }
  if (best < 0) return -1;
  // A short shared prefix (say, only BOS and a system prompt) is not worth evicting a
  // conversation that may continue; prefer the least recently used slot then.
  return best_len * 2 >= prompt.size() && best_len > 0 ? best : lru;
}

std::optional<SlotLease> SlotScheduler::acquire(Admission admission, const std::vector<int>& prompt,
                                                const std::function<bool()>& keep_waiting,
                                                int poll_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    if (shutdown_) break;
    if (!queue_.empty() && *queue_.begin() == admission.ticket_) {
      std::vector<SlotView> views;
      views.reserve(slots_.size());
      for (const Slot& s : slots_) views.push_back({s.busy, &s.cached, s.last_used});
      int slot = choose_slot(views, prompt);
      if (slot >= 0) {
        slots_[slot].busy = true;
        slots_[slot].last_used = ++use_clock_;
        queue_.erase(admission.ticket_);
        admission.sched_ = nullptr;  // no longer queued
        lock.unlock();
        cv_.notify_all();  // the next in line may take another free slot
        return SlotLease(this, slot);
      }
    }
    cv_.wait_for(lock, std::chrono::milliseconds(poll_ms));
    if (keep_waiting && !keep_waiting()) break;
  }
  lock.unlock();  // the Admission's destructor takes the lock to leave the queue
  return std::nullopt;
}

void SlotScheduler::release(int slot, std::vector<int> cached) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    slots_[slot].busy = false;
    slots_[slot].cached = std::move(cached);
  }
  cv_.notify_all();
}

void SlotScheduler::shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    shutdown_ = true;
  }
  cv_.notify_all();
}

int SlotScheduler::active() const {
  std::lock_guard<std::mutex> lock(mu_);
  int n = 0;
  for (const Slot& s : slots_) n += s.busy;
  return n;
}

int SlotScheduler::waiting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(queue_.size());
}

}  // namespace cpuchat::server
