// Slot choice by longest common prefix, the bounded FIFO queue, cancellation, shutdown.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "server/slot_scheduler.h"

using namespace cpuchat::server;

TEST(SlotChoice, LongestPrefixWhenItCoversHalfThePrompt) {
  std::vector<int> conv_a = {1, 10, 11, 12, 13, 14, 15};
  std::vector<int> conv_b = {1, 20, 21, 22};
  std::vector<int> empty;
  std::vector<SlotScheduler::SlotView> slots = {{false, &conv_b, 5}, {false, &conv_a, 3}, {false, &empty, 0}};
  // A's next turn: extends its cached tokens.
  EXPECT_EQ(SlotScheduler::choose_slot(slots, {1, 10, 11, 12, 13, 14, 15, 16, 17}), 1);
  EXPECT_EQ(SlotScheduler::choose_slot(slots, {1, 20, 21, 22, 23}), 0);
  // A new conversation (only BOS shared): the least recently used (empty) slot, not A's or B's.
  EXPECT_EQ(SlotScheduler::choose_slot(slots, {1, 30, 31, 32, 33}), 2);
  // Busy slots are never chosen.
  slots[1].busy = true;
  EXPECT_EQ(SlotScheduler::choose_slot(slots, {1, 10, 11, 12, 13, 14, 15, 16}), 2);
  slots[0].busy = slots[2].busy = true;
  EXPECT_EQ(SlotScheduler::choose_slot(slots, {1}), -1);
}

TEST(SlotScheduler, QueueBoundAndFifo) {
  SlotScheduler s(/*slots=*/1, /*max_queue=*/1);
  auto a = s.try_admit();
  ASSERT_TRUE(a);
  auto lease = s.acquire(std::move(*a), {1, 2}, {});
  ASSERT_TRUE(lease);
  EXPECT_EQ(s.active(), 1);
  auto b = s.try_admit();  // waits (queue 1/1)
  ASSERT_TRUE(b);
  EXPECT_FALSE(s.try_admit());  // queue full -> 429
  EXPECT_EQ(s.waiting(), 1);

  std::atomic<bool> b_running{false};
  std::thread tb([&] {
    auto l = s.acquire(std::move(*b), {1, 2, 3}, {});
    ASSERT_TRUE(l);
    b_running = true;
    EXPECT_EQ(l->slot(), 0);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(b_running);
  lease->set_cached_tokens({1, 2, 5});
  lease.reset();  // frees the slot -> b runs
  tb.join();
  EXPECT_TRUE(b_running);
  EXPECT_EQ(s.active(), 0);
  EXPECT_EQ(s.waiting(), 0);
  EXPECT_TRUE(s.try_admit());
}

TEST(SlotScheduler, ZeroQueueStillServesWhenASlotIsFree) {
  SlotScheduler s(2, 0);
  auto a = s.try_admit();
  auto la = s.acquire(std::move(*a), {1}, {});
  auto b = s.try_admit();
  ASSERT_TRUE(b);
  auto lb = s.acquire(std::move(*b), {2}, {});
  ASSERT_TRUE(lb);
  EXPECT_NE(la->slot(), lb->slot());
  EXPECT_FALSE(s.try_admit());
}

TEST(SlotScheduler, WaiterGivesUpAndLeavesTheQueue) {
  SlotScheduler s(1, 4);
  auto a = s.try_admit();
  auto la = s.acquire(std::move(*a), {1}, {});
  auto b = s.try_admit();
  std::atomic<bool> wanted{true};
  std::thread tb([&] { EXPECT_FALSE(s.acquire(std::move(*b), {1}, [&] { return wanted.load(); }, 5)); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(s.waiting(), 1);
  wanted = false;
  tb.join();
  EXPECT_EQ(s.waiting(), 0);
}

TEST(SlotScheduler, ShutdownWakesWaiters) {
  SlotScheduler s(1, 4);
  auto a = s.try_admit();
  auto la = s.acquire(std::move(*a), {1}, {});
  auto b = s.try_admit();
  std::thread tb([&] { EXPECT_FALSE(s.acquire(std::move(*b), {1}, {}, 1000)); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  s.shutdown();
  tb.join();
  EXPECT_FALSE(s.try_admit());
}

TEST(SlotScheduler, RoutesAFollowUpToItsSlot) {
  SlotScheduler s(2, 4);
  std::vector<int> a1 = {1, 10, 11, 12}, b1 = {1, 20, 21, 22};
  int slot_a, slot_b;
  {
    auto la = s.acquire(std::move(*s.try_admit()), a1, {});
    auto lb = s.acquire(std::move(*s.try_admit()), b1, {});
    slot_a = la->slot();
    slot_b = lb->slot();
    la->set_cached_tokens({1, 10, 11, 12, 13});
    lb->set_cached_tokens({1, 20, 21, 22, 23});
  }
  auto l = s.acquire(std::move(*s.try_admit()), {1, 20, 21, 22, 23, 24, 25}, {});
  EXPECT_EQ(l->slot(), slot_b);
  auto l2 = s.acquire(std::move(*s.try_admit()), {1, 10, 11, 12, 13, 14}, {});
  EXPECT_EQ(l2->slot(), slot_a);
}
