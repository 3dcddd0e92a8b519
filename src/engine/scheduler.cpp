#include "engine/scheduler.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <random>

#include <spdlog/spdlog.h>

#include "engine/sampler.h"

namespace cpuchat {

namespace {

using Clock = std::chrono::steady_clock;
double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Holds back generated text that might be the start of a stop string.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  // Adds text; returns what can be shown now. Sets `stopped` when a stop string appears
  // (the stop string and anything after it are dropped).
  std::string push(const std::string& text, bool& stopped) {
    pending_ += text;
    size_t cut = std::string::npos;
    for (const auto& s : stops_)
      if (!s.empty()) cut = std::min(cut, pending_.find(s));
    if (cut != std::string::npos) {
      stopped = true;
      std::string out = pending_.substr(0, cut);
      pending_.clear();
      return out;
    }
    size_t hold = 0;  // the longest suffix of pending_ that begins some stop string
    for (const auto& s : stops_)
      for (size_t n = std::min(s.size() - 1, pending_.size()); n > hold; --n)
        if (pending_.compare(pending_.size() - n, n, s, 0, n) == 0) {
          hold = n;
          break;
        }
    std::string out = pending_.substr(0, pending_.size() - hold);
    pending_.erase(0, pending_.size() - hold);
    return out;
  }
  std::string flush() { return std::exchange(pending_, {}); }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
};

}  // namespace

size_t common_prefix_length(const std::vector<int>& a, const std::vector<int>& b) {
  size_t n = std::min(a.size(), b.size()), i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return i;
}

// Whether a sampled token is answer text: every text piece, and of the special tokens only
// Llama 3.1's <|python_tag|>, which opens a tool call the server parses from the text.
static bool shown_as_text(const Tokenizer& tok, int id) {
  return !tok.is_special(id) || tok.token_bytes(id) == "<|python_tag|>";
}

// ---- One request ----------------------------------------------------------------------

struct Scheduler::Job final : Generation {
  GenerateRequest req;
  Clock::time_point t_submit = Clock::now(), t_admitted, t_first, t_last;

  // Owned by the loop thread from admission on.
  uint64_t admit_seq = 0;
  size_t pos = 0;            // prompt tokens whose keys/values are in the slot
  bool decoding = false;     // the prompt is done; next_token runs next step
  int next_token = -1;
  bool any_token = false;    // a token (or EOS) was sampled
  bool stop_hit = false;
  std::optional<Sampler> sampler;
  std::optional<StreamingDecoder> decoder;
  std::optional<StopMatcher> stop;
  std::vector<int> history;  // prompt + generated, for the penalties
  const std::vector<int>* eos = nullptr;
  GenerateResult result;
  double billed = 0, billed_decode = 0, decode_step_s = 0;
  int64_t decode_step_tokens = 0, steps = 0, batch_sum = 0;

  // Shared with the waiter.
  std::mutex mu;
  std::condition_variable cv;
  std::deque<TokenEvent> events;
  bool done = false;
  std::exception_ptr error;
  std::atomic<bool> cancelled{false};

  void cancel() override { cancelled = true; }

