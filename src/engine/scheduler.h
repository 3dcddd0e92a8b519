// The engine loop: the one owner of a model's forward pass. Requests wait in a FIFO queue
// for one of N slots (KV caches); every step runs the next token of each decoding
// sequence together with a chunk of the oldest prompts still being processed (chunked
// prefill, sized so a step stays within a time budget), as one batched forward pass.
// Sampling, stop strings and detokenizing run per sequence after the step; tokens reach
// each requester through its Generation handle, on the requester's own thread.
#pragma once
#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cpuchat/engine.h"
#include "cpuchat/tokenizer.h"

namespace cpuchat {

// One sequence's rows in a forward step: `tokens` at positions start_pos.. of slot `slot`.
struct StepSpan {
  int slot = 0;
  int start_pos = 0;
  std::vector<int> tokens;
  bool logits = false;  // the logits of its last row are wanted
};

// What the scheduler needs from a model: per-slot KV caches and one batched step.
// The real one wraps Model (engine.cpp); the server tests plug in a scripted one.
class StepModel {
 public:
  virtual ~StepModel() = default;
  virtual int vocab_size() const = 0;
  virtual int ctx() const = 0;  // positions per slot
  virtual int64_t kv_bytes_per_token() const = 0;
  // Runs every span in one forward step; `logits` receives [spans with logits, vocab].
  virtual void step(const std::vector<StepSpan>& spans, std::vector<float>& logits) = 0;
  // Copies cached positions [0, n) of slot `from` into slot `to`.
  virtual void copy_prefix(int from, int to, int n) = 0;
  // Called on the loop thread before each step (e.g. to apply the thread count).
  virtual void on_loop_thread() {}
};

class Scheduler {
 public:
  // `tokenizer` may be null (token ids only: no text, no EOS). Starts the loop thread.
  Scheduler(StepModel& model, const Tokenizer* tokenizer, BatchOptions opts);
  ~Scheduler();  // shuts down and joins the loop

  std::shared_ptr<Generation> submit(GenerateRequest req);
  SchedulerStats stats() const;
  void shutdown();  // cancel everything, refuse new requests
  // Graceful stop: refuse new requests (SchedulerStopped) but let the running and queued
  // ones finish. shutdown() later still cancels whatever is left.
  void drain();

  // The slot choice (exposed for tests): among free slots, the one that last served the
  // request's affinity key; else the longest common prefix with the prompt if it covers at
  // least half the prompt; else the least recently used slot. With a key, slots that hold
  // another key's conversation come last in both rules.
  struct SlotView {
    bool busy;
    const std::vector<int>* cached;
    uint64_t last_used;
    const std::string* key = nullptr;  // affinity key of the slot's last request
  };
  static int choose_slot(const std::vector<SlotView>& slots, const std::vector<int>& prompt,
                         const std::string& key = {});

  struct Job;

 private:
  struct Slot {
    std::shared_ptr<Job> job;     // null: free
    std::vector<int> cached;      // tokens whose keys/values the slot's cache holds, in order
    std::string key;              // affinity key of the last request ("" none)
    uint64_t last_used = 0;
  };
  void loop();
  void admit_locked();                     // queue -> free slots
  bool waits_for_shared_prefill_locked(const Job& job) const;
  void finish(int slot, const char* reason);  // frees the slot, hands the result to the waiter
  int prefill_budget(int decode_rows) const;

  StepModel& model_;
  const Tokenizer* tokenizer_;
  BatchOptions opts_;

  mutable std::mutex mu_;  // guards queue_, slots_ (metadata), stats_, stop_
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::vector<Slot> slots_;
  SchedulerStats stats_;
  uint64_t use_clock_ = 0;
  uint64_t admissions_ = 0;
  bool stop_ = false;
  bool draining_ = false;  // submit() refuses; the loop runs on

  // Step cost model for chunked prefill (loop thread only): a step costs about
  // base_ms (one pass over the weights with the decode rows) + ms_per_prefill_row each.
  double base_ms_ = 0, ms_per_prefill_row_ = 0;

  std::thread thread_;
};

size_t common_prefix_length(const std::vector<int>& a, const std::vector<int>& b);

}  // namespace cpuchat
