// The engine scheduler over a scripted step model (tests/common/scripted_model.h): slot
// choice, the bounded FIFO queue, batching of concurrent requests into shared steps,
// chunked prefill that never starves a decoding stream, prefix copies between slots,
// cancellation, drain and shutdown, and the billing of shared steps.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "common/scripted_model.h"

using namespace cpuchat;
using namespace cpuchat::testing;

namespace {

std::vector<int> prompt_of(const std::string& text) {
  std::vector<int> ids{kByteBos};
  for (unsigned char c : text) ids.push_back(c);
  return ids;
}

GenerateRequest request(const std::string& text, int max_tokens = 200) {
  GenerateRequest r;
  r.prompt_ids = prompt_of(text);
  r.max_tokens = max_tokens;
  r.sampling.temperature = 0;
  return r;
}

BatchOptions batch(int slots, int max_queue = 16) {
  BatchOptions b;
  b.slots = slots;
  b.max_queue = max_queue;
  return b;
}

TEST(Scheduler, SlotChoiceByLongestPrefixWhenItCoversHalfThePrompt) {
  std::vector<int> conv_a = {1, 10, 11, 12, 13, 14, 15};
  std::vector<int> conv_b = {1, 20, 21, 22};
  std::vector<int> empty;
  std::vector<Scheduler::SlotView> slots = {{false, &conv_b, 5}, {false, &conv_a, 3}, {false, &empty, 0}};
  EXPECT_EQ(Scheduler::choose_slot(slots, {1, 10, 11, 12, 13, 14, 15, 16, 17}), 1);
  EXPECT_EQ(Scheduler::choose_slot(slots, {1, 20, 21, 22, 23}), 0);
  // A new conversation (only BOS shared): the least recently used (empty) slot.
  EXPECT_EQ(Scheduler::choose_slot(slots, {1, 30, 31, 32, 33}), 2);
  slots[1].busy = true;  // busy slots are never chosen
  EXPECT_EQ(Scheduler::choose_slot(slots, {1, 10, 11, 12, 13, 14, 15, 16}), 2);
  slots[0].busy = slots[2].busy = true;
  EXPECT_EQ(Scheduler::choose_slot(slots, {1}), -1);
}

TEST(Scheduler, SlotChoiceKeepsEachAffinityKeysSlot) {
  // Two conversations that share a long template prefix; slot 0 last served "alice".
  std::vector<int> alice = {1, 5, 5, 5, 5, 5, 10, 11};
  std::vector<int> empty;
  const std::string k_alice = "alice", k_bob = "bob", none;
  std::vector<Scheduler::SlotView> slots = {{false, &alice, 3, &k_alice}, {false, &empty, 1, &none}};
  const std::vector<int> bob_turn1 = {1, 5, 5, 5, 5, 5, 20};
  // Without keys the shared prefix wins: bob would evict alice's conversation...
  EXPECT_EQ(Scheduler::choose_slot(slots, bob_turn1), 0);
  // ...with keys bob takes the free slot (the prefix is copied over) and alice keeps hers.
  EXPECT_EQ(Scheduler::choose_slot(slots, bob_turn1, k_bob), 1);
  EXPECT_EQ(Scheduler::choose_slot(slots, {1, 5, 5, 5, 5, 5, 10, 11, 12}, k_alice), 0);
  // Alice's slot is hers even when her prompt no longer shares much with it (edited history).
  EXPECT_EQ(Scheduler::choose_slot(slots, {1, 7}, k_alice), 0);
  // Only other conversations' slots free: the least recently used of them is taken.
  slots[1].busy = true;
  EXPECT_EQ(Scheduler::choose_slot(slots, bob_turn1, k_bob), 0);
}

TEST(Scheduler, TellsTheStoryAndStopsAtEos) {
  ScriptedStepModel model(1, 256, 0);
  ByteTokenizer tok;
  Scheduler sched(model, &tok, batch(1));
  std::string streamed;
  GenerateResult r = sched.submit(request("user: hi\nassistant: "))->wait([&](const TokenEvent& ev) {
    streamed += ev.text;
    return true;
  });
  EXPECT_EQ(r.text, kStory);
  EXPECT_EQ(streamed, kStory);  // UTF-8 held back until whole, never split
  EXPECT_EQ(r.finish_reason, "stop");
  EXPECT_EQ(r.metrics.completion_tokens, int(kStory.size()));
  // Alone in every step: billed the whole step time.
  EXPECT_DOUBLE_EQ(r.metrics.mean_batch_size, 1.0);
  EXPECT_GT(r.metrics.billed_time_s, 0);
  EXPECT_LE(r.metrics.billed_time_s, r.metrics.total_time_s);
}

TEST(Scheduler, StopStringsLimitsAndContextEnd) {
  ScriptedStepModel model(1, 40, 0);
  ByteTokenizer tok;
  Scheduler sched(model, &tok, batch(1));
  GenerateRequest r = request("a: ");
  r.stop = {"robot"};
  GenerateResult out = sched.submit(r)->wait();
  EXPECT_EQ(out.text, "Once upon a time, a little ");
  EXPECT_EQ(out.finish_reason, "stop");
  // The context (40 positions) ends the answer with "length".
  out = sched.submit(request("a: ", 1000))->wait();
  EXPECT_EQ(out.finish_reason, "length");
  EXPECT_EQ(out.metrics.prompt_tokens + out.metrics.completion_tokens, 40 + 1);  // the last token needs no position
  out = sched.submit(request("a: ", 5))->wait();
  EXPECT_EQ(out.text, "Once ");
  EXPECT_EQ(out.finish_reason, "length");
  EXPECT_THROW(sched.submit(request(std::string(50, 'x'))), ContextOverflow);
  GenerateRequest bad = request("a");
  bad.prompt_ids.push_back(9999);
  EXPECT_THROW(sched.submit(bad), std::invalid_argument);
}

TEST(Scheduler, ConcurrentRequestsShareForwardSteps) {
  ScriptedStepModel model(4, 256, 2);
  ByteTokenizer tok;
  Scheduler sched(model, &tok, batch(4));
  std::vector<std::shared_ptr<Generation>> gens;
  for (int i = 0; i < 4; ++i) gens.push_back(sched.submit(request("user " + std::to_string(i) + ": go\nassistant: ")));
  for (auto& g : gens) {
    GenerateResult r = g->wait();
    EXPECT_EQ(r.text, kStory);
    EXPECT_GT(r.metrics.mean_batch_size, 3.0);
    // Billed a quarter of each shared step: well under its wall time.
    EXPECT_LT(r.metrics.billed_decode_time_s, 0.5 * r.metrics.total_time_s);
    EXPECT_GT(r.metrics.instance_decode_tokens_per_s, 3.0 * r.metrics.decode_tokens_per_s);
  }
  const SchedulerStats st = sched.stats();
  int64_t steps_with_four = st.steps_by_batch_size[4];
  EXPECT_GT(steps_with_four, st.steps * 8 / 10) << steps_with_four << " of " << st.steps;
  EXPECT_EQ(st.generated_tokens, 4 * int64_t(kStory.size()));
}

TEST(Scheduler, ChunkedPrefillKeepsDecodingStreamsGoing) {
  ScriptedStepModel model(2, 512, 1);
  ByteTokenizer tok;
  BatchOptions b = batch(2);
  b.batch_tokens = 9;  // one decode row + 8 prompt rows per step
  Scheduler sched(model, &tok, b);
  auto running = sched.submit(request("a: "));
  while (model.steps().size() < 3) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  auto newcomer = sched.submit(request(std::string(200, 'z') + ": ", 3));
  GenerateResult late = newcomer->wait();
  EXPECT_EQ(late.text, "Onc");
  EXPECT_EQ(running->wait().text, kStory);
  // Every step that carried part of the long prompt also carried the running stream's token.
  int prefill_steps = 0;
  for (const auto& step : model.steps()) {
    int rows = 0;
    bool has_decode = false, has_long = false;
    for (const StepSpan& s : step) {
      rows += int(s.tokens.size());
      has_long |= s.tokens.size() > 1 && s.start_pos > 0;
      has_decode |= s.tokens.size() == 1;
    }
    EXPECT_LE(rows, 9);
    if (has_long) {
      ++prefill_steps;
      EXPECT_TRUE(has_decode);
    }
  }
  EXPECT_GE(prefill_steps, 200 / 8);
}

// A step budget the decode rows alone exceed (8B on a loaded machine): the prompt still
// advances by a floor of rows per step instead of one row per step.
TEST(Scheduler, ChunkedPrefillProgressesWhenDecodeAloneExceedsTheBudget) {
  ScriptedStepModel model(2, 512, 4);  // every step takes 4 ms
  ByteTokenizer tok;
  BatchOptions b = batch(2);
  b.step_budget_ms = 1;
  Scheduler sched(model, &tok, b);
  auto running = sched.submit(request("a: "));
  while (model.steps().size() < 3) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const size_t steps_before = model.steps().size();
  auto newcomer = sched.submit(request(std::string(200, 'z') + ": ", 3));
  EXPECT_EQ(newcomer->wait().text, "Onc");
  const size_t steps = model.steps().size() - steps_before;
  running->cancel();
  // 203 prompt tokens at >= 8 rows a step: 26 steps, then 2 more for the 3 tokens (one row a
  // step would take over 200).
  EXPECT_LE(steps, 26u + 2u + 1u);
}

TEST(Scheduler, QueueIsBoundedAndFifo) {
  ScriptedStepModel model(1, 256, 2);
  ByteTokenizer tok;
  Scheduler sched(model, &tok, batch(1, 1));
  auto a = sched.submit(request("a: "));
  while (sched.stats().busy_slots == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  auto b = sched.submit(request("b: ", 4));  // waits (queue 1/1)
  EXPECT_THROW(sched.submit(request("c: ")), QueueFull);
  EXPECT_EQ(sched.stats().queued, 1);
  GenerateResult ra = a->wait();
  GenerateResult rb = b->wait();
  EXPECT_EQ(ra.text, kStory);
  EXPECT_EQ(rb.text, "Once");
  EXPECT_GT(rb.metrics.queue_time_s, 0.5 * ra.metrics.total_time_s);  // b waited for a
  EXPECT_NO_THROW(sched.submit(request("c: ", 2))->wait());
}

TEST(Scheduler, CancelFreesTheSlotWithinAStep) {
  ScriptedStepModel model(1, 256, 5);
  ByteTokenizer tok;
  Scheduler sched(model, &tok, batch(1, 4));
  auto a = sched.submit(request("a: "));
  auto b = sched.submit(request("b: ", 3));
  int seen = 0;
  GenerateResult ra = a->wait([&](const TokenEvent&) { return ++seen < 5; });
  EXPECT_EQ(ra.finish_reason, "cancelled");
  EXPECT_LE(ra.ids.size(), 8u);
  EXPECT_EQ(b->wait().text, "Onc");
  // keep_going turning false cancels a queued request too.
  auto c = sched.submit(request("c: "));
  auto d = sched.submit(request("d: "));
  std::atomic<bool> wanted{true};
  std::thread t([&] { EXPECT_EQ(d->wait({}, [&] { return wanted.load(); }).finish_reason, "cancelled"); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  wanted = false;
  t.join();
  c->cancel();
  EXPECT_EQ(c->wait().finish_reason, "cancelled");
  EXPECT_EQ(sched.stats().busy_slots, 0);
}

TEST(Scheduler, ShutdownCancelsEverythingAndRefusesNewWork) {
  ScriptedStepModel model(1, 256, 5);
  ByteTokenizer tok;
  Scheduler sched(model, &tok, batch(1, 4));
  auto a = sched.submit(request("a: "));
  auto b = sched.submit(request("b: "));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  sched.shutdown();
  EXPECT_EQ(a->wait().finish_reason, "cancelled");
  EXPECT_EQ(b->wait().finish_reason, "cancelled");
  EXPECT_THROW(sched.submit(request("c: ")), SchedulerStopped);
}

TEST(Scheduler, DrainRefusesNewWorkButFinishesRunningAndQueued) {
  ScriptedStepModel model(1, 256, 2);
  ByteTokenizer tok;
  Scheduler sched(model, &tok, batch(1, 4));
  auto a = sched.submit(request("a: "));
  auto b = sched.submit(request("b: ", 4));  // queued behind a
  while (sched.stats().busy_slots == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  sched.drain();
  EXPECT_THROW(sched.submit(request("c: ")), SchedulerStopped);
  GenerateResult ra = a->wait();
  GenerateResult rb = b->wait();
  EXPECT_EQ(ra.text, kStory);  // the whole answer, not cut
  EXPECT_EQ(ra.finish_reason, "stop");
  EXPECT_EQ(rb.text, "Once");
  EXPECT_EQ(rb.finish_reason, "length");
  EXPECT_EQ(sched.stats().busy_slots, 0);
  // shutdown() after a drain still cancels what is left.
  sched.shutdown();
  EXPECT_THROW(sched.submit(request("d: ")), SchedulerStopped);
}

TEST(Scheduler, FollowUpTurnReusesItsSlotAndASharedPrefixIsCopied) {
  ScriptedStepModel model(2, 512, 1);
  ByteTokenizer tok;
  Scheduler sched(model, &tok, batch(2));
  const std::string system = "system: you are a storyteller who tells one story only.\n";
  // Turn 1 of conversation A, then its turn 2: only the new suffix is run.
  GenerateResult a1 = sched.submit(request(system + "user: one\nassistant: "))->wait();
  const std::string a2_text = system + "user: one\nassistant: " + a1.text + "\nuser: more\nassistant: ";
  GenerateResult a2 = sched.submit(request(a2_text))->wait();
  EXPECT_EQ(a2.metrics.prompt_tokens_processed,
            int(prompt_of(a2_text).size() - prompt_of(system + "user: one\nassistant: ").size() - a1.ids.size()));
  // While A's slot is busy, conversation B with the same system prompt lands in the other
  // slot and copies the system prompt's rows from A's instead of running them again.
  auto a3 = sched.submit(request(a2_text + a2.text + "\nuser: again\nassistant: "));
  while (sched.stats().busy_slots == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  GenerateResult b1 = sched.submit(request(system + "user: two\nassistant: "))->wait();
  EXPECT_EQ(b1.text, kStory);
  EXPECT_EQ(b1.metrics.prompt_tokens_processed, int(std::string("two\nassistant: ").size()));
  ASSERT_FALSE(model.copies().empty());
  EXPECT_EQ(model.copies().back().n, int(prompt_of(system + "user: ").size()));
  a3->wait();
}

// Several requests with one prompt (n > 1 samples) or one long system prompt, submitted
// together: the shared rows are computed once, by the first, and copied into the others.
TEST(Scheduler, SimultaneousRequestsComputeASharedPromptOnce) {
  ScriptedStepModel model(4, 512, 1);
  ByteTokenizer tok;
  Scheduler sched(model, &tok, batch(4));
  const std::string system = "system: you are a storyteller who tells one story only, and tells it well.\n";
  std::vector<std::shared_ptr<Generation>> same;
  for (int i = 0; i < 3; ++i) same.push_back(sched.submit(request(system + "user: go\nassistant: ")));
  auto other = sched.submit(request(system + "user: another one\nassistant: "));
  int processed = 0;
  for (auto& g : same) {
    GenerateResult r = g->wait();
    EXPECT_EQ(r.text, kStory);
    processed += r.metrics.prompt_tokens_processed;
  }
  const int prompt = int(prompt_of(system + "user: go\nassistant: ").size());
  EXPECT_EQ(processed, prompt + 2);  // the two copies run only their last prompt token
  GenerateResult o = other->wait();
  EXPECT_EQ(o.text, kStory);
  EXPECT_EQ(o.metrics.prompt_tokens_processed, int(std::string("another one\nassistant: ").size()));
  EXPECT_EQ(model.copies().size(), 3u);
}

}  // namespace