  GenerateResult wait(const TokenCallback& on_token, const std::function<bool()>& keep_going) override {
    // What the caller accepted before it cancelled: the loop may have run a step further.
    size_t accepted_ids = 0;
    std::string accepted_text;
    bool refused = false;
    for (;;) {
      std::deque<TokenEvent> batch;
      bool finished;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait_for(lock, std::chrono::milliseconds(20), [&] { return done || !events.empty(); });
        batch.swap(events);
        finished = done;
      }
      for (const TokenEvent& ev : batch) {
        if (refused) break;
        if (on_token && !on_token(ev)) {
          refused = true;
          cancel();
        }
        accepted_ids += ev.id >= 0;
        accepted_text += ev.text;
      }
      if (finished) {
        if (error) std::rethrow_exception(error);
        if (refused && result.finish_reason == "cancelled") {  // the answer ends where the caller stopped it
          result.ids.resize(std::min(result.ids.size(), accepted_ids));
          result.logprobs.resize(std::min(result.logprobs.size(), accepted_ids));
          result.text = accepted_text;
          result.metrics.completion_tokens = int(result.ids.size());
        }
        return result;
      }
      if (keep_going && !cancelled && !keep_going()) cancel();
    }
  }

  void emit(TokenEvent ev) {
    {
      std::lock_guard<std::mutex> lock(mu);
      events.push_back(std::move(ev));
    }
    cv.notify_all();
  }

  // The logits of the last row run: samples the next token. Returns true when the answer
  // is over (result.finish_reason set); `cached` is the slot's length after this step.
  bool on_logits(const float* logits, int vocab, const Tokenizer* tok, size_t cached, int ctx) {
    std::vector<float> row(logits, logits + vocab);
    std::vector<float> raw;
    if (req.top_logprobs >= 0) raw = row;  // logprobs describe the model, before penalties
    if (req.constraint)  // budget: max_tokens, or the context end (this token always counts)
      req.constraint->mask(row.data(), vocab, std::min(req.max_tokens - int(result.ids.size()), ctx - int(cached) + 1));
    const int id = sampler->sample(row, history, result.ids);
    t_last = Clock::now();
    if (!any_token) t_first = t_last;
    any_token = true;
    // A control token sampled mid-answer (a SentencePiece <s>, a Llama 3 header token) is no
    // text: it is skipped, as its family's decoders do.
    const bool as_text = tok && decoder && shown_as_text(*tok, id);
    std::optional<TokenLogprob> lp;
    if (req.top_logprobs >= 0) {
      lp = logprobs_of(raw, id, req.top_logprobs);
      if (tok) lp->text = as_text ? decoder->piece(id) : "";  // exactly what the token adds to the text
    }
    if (std::find(eos->begin(), eos->end(), id) != eos->end()) {
      result.finish_reason = "stop";
      return true;
    }
    if (req.constraint) req.constraint->accept(id);
    result.ids.push_back(id);
    history.push_back(id);
    if (lp) result.logprobs.push_back(*lp);
    TokenEvent ev;
    ev.id = id;
    ev.logprob = lp;
    if (as_text) ev.text = stop->push(decoder->push(id), stop_hit);
    result.text += ev.text;
    emit(std::move(ev));
    if (stop_hit || (req.constraint && req.constraint->finished())) {  // a constrained answer ends when complete
      result.finish_reason = "stop";
      return true;
    }
    if (int(result.ids.size()) >= req.max_tokens || int(cached) >= ctx) {
      result.finish_reason = "length";  // the budget, or no room for the next position
      return true;
    }
    next_token = id;
    decoding = true;
    return false;
  }

  // Ends the answer: the held-back text, the metrics, and the waiter is woken.
  void complete(const std::string& reason) {
    if (!reason.empty()) result.finish_reason = reason;
    if (decoder && !stop_hit && result.finish_reason != "cancelled") {
      std::string tail = stop->push(decoder->flush(), stop_hit);
      if (!stop_hit) tail += stop->flush();
      if (stop_hit) result.finish_reason = "stop";
      if (!tail.empty()) {
        result.text += tail;
        TokenEvent ev;  // the held-back end of the text, with no new token
        ev.id = -1;
        ev.text = tail;
        emit(std::move(ev));
      }
    }
    const auto now = Clock::now();
    Metrics& m = result.metrics;
    m.prompt_tokens = int(req.prompt_ids.size());
    m.completion_tokens = int(result.ids.size());
    const bool admitted = admit_seq > 0;
    m.queue_time_s = seconds((admitted ? t_admitted : now) - t_submit);
    m.ttft_s = any_token ? seconds(t_first - t_submit) : seconds(now - t_submit);
    const double prefill_s = any_token ? seconds(t_first - t_admitted) : 0;
    m.prompt_tokens_per_s = prefill_s > 0 ? m.prompt_tokens_processed / prefill_s : 0;
    const double decode_s = any_token ? seconds(t_last - t_first) : 0;
    m.decode_tokens_per_s = (m.completion_tokens > 1 && decode_s > 0) ? (m.completion_tokens - 1) / decode_s : 0;
    m.total_time_s = seconds(now - t_submit);
    m.billed_time_s = billed;
    m.billed_decode_time_s = billed_decode;
    m.mean_batch_size = steps ? double(batch_sum) / double(steps) : 0;
    m.instance_decode_tokens_per_s = decode_step_s > 0 ? double(decode_step_tokens) / decode_step_s : 0;
    {
      std::lock_guard<std::mutex> lock(mu);
      done = true;
    }
    cv.notify_all();
  }
};

