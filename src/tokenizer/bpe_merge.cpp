// The merge loop shared by every BPE flavour (byte-level, tiktoken, SentencePiece-style).
#include <queue>

#include "tokenizer_internal.h"

namespace cpuchat::tok {

void PairTable::add(int left, int right, float priority, int result) {
  auto [it, inserted] = rules_.try_emplace(key(left, right), MergeRule{priority, result});
  if (!inserted && priority < it->second.priority) it->second = MergeRule{priority, result};
}

namespace {

// A possible merge of symbols[left] and symbols[right] as they were when it was queued.
struct Candidate {
  float priority;
  int left, right;
  int left_id, right_id;
  int result;
};

// std::priority_queue pops the "largest": make that the lowest priority, then leftmost.
struct WorseCandidate {
  bool operator()(const Candidate& a, const Candidate& b) const {
    if (a.priority != b.priority) return a.priority > b.priority;
    return a.left > b.left;
  }
};

}  // namespace

void apply_merges(std::vector<int>& symbols, const PairTable& pairs) {
  const int n = static_cast<int>(symbols.size());
  if (n < 2) return;

  // Symbols form a doubly linked list; a merge keeps the left one and unlinks the right.
  std::vector<int> prev(n), next(n);
  std::vector<bool> alive(n, true);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }

  std::vector<Candidate> storage;
  storage.reserve(n);
  std::priority_queue<Candidate, std::vector<Candidate>, WorseCandidate> queue(WorseCandidate{}, std::move(storage));
  auto consider = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    if (const MergeRule* rule = pairs.find(symbols[left], symbols[right]))
      queue.push({rule->priority, left, right, symbols[left], symbols[right], rule->result});
  };
  for (int i = 0; i + 1 < n; ++i) consider(i, i + 1);

  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    // Stale if either side has since been merged into something else.
    if (!alive[c.left] || !alive[c.right] || next[c.left] != c.right || symbols[c.left] != c.left_id ||
        symbols[c.right] != c.right_id)
      continue;
    symbols[c.left] = c.result;
    alive[c.right] = false;
    next[c.left] = next[c.right];
    if (next[c.left] >= 0) prev[next[c.left]] = c.left;
    consider(prev[c.left], c.left);
    consider(c.left, next[c.left]);
  }

  // Symbol 0 is never the right side of a merge, so the list always starts there.
  int out = 0;
  for (int i = 0; i >= 0; i = next[i]) symbols[out++] = symbols[i];
  symbols.resize(out);
}

}  // namespace cpuchat::tok