// ---- Scheduler ------------------------------------------------------------------------

Scheduler::Scheduler(StepModel& model, const Tokenizer* tokenizer, BatchOptions opts)
    : model_(model), tokenizer_(tokenizer), opts_(opts) {
  opts_.slots = std::max(1, opts_.slots);
  opts_.max_queue = std::max(0, opts_.max_queue);
  opts_.batch_tokens = std::max(opts_.slots, opts_.batch_tokens);
  slots_.resize(size_t(opts_.slots));
  stats_.slots = opts_.slots;
  stats_.steps_by_batch_size.assign(size_t(opts_.slots) + 1, 0);
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() {
  shutdown();
  if (thread_.joinable()) thread_.join();
}

void Scheduler::shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
}

void Scheduler::drain() {
  std::lock_guard<std::mutex> lock(mu_);
  draining_ = true;
}

std::shared_ptr<Generation> Scheduler::submit(GenerateRequest req) {
  const auto& prompt = req.prompt_ids;
  if (prompt.empty()) throw std::invalid_argument("the prompt is empty");
  for (int id : prompt)
    if (id < 0 || id >= model_.vocab_size())
      throw std::invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary (0.." +
                                  std::to_string(model_.vocab_size() - 1) + ")");
  if (int(prompt.size()) >= model_.ctx()) throw ContextOverflow(int(prompt.size()), model_.ctx());
  auto job = std::make_shared<Job>();
  job->req = std::move(req);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_ || draining_) throw SchedulerStopped();
    int free_slots = 0;
    for (const Slot& s : slots_) free_slots += !s.job;
    // Requests already queued take the free slots first; only the rest must wait.
    if (int(queue_.size()) + 1 - free_slots > opts_.max_queue) throw QueueFull();
    queue_.push_back(job);
  }
  wake_.notify_all();
  return job;
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  SchedulerStats s = stats_;
  s.queued = int(queue_.size());
  s.busy_slots = 0;
  int64_t positions = 0;
  for (const Slot& slot : slots_) {
    s.busy_slots += slot.job != nullptr;
    positions += int64_t(slot.cached.size());
  }
  s.kv_bytes_in_use = positions * model_.kv_bytes_per_token();
  s.kv_bytes_capacity = int64_t(slots_.size()) * model_.ctx() * model_.kv_bytes_per_token();
  return s;
}

int Scheduler::choose_slot(const std::vector<SlotView>& slots, const std::vector<int>& prompt,
                           const std::string& key) {
  auto owned_by_other = [&](const SlotView& s) { return !key.empty() && s.key && !s.key->empty() && *s.key != key; };
  if (!key.empty())
    for (int i = 0; i < int(slots.size()); ++i)
      if (!slots[size_t(i)].busy && slots[size_t(i)].key && *slots[size_t(i)].key == key) return i;
  // Slots holding other conversations are considered only when no other slot is free.
  bool any_unowned = false;
  for (const SlotView& s : slots) any_unowned |= !s.busy && !owned_by_other(s);
  int best = -1, lru = -1;
  size_t best_len = 0;
  for (int i = 0; i < int(slots.size()); ++i) {
    const SlotView& s = slots[size_t(i)];
    if (s.busy || (any_unowned && owned_by_other(s))) continue;
    const size_t len = common_prefix_length(*s.cached, prompt);
    if (best < 0 || len > best_len || (len == best_len && s.last_used < slots[size_t(best)].last_used)) {
      best = i;
      best_len = len;
    }
    if (lru < 0 || s.last_used < slots[size_t(lru)].last_used) lru = i;
  }
  if (best < 0) return -1;
  // A short shared prefix (say, only BOS and a system prompt) is not worth evicting a
  // conversation that may continue; prefer the least recently used slot then (a prefix
  // another slot holds is copied into it anyway).
  return best_len * 2 >= prompt.size() && best_len > 0 ? best : lru;
}

// Prompt rows a newcomer would share with a prompt still being processed before it is worth
// waiting for them (n > 1 samples, or simultaneous chats behind one long system prompt).
constexpr size_t kMinSharedPrefill = 16;

bool Scheduler::waits_for_shared_prefill_locked(const Job& job) const {
  const std::vector<int>& prompt = job.req.prompt_ids;
  if (!job.req.cache_prompt) return false;
  size_t available = 0;  // the longest prefix some slot already holds
  for (const Slot& s : slots_) available = std::max(available, common_prefix_length(s.cached, prompt));
  for (const Slot& s : slots_) {
    if (!s.job || s.job->decoding) continue;
    const size_t shared = std::min(common_prefix_length(s.job->req.prompt_ids, prompt), prompt.size() - 1);
    if (shared > s.cached.size() && shared >= available + kMinSharedPrefill) return true;
  }
  return false;
}

void Scheduler::admit_locked() {
  for (auto it = queue_.begin(); it != queue_.end();) {
    if (std::all_of(slots_.begin(), slots_.end(), [](const Slot& s) { return s.job; })) return;  // no free slot
    // A request whose prompt begins with rows another slot is still computing waits for
    // them (they are then copied, not computed twice); the requests behind it go on.
    if (waits_for_shared_prefill_locked(**it)) {
      ++it;
      continue;
    }
    const std::vector<int>& prompt = (*it)->req.prompt_ids;
    std::vector<SlotView> views;
    for (const Slot& s : slots_) views.push_back({s.job != nullptr, &s.cached, s.last_used, &s.key});
    const int s = choose_slot(views, prompt, (*it)->req.affinity_key);
    if (s < 0) return;
    std::shared_ptr<Job> job = *it;
    it = queue_.erase(it);
    Slot& slot = slots_[size_t(s)];
    // The longest prefix any slot holds (a shared system prompt, a forked conversation):
    // copied into this slot rather than computed again. At least the last prompt token
    // is always run, for its logits.
    const bool reuse = job->req.cache_prompt;
    const size_t own = reuse ? common_prefix_length(slot.cached, prompt) : 0;
    size_t best = own;
    int source = -1;
    for (int i = 0; i < int(slots_.size()) && reuse; ++i) {
      if (i == s) continue;
      const size_t n = common_prefix_length(slots_[size_t(i)].cached, prompt);
      if (n > best) best = n, source = i;
    }
    const size_t common = std::min(best, prompt.size() - 1);
    if (source >= 0 && common > own) model_.copy_prefix(source, s, int(common));
    slot.cached.assign(prompt.begin(), prompt.begin() + long(common));
    slot.job = job;
    slot.key = job->req.affinity_key;
    slot.last_used = ++use_clock_;

    Job& j = *job;
    j.admit_seq = ++admissions_;
    j.t_admitted = Clock::now();
    j.pos = common;
    j.result.metrics.prompt_tokens_processed = int(prompt.size() - common);
    const uint64_t seed = j.req.sampling.seed ? *j.req.sampling.seed : std::random_device{}();
    j.sampler.emplace(j.req.sampling, seed);
    if (tokenizer_) j.decoder.emplace(*tokenizer_);
    j.stop.emplace(j.req.stop);
    j.history = prompt;
    static const std::vector<int> no_eos;
    j.eos = (j.req.ignore_eos || !tokenizer_) ? &no_eos : &tokenizer_->eos_ids;
    stats_.prompt_tokens_cached += int64_t(common);
  }
}

void Scheduler::finish(int s, const char* reason) {
  std::shared_ptr<Job> job;
  {
    std::lock_guard<std::mutex> lock(mu_);
    job = std::move(slots_[size_t(s)].job);
    slots_[size_t(s)].job = nullptr;
    stats_.generated_tokens += int64_t(job->result.ids.size());
  }
  job->complete(reason ? reason : "");
  wake_.notify_all();
}

// Prompt rows a step carries beside the decode rows before the cost model knows better.
constexpr int kMinPrefillRows = 8;
// When the decode rows alone fill the budget, a waiting prompt still gets this many times their
// time in each step. 1 (half of each step) left an 8-request burst on 8B (session 7's Xeon VM)
// mostly decoding its first streams while the others waited for their prompts: aggregate 2.2x
// one stream, TTFT p95 37 s; 2: 3.25x, 30 s; 3: 4.1x, 19 s. With 3 running streams slow down
// at most 4x while a prompt is processed (a 4-stream 8B step with a prompt chunk ~1 s here,
// inside issue 9's 1.5 s gap target).
constexpr double kPrefillTimeOverDecode = 3.0;

// Prompt rows for the next step: what fits in --step-budget-ms beside the decode rows, but
// never less than kPrefillTimeOverDecode x the decode rows' own time, so the newcomer's first
// token does not wait for the running streams' answers.
int Scheduler::prefill_budget(int decode_rows) const {
  const int cap = std::max(1, opts_.batch_tokens - decode_rows);
  if (decode_rows == 0) return cap;  // nobody is waiting for a token: the biggest chunk
  const int floor = std::min(cap, kMinPrefillRows);
  if (ms_per_prefill_row_ <= 0) return floor;
  const double rows = std::max(opts_.step_budget_ms - base_ms_, kPrefillTimeOverDecode * base_ms_) / ms_per_prefill_row_;
  return std::clamp(rows < double(cap) ? int(rows) : cap, floor, cap);
}

void Scheduler::loop() {
  std::vector<float> logits;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      for (;;) {
        for (auto it = queue_.begin(); it != queue_.end();) {
          if ((*it)->cancelled || stop_) {
            (*it)->complete("cancelled");
            it = queue_.erase(it);
          } else {
            ++it;
          }
        }
        const bool running = std::any_of(slots_.begin(), slots_.end(), [](const Slot& s) { return s.job; });
        if (stop_ && !running) return;
        if (running) break;
        if (queue_.empty()) wake_.wait(lock);
        else if (std::none_of(slots_.begin(), slots_.end(), [](const Slot& s) { return !s.job; }))
          wake_.wait_for(lock, std::chrono::milliseconds(20));
        else break;
      }
      admit_locked();
    }
    for (int s = 0; s < int(slots_.size()); ++s) {
      const std::shared_ptr<Job>& job = slots_[size_t(s)].job;
      if (job && (job->cancelled || stop_)) finish(s, "cancelled");
    }

    // The step: one row per decoding sequence, then prompt chunks, oldest request first.
    std::vector<StepSpan> spans;
    std::vector<int> prefill_slots;
    for (int s = 0; s < int(slots_.size()); ++s) {
      const Slot& slot = slots_[size_t(s)];
      if (!slot.job) continue;
      if (slot.job->decoding) spans.push_back({s, int(slot.cached.size()), {slot.job->next_token}, true});
      else prefill_slots.push_back(s);
    }
    const int decode_rows = int(spans.size());
    std::sort(prefill_slots.begin(), prefill_slots.end(),
              [&](int a, int b) { return slots_[size_t(a)].job->admit_seq < slots_[size_t(b)].job->admit_seq; });
    int budget = prefill_budget(decode_rows), prefill_rows = 0;
    for (int s : prefill_slots) {
      if (budget <= 0) break;
      Job& j = *slots_[size_t(s)].job;
      const auto& prompt = j.req.prompt_ids;
      const int n = std::min(int(prompt.size() - j.pos), budget);
      spans.push_back({s, int(j.pos), std::vector<int>(prompt.begin() + long(j.pos), prompt.begin() + long(j.pos) + n),
                       j.pos + size_t(n) == prompt.size()});
      budget -= n;
      prefill_rows += n;
    }
    if (spans.empty()) continue;

    const auto t0 = Clock::now();
    try {
      model_.on_loop_thread();
      model_.step(spans, logits);
    } catch (...) {  // a failed step fails its requests, not the server
      for (const StepSpan& sp : spans) {
        std::shared_ptr<Job> job = slots_[size_t(sp.slot)].job;
        {
          std::lock_guard<std::mutex> lock(mu_);
          slots_[size_t(sp.slot)].cached.clear();  // what the cache holds is unknown now
        }
        job->error = std::current_exception();
        finish(sp.slot, nullptr);
      }
      continue;
    }

    // After the step: the slots hold the new rows; sample where logits came back.
    struct Sample { int slot; const float* row; bool ended; };
    std::vector<Sample> samples;
    {
      std::lock_guard<std::mutex> lock(mu_);
      int row = 0;
      for (const StepSpan& sp : spans) {
        Slot& slot = slots_[size_t(sp.slot)];
        slot.cached.insert(slot.cached.end(), sp.tokens.begin(), sp.tokens.end());
        Job& j = *slot.job;
        if (!j.decoding) j.pos += sp.tokens.size();
        if (sp.logits) samples.push_back({sp.slot, logits.data() + size_t(row++) * size_t(model_.vocab_size()), false});
      }
      stats_.steps += 1;
      stats_.step_rows += decode_rows + prefill_rows;
      stats_.prompt_tokens_processed += prefill_rows;
      stats_.steps_by_batch_size[std::min(spans.size(), slots_.size())] += 1;
    }
    const int vocab = model_.vocab_size(), ctx = model_.ctx();
    // Each sequence samples on its own (penalties, top-k over the vocabulary, ...), in parallel.
    at::parallel_for(0, int64_t(samples.size()), 1, [&](int64_t a, int64_t b) {
      for (int64_t i = a; i < b; ++i) {
        Sample& smp = samples[size_t(i)];
        Slot& slot = slots_[size_t(smp.slot)];
        smp.ended = slot.job->on_logits(smp.row, vocab, tokenizer_, slot.cached.size(), ctx);
      }
    });

    // Bill the step: its time is shared by its sequences.
    const double step_s = seconds(Clock::now() - t0);
    for (size_t i = 0; i < spans.size(); ++i) {
      Job& j = *slots_[size_t(spans[i].slot)].job;
      const double share = step_s / double(spans.size());
      j.billed += share;
      j.steps += 1;
      j.batch_sum += int64_t(spans.size());
      if (int(i) < decode_rows) {  // a decode step: it produced the token after the first
        j.billed_decode += share;
        j.decode_step_s += step_s;
        j.decode_step_tokens += decode_rows;
      }
    }
    // The cost model that sizes the next prefill chunk.
    const double step_ms = step_s * 1e3;
    // Rising costs (a prompt's attention grows with its length) are taken at once, falling
    // ones slowly, so a step overshoots its budget for at most one step.
    auto ema = [](double old, double now) { return old > 0 && now < old ? 0.7 * old + 0.3 * now : now; };
    spdlog::trace("step: {} decode + {} prompt rows, {:.1f} ms (model: {:.1f} ms + {:.2f} ms/prompt row)", decode_rows,
                  prefill_rows, step_ms, base_ms_, ms_per_prefill_row_);
    if (prefill_rows == 0) base_ms_ = ema(base_ms_, step_ms);
    else if (prefill_rows >= 4) ms_per_prefill_row_ = ema(ms_per_prefill_row_, std::max(0.001, (step_ms - (decode_rows ? base_ms_ : 0)) / prefill_rows));

    for (const Sample& smp : samples)
      if (smp.ended) finish(smp.slot, nullptr);
  }
}

}  // namespace cpuchat
